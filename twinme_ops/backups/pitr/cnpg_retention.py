"""Retention in production: the Barman Cloud plugin applies the ObjectStore's ``retentionPolicy``.

With the ``cloudnative-pg`` engine twinme_ops deletes nothing from the WAL archive: the plugin's
sidecar runs ``barman-cloud-backup-delete --retention-policy "RECOVERY WINDOW OF N DAYS"`` after
each backup (``deploy/postgres/20-objectstore.yaml``). What twinme_ops does is check that promise
every day: it reads the ObjectStore (``barmancloud.cnpg.io/v1``) with the official client and
compares ``spec.retentionPolicy`` with the configured recovery window, and reports the plugin's
``status.serverRecoveryWindow[<server>].firstRecoverabilityPoint`` (the oldest restorable point).

barman reads ``Nd`` as N days, ``Nw`` as 7N days and ``Nm`` as 31N days
(``barman/retention_policies.py``). A policy shorter than the window breaks the promise (an
error); a longer one keeps more than promised (a warning: it costs storage); none at all keeps
everything forever (an error: the bucket grows without end).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Literal

from twinme_ops.backups.pitr.cnpg_backup import CnpgBackupError, _load_client
from twinme_ops.common.redact import redact

GROUP = "barmancloud.cnpg.io"
VERSION = "v1"
PLURAL = "objectstores"
# exactly the call below: deploy/dagster/rbac.yaml grants it in the Cluster's namespace, and
# tests/deploy/test_deploy_dagster.py checks both agree
CNPG_RETENTION_RBAC_RULES: list[dict[str, list[str]]] = [
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get"]},
]
OBJECTSTORE_FILE = "deploy/postgres/20-objectstore.yaml"
_POLICY = re.compile(r"^([1-9][0-9]*)([dwm])$")
_DAYS_PER_UNIT = {"d": 1, "w": 7, "m": 31}
_REQUEST_TIMEOUT_S = (10.0, 30.0)
Verdict = Literal["matches", "longer", "shorter", "missing", "invalid"]


def policy_days(policy: str) -> int | None:
    """The days a barman ``retentionPolicy`` keeps (``"30d"`` -> 30, ``"1m"`` -> 31), or None."""
    match = _POLICY.match(policy.strip())
    if not match:
        return None
    return int(match[1]) * _DAYS_PER_UNIT[match[2]]


def judge_policy(policy: str, window_days: int) -> tuple[Verdict, str]:
    """Whether ``policy`` keeps the recovery window, and what to say about it."""
    fix = (
        f'Fix: set spec.retentionPolicy: "{window_days}d" in {OBJECTSTORE_FILE} and apply it, '
        "or set TWINME_WAL_RECOVERY_WINDOW_DAYS to the window production really keeps"
    )
    if not policy:
        return "missing", (
            "the ObjectStore has no retentionPolicy: the plugin deletes no base backup or WAL, "
            f"and the bucket grows without end. {fix}"
        )
    days = policy_days(policy)
    if days is None:
        return "invalid", f"retentionPolicy {policy!r} is not N followed by d, w or m. {fix}"
    if days < window_days:
        return "shorter", (
            f"retentionPolicy {policy!r} keeps {days} days, less than the {window_days}-day "
            f"recovery window: older points in time are deleted. {fix}"
        )
    if days > window_days:
        return "longer", (
            f"retentionPolicy {policy!r} keeps {days} days, more than the {window_days}-day "
            "recovery window (more storage than promised)"
        )
    return "matches", f"retentionPolicy {policy!r} keeps the {window_days}-day recovery window"


@dataclass
class ObjectStoreRetention:
    """What the ObjectStore says about retention, judged against the recovery window."""

    object_store: str
    namespace: str
    server: str
    retention_policy: str
    window_days: int
    verdict: Verdict
    message: str
    first_recoverability_point: str
    last_successful_backup: str

    @property
    def ok(self) -> bool:
        return self.verdict in ("matches", "longer")

    def to_metadata(self) -> dict[str, Any]:
        return asdict(self)


def read_object_store_retention(
    *, object_store: str, namespace: str, server: str, window_days: int, kubeconfig: str = ""
) -> ObjectStoreRetention:
    """Read the ObjectStore and judge its ``retentionPolicy``; raises :class:`CnpgBackupError`
    (a ``PitrError``) when the API cannot be read, naming the fix."""
    from kubernetes.client.exceptions import ApiException

    target = f"ObjectStore {namespace}/{object_store}"
    api, _ = _load_client(kubeconfig, target)
    try:
        obj: Any = api.get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, object_store, _request_timeout=_REQUEST_TIMEOUT_S
        )
    except ApiException as exc:
        status = int(exc.status or 0)
        fix = {
            403: "apply deploy/dagster/rbac.yaml (get on objectstores.barmancloud.cnpg.io in the "
            "Cluster's namespace)",
            404: f"is the Barman Cloud plugin installed and {object_store} applied "
            f"({OBJECTSTORE_FILE})? The wal_archive resource names it (object_store)",
        }.get(status, "check the API server and retry")
        raise CnpgBackupError(f"reading {target} failed: HTTP {status}. Fix: {fix}") from None
    except Exception as exc:
        raise CnpgBackupError(
            f"reading {target} failed: {type(exc).__name__}: {redact(exc)[:200]}. Fix: check "
            "the network path to the API server and retry"
        ) from None
    spec = obj.get("spec") or {}
    policy = str(spec.get("retentionPolicy") or "")
    windows = (obj.get("status") or {}).get("serverRecoveryWindow") or {}
    window = windows.get(server) or {}
    verdict, message = judge_policy(policy, window_days)
    return ObjectStoreRetention(
        object_store=object_store,
        namespace=namespace,
        server=server,
        retention_policy=policy,
        window_days=window_days,
        verdict=verdict,
        message=message,
        first_recoverability_point=str(window.get("firstRecoverabilityPoint") or ""),
        last_successful_backup=str(window.get("lastSuccessfulBackupTime") or ""),
    )
