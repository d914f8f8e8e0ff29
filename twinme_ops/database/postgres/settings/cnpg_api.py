"""Reaching the CloudNativePG ``Cluster`` whose ``spec.postgresql.parameters`` the settings go to.

:class:`ClusterApi` reads the Cluster and merge-patches its parameters with the official
``kubernetes`` client (``CustomObjectsApi``), and turns a failed call into a
:class:`ClusterSettingsError` whose message names the problem and the fix: for HTTP 403 the verb
and resource the code location's ServiceAccount lacks, and where the Role that grants it is
(``deploy/dagster/rbac.yaml``).

The cluster comes from ``kubeconfig``, else ``KUBECONFIG``, else the pod's service account (as
for the API Deployment and the base backups); ``~/.kube/config`` is never a fallback. The client
costs ~0.5 s to import: it is imported on the first call, never when the code location loads.
No Dagster in this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twinme_ops.common.redact import redact
from twinme_ops.database.postgres.settings.live import SettingsError
from twinme_ops.servers.kube_connection import KubernetesNotConfiguredError, custom_objects_api

if TYPE_CHECKING:  # the client costs ~0.5 s to import: loaded on the first call, not at load
    from kubernetes import client

GROUP = "postgresql.cnpg.io"
VERSION = "v1"
PLURAL = "clusters"
RESOURCE = f"{PLURAL}.{GROUP}"
MERGE_PATCH = "application/merge-patch+json"
# exactly the calls below (get, then a merge patch of the parameters): deploy/dagster/rbac.yaml
# grants them on the Cluster in its namespace (Role twinme-ops-postgres-settings), and
# tests/deploy/test_deploy_dagster.py checks that both agree
CNPG_CLUSTER_RBAC_RULES: list[dict[str, list[str]]] = [
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "patch"]},
]
RBAC_ROLE = "twinme-ops-postgres-settings"
# One API call may not hang a run: (connect, read) seconds
_REQUEST_TIMEOUT_S = (10.0, 30.0)


class ClusterSettingsError(SettingsError):
    """The Cluster could not be read or patched, or its rollout did not end; names the fix.

    ``transient`` is true for errors worth retrying while waiting (5xx, 429, the network).
    """

    def __init__(self, message: str, *, status: int | None = None, transient: bool = False):
        super().__init__(message)
        self.status = status
        self.transient = transient


@dataclass(frozen=True)
class ClusterTarget:
    """Which Cluster, and how to reach its API server."""

    cluster: str
    namespace: str
    kubeconfig: str = ""

    def __str__(self) -> str:
        return f"Cluster {self.namespace}/{self.cluster}"


def _load_client(target: ClusterTarget) -> tuple[client.CustomObjectsApi, str]:
    """A ``CustomObjectsApi`` on its own ``ApiClient``, and where its configuration came from."""
    try:
        return custom_objects_api(
            target.kubeconfig,
            target=str(target),
            in_cluster_fix=(
                "the twinme-ops-runs service account (deploy/dagster/rbac.yaml); to tune a "
                "server twinme_ops may ALTER SYSTEM on, set TWINME_POSTGRES_APPLIER=alter-system"
            ),
        )
    except KubernetesNotConfiguredError as exc:
        raise ClusterSettingsError(str(exc)) from None


def _status_message(body: Any) -> str:
    """The API server's ``Status.message`` (an admission webhook's reason), if any."""
    try:
        status = json.loads(body) if body else {}
    except (TypeError, ValueError):
        return ""
    return str(status.get("message") or "") if isinstance(status, dict) else ""


def api_failure(verb: str, target: ClusterTarget, exc: BaseException) -> ClusterSettingsError:
    """What a failed ``get``/``patch`` of the Cluster means, and the fix."""
    from kubernetes.client.exceptions import ApiException

    doing = {"get": "reading", "patch": "patching the parameters of"}[verb]
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        said = redact(_status_message(exc.body))[:500]
        fix = {
            401: "the credentials were refused: renew the token or kubeconfig",
            403: (
                f"the ServiceAccount may not {verb} {RESOURCE} in namespace {target.namespace}: "
                f"grant get and patch on {RESOURCE} (resourceNames: {target.cluster}) there, "
                f"i.e. apply deploy/dagster/rbac.yaml (Role {RBAC_ROLE} and its RoleBinding to "
                "twinme-ops-runs)"
            ),
            404: (
                f"no Cluster {target.cluster} in namespace {target.namespace}, or CloudNativePG "
                f"is not installed: check `kubectl -n {target.namespace} get {RESOURCE}` and "
                "the cluster/namespace of the postgres_settings_applier resource (the WAL "
                "archive's)"
            ),
            422: (
                "CloudNativePG refused the parameters (its admission webhook): correct the "
                "declared settings (setting_overrides) or the declared instance"
            ),
        }.get(status, "check the API server and the operator, then retry")
        detail = f" ({said})" if said else ""
        return ClusterSettingsError(
            f"{doing} {target} failed: HTTP {status}{detail}. Fix: {fix}",
            status=status,
            transient=status == 429 or status >= 500,
        )
    return ClusterSettingsError(
        f"{doing} {target} failed: {type(exc).__name__}: {redact(exc)[:200]}. Fix: check the "
        "network path to the API server and retry",
        transient=True,
    )


class ClusterApi:
    """Read the Cluster, merge-patch its parameters: the only two calls (get, patch)."""

    def __init__(self, target: ClusterTarget) -> None:
        self.target = target
        self._api, self.source = _load_client(target)

    def read(self) -> dict[str, Any]:
        """The Cluster as the API server has it."""
        t = self.target
        try:
            obj: Any = self._api.get_namespaced_custom_object(
                GROUP, VERSION, t.namespace, PLURAL, t.cluster, _request_timeout=_REQUEST_TIMEOUT_S
            )
        except Exception as exc:
            raise api_failure("get", t, exc) from None
        return obj if isinstance(obj, dict) else {}

    def patch_parameters(self, parameters: dict[str, str]) -> None:
        """A JSON merge patch of exactly these keys of ``spec.postgresql.parameters``: every
        other parameter (and the rest of the spec) is left as it is."""
        t = self.target
        body = {"spec": {"postgresql": {"parameters": dict(parameters)}}}
        try:
            self._api.patch_namespaced_custom_object(
                GROUP,
                VERSION,
                t.namespace,
                PLURAL,
                t.cluster,
                body,
                _content_type=MERGE_PATCH,
                _request_timeout=_REQUEST_TIMEOUT_S,
            )
        except Exception as exc:
            raise api_failure("patch", t, exc) from None


def spec_parameters(cluster: dict[str, Any]) -> dict[str, str]:
    """``spec.postgresql.parameters`` of a Cluster ({} when it sets none)."""
    spec = cluster.get("spec") or {}
    postgresql = spec.get("postgresql") or {}
    return {str(k): str(v) for k, v in (postgresql.get("parameters") or {}).items()}


def status_phase(cluster: dict[str, Any]) -> tuple[str, str]:
    """``(status.phase, status.phaseReason)`` ('' when the operator has written none)."""
    status = cluster.get("status")
    status = status if isinstance(status, dict) else {}
    return str(status.get("phase") or ""), str(status.get("phaseReason") or "")


__all__ = [
    "CNPG_CLUSTER_RBAC_RULES",
    "GROUP",
    "PLURAL",
    "RBAC_ROLE",
    "RESOURCE",
    "VERSION",
    "ClusterApi",
    "ClusterSettingsError",
    "ClusterTarget",
    "api_failure",
    "spec_parameters",
    "status_phase",
]
