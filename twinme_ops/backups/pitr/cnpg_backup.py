"""Base backups in production: a CloudNativePG ``Backup``, taken by the Barman Cloud plugin.

twinme_ops does not copy the production data directory itself: it asks the operator. One
``Backup`` (``postgresql.cnpg.io/v1``) per run, ``method: plugin`` with the Barman Cloud plugin
(``barman-cloud.cloudnative-pg.io``), on the Cluster the :class:`~.archive.WalArchive` names; the
plugin runs ``barman-cloud-backup`` into the ObjectStore's bucket, where the WAL archive already
is (``deploy/postgres/``). The name comes from the run id: a retried step finds the Backup it
created (HTTP 409 on create) and waits for it again instead of starting a second copy.

The wait polls ``status.phase`` until ``completed`` or ``failed`` (CloudNativePG's terminal
phases), or a timeout. The official ``kubernetes`` client is imported on the first call (it costs
~0.5 s), never when the code location loads; the cluster comes from ``kubeconfig``, else
``KUBECONFIG``, else the pod's service account, as for the API Deployment (servers/kube.py).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twinme_ops.backups.pitr.layout import PitrError
from twinme_ops.common.log import Log
from twinme_ops.common.redact import redact
from twinme_ops.servers.kube_connection import KubernetesNotConfiguredError, custom_objects_api

if TYPE_CHECKING:  # the client costs ~0.5 s to import: loaded on the first call, not at load
    from kubernetes import client

GROUP = "postgresql.cnpg.io"
VERSION = "v1"
PLURAL = "backups"
PLUGIN = "barman-cloud.cloudnative-pg.io"
TERMINAL_PHASES = ("completed", "failed")
# exactly the calls below (create, then get while waiting): deploy/dagster/rbac.yaml grants them
# in the Cluster's namespace, and tests/deploy/test_deploy_dagster.py checks both agree
CNPG_BACKUP_RBAC_RULES: list[dict[str, list[str]]] = [
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["create", "get"]},
]
# One API call may not hang a run: (connect, read) seconds
_REQUEST_TIMEOUT_S = (10.0, 30.0)
_DNS_LABEL = re.compile(r"[^a-z0-9-]+")


class CnpgBackupError(PitrError):
    """The Backup failed, timed out, or could not be created; the message names the fix."""

    def __init__(self, message: str, *, backup: str = "", phase: str = "") -> None:
        super().__init__(message)
        self.backup = backup
        self.phase = phase


@dataclass
class CnpgBackup:
    """A Backup that reached ``completed``: what its status says."""

    name: str
    namespace: str
    cluster: str
    phase: str
    backup_id: str
    begin_lsn: str
    end_lsn: str
    started_at: str
    stopped_at: str
    seconds: float | None  # stoppedAt - startedAt, when both are set
    created: bool  # False when a retry found the Backup an earlier attempt created

    def metadata(self) -> dict[str, Any]:
        return {
            "backup": f"{self.namespace}/{self.name}",
            "cluster": self.cluster,
            "phase": self.phase,
            "backup_id": self.backup_id,
            "begin_lsn": self.begin_lsn,
            "end_lsn": self.end_lsn,
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "seconds": self.seconds,
        }


def backup_name(cluster: str, run_id: str) -> str:
    """The Backup's name for one run: the same on every retry of that run (a DNS label)."""
    name = _DNS_LABEL.sub("-", f"{cluster}-base-{run_id}".lower()).strip("-")
    return name[:63].rstrip("-")


def backup_body(name: str, namespace: str, cluster: str, run_id: str) -> dict[str, Any]:
    """The ``Backup`` twinme_ops creates (checked against the CRD, strictly, by the tests)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Backup",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/part-of": "twinme",
                "app.kubernetes.io/managed-by": "twinme-ops",
            },
            "annotations": {"twinme.ai/dagster-run": run_id},
        },
        "spec": {
            "cluster": {"name": cluster},
            "method": "plugin",
            "pluginConfiguration": {"name": PLUGIN},
            # read from a replica when there is one: the primary serves the API undisturbed
            "target": "prefer-standby",
        },
    }


def _load_client(kubeconfig: str, target: str) -> tuple[client.CustomObjectsApi, str]:
    """A ``CustomObjectsApi`` on its own ``ApiClient``, and where its configuration came from."""
    try:
        return custom_objects_api(
            kubeconfig,
            target=target,
            in_cluster_fix="the twinme-ops-runs service account (deploy/dagster/rbac.yaml)",
        )
    except KubernetesNotConfiguredError as exc:
        raise CnpgBackupError(str(exc)) from None


def _api_failure(verb: str, target: str, exc: BaseException) -> CnpgBackupError:
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        fix = {
            401: "the credentials were refused: renew the token or kubeconfig",
            403: (
                "the identity may not do this: apply deploy/dagster/rbac.yaml (create and get "
                "on backups.postgresql.cnpg.io in the Cluster's namespace)"
            ),
            404: (
                "the Backup kind or the namespace is unknown: is CloudNativePG installed "
                "(kubectl get crd backups.postgresql.cnpg.io) and TWINME_WAL_ARCHIVE's namespace "
                "right?"
            ),
            422: "the API server rejected the Backup as invalid: check the CloudNativePG version",
        }.get(status, "check the API server and retry")
        return CnpgBackupError(f"{verb} {target} failed: HTTP {status}. Fix: {fix}")
    return CnpgBackupError(
        f"{verb} {target} failed: {type(exc).__name__}: {redact(exc)[:200]}. Fix: check the "
        "network path to the API server and retry"
    )


def _status(obj: dict[str, Any]) -> dict[str, Any]:
    status = obj.get("status")
    return status if isinstance(status, dict) else {}


def _seconds(started: str, stopped: str) -> float | None:
    from datetime import datetime

    try:
        begin = datetime.fromisoformat(started.replace("Z", "+00:00"))
        end = datetime.fromisoformat(stopped.replace("Z", "+00:00"))
    except ValueError:
        return None
    return round((end - begin).total_seconds(), 3)


def take_cnpg_backup(
    *,
    cluster: str,
    namespace: str,
    run_id: str,
    log: Log,
    kubeconfig: str = "",
    timeout_s: float = 4 * 3600,
    poll_interval_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
) -> CnpgBackup:
    """Create this run's Backup of ``cluster`` (or find it, on a retry) and wait for its end."""
    from kubernetes.client.exceptions import ApiException

    name = backup_name(cluster, run_id)
    target = f"Backup {namespace}/{name}"
    api, source = _load_client(kubeconfig, target)
    created = True
    try:
        api.create_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            backup_body(name, namespace, cluster, run_id),
            _request_timeout=_REQUEST_TIMEOUT_S,
        )
        log.info(f"created {target} of Cluster {cluster} (Barman Cloud plugin) via {source}")
    except ApiException as exc:
        if exc.status != 409:
            raise _api_failure("creating", target, exc) from None
        created = False
        log.info(f"{target} already exists (a retry of this run): waiting for it")
    except Exception as exc:
        raise _api_failure("creating", target, exc) from None

    deadline = clock() + timeout_s
    last_phase = None
    while True:
        try:
            obj: Any = api.get_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, _request_timeout=_REQUEST_TIMEOUT_S
            )
        except Exception as exc:
            raise _api_failure("reading", target, exc) from None
        if not created and (obj.get("spec") or {}).get("cluster", {}).get("name") != cluster:
            raise CnpgBackupError(
                f"{target} exists but backs up another Cluster. Fix: delete it, or re-execute "
                "the run (a new run id names a new Backup)",
                backup=name,
            )
        status = _status(obj)
        phase = str(status.get("phase") or "")
        if phase != last_phase:
            log.info(f"{target}: phase {phase or '(not started yet)'}")
            last_phase = phase
        if phase == "completed":
            started = str(status.get("startedAt") or "")
            stopped = str(status.get("stoppedAt") or "")
            return CnpgBackup(
                name=name,
                namespace=namespace,
                cluster=cluster,
                phase=phase,
                backup_id=str(status.get("backupId") or ""),
                begin_lsn=str(status.get("beginLSN") or ""),
                end_lsn=str(status.get("endLSN") or ""),
                started_at=started,
                stopped_at=stopped,
                seconds=_seconds(started, stopped),
                created=created,
            )
        if phase == "failed":
            error = redact(str(status.get("error") or "no error given"))[:1000]
            raise CnpgBackupError(
                f"{target} failed: {error}. Fix: read the plugin's log (kubectl -n {namespace} "
                f"logs <the instance pod> -c plugin-barman-cloud) and the ObjectStore's "
                "credentials and bucket; the WAL archive still holds every segment since the "
                "previous base backup. Re-execute the run to take a new Backup",
                backup=name,
                phase=phase,
            )
        if clock() >= deadline:
            raise CnpgBackupError(
                f"{target} did not finish within {timeout_s:.0f} s (phase "
                f"{phase or 'none: the operator has not picked it up'}). Fix: check the "
                f"operator and the plugin (kubectl -n {namespace} describe backup {name}); the "
                "Backup is left in place and may still complete",
                backup=name,
                phase=phase,
            )
        time.sleep(poll_interval_s)
