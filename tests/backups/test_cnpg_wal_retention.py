"""wal_archive_retention with the cloudnative-pg engine: the ObjectStore read through kmock.

In production the Barman Cloud plugin deletes old base backups and WAL itself, after each backup,
by the ObjectStore's ``retentionPolicy``. The asset reads the ObjectStore that
``deploy/postgres/20-objectstore.yaml`` declares (checked against the plugin's CRD, strictly, with
the status the plugin writes) from kmock's emulator with the official client, and fails when the
policy keeps less than the recovery window, or nothing at all.
"""

from __future__ import annotations

import copy
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import kmock
import yaml

from tests.support.cnpg_operator import CLUSTER, NAMESPACE, custom_api
from tests.support.crd_schema import crd_schemas, strict_schema, validation_errors
from tests.support.k8s_emulator import EmulatorHandle
from twinme_ops.backups.pitr.archive import WalArchive
from twinme_ops.backups.pitr.cnpg_retention import GROUP, PLURAL, VERSION
from twinme_ops.defs.backups.wal_retention import wal_archive_retention

REPO = Path(__file__).resolve().parents[2]
OBJECT_STORE = REPO / "deploy" / "postgres" / "20-objectstore.yaml"
_BESIDE = REPO.parent / "shared" / "schemas" / "cnpg"
CRD_DIR = Path(os.environ.get("TWINME_CNPG_CRDS", str(_BESIDE)))
OBJECTSTORES = kmock.resource(f"{GROUP}/{VERSION}/{PLURAL}")


def _manifest() -> dict[str, Any]:
    return yaml.safe_load(OBJECT_STORE.read_text())


def _with_status(first: datetime) -> dict[str, Any]:
    """The deployed ObjectStore, as the plugin leaves it after a backup."""
    doc = copy.deepcopy(_manifest())
    doc["status"] = {
        "serverRecoveryWindow": {
            CLUSTER: {
                "firstRecoverabilityPoint": first.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "lastSuccessfulBackupTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        }
    }
    return doc


def _serve(k8s_emulator: tuple[Path, EmulatorHandle], doc: dict[str, Any] | None) -> Path:
    kubeconfig, handle = k8s_emulator

    def declare(km: Any) -> None:
        km.resources[OBJECTSTORES] = kmock.ResourceInfo(
            kind="ObjectStore",
            singular="objectstore",
            namespaced=True,
            verbs={"create", "get", "list", "patch"},
            subresources={"status"},
        )

    handle.run_in_loop(declare)
    if doc is not None:
        custom_api(kubeconfig).create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, doc
        )
    return kubeconfig


def _run(kubeconfig: Path, **archive: Any) -> tuple[dg.ExecuteInProcessResult, dict[str, Any]]:
    result = dg.materialize(
        [wal_archive_retention],
        resources={
            "wal_archive": WalArchive(
                engine="cloudnative-pg", kubeconfig=str(kubeconfig), **archive
            )
        },
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    if result.success:
        [event] = result.get_asset_materialization_events()
        meta = event.materialization.metadata
    else:
        [failure] = [e for e in result.all_events if e.is_step_failure]
        data = failure.step_failure_data
        assert data is not None and data.user_failure_data is not None
        meta = {"error": data.user_failure_data.description, **data.user_failure_data.metadata}
    return result, {k: getattr(v, "value", v) for k, v in meta.items()}


def test_the_deployed_object_store_is_what_the_resource_reads() -> None:
    doc = _manifest()
    defaults = WalArchive()
    assert doc["metadata"]["name"] == defaults.object_store
    assert doc["metadata"]["namespace"] == defaults.namespace
    # barman's "30d": exactly the default recovery window
    assert doc["spec"]["retentionPolicy"] == f"{defaults.recovery_window_days}d"
    assert CRD_DIR.is_dir(), f"no CloudNativePG CRDs in {CRD_DIR}: set TWINME_CNPG_CRDS"
    schema = strict_schema(crd_schemas(CRD_DIR)[(f"{GROUP}/{VERSION}", "ObjectStore")])
    first = datetime.now(UTC) - timedelta(days=31)
    assert validation_errors(_with_status(first), schema) == []


def test_production_retention_is_the_plugins_and_matches_the_window(
    k8s_emulator: tuple[Path, EmulatorHandle],
) -> None:
    first = datetime.now(UTC) - timedelta(days=31, hours=2)
    kubeconfig = _serve(k8s_emulator, _with_status(first))
    result, meta = _run(kubeconfig)
    assert result.success, meta
    assert meta["engine"] == "cloudnative-pg" and meta["verdict"] == "matches"
    assert meta["retention_policy"] == "30d" and meta["recovery_window_days"] == 30
    assert "Barman Cloud plugin" in meta["applied_by"]
    assert meta["oldest_restorable_point"] == first.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert meta["window_covered"] is True
    assert "no point-in-time drill runs against the ObjectStore" in meta["drill_protection"]
    # a longer window than production keeps is a broken promise: the step fails, with the fix
    result, meta = _run(kubeconfig, recovery_window_days=45)
    assert not result.success
    assert "keeps 30 days, less than the 45-day recovery window" in meta["error"]
    assert 'Fix: set spec.retentionPolicy: "45d"' in meta["error"]
    assert meta["verdict"] == "shorter"


def test_an_object_store_without_retention_fails_with_the_fix(
    k8s_emulator: tuple[Path, EmulatorHandle],
) -> None:
    doc = _manifest()
    del doc["spec"]["retentionPolicy"]
    kubeconfig = _serve(k8s_emulator, doc)
    result, meta = _run(kubeconfig)
    assert not result.success
    assert "no retentionPolicy" in meta["error"] and "grows without end" in meta["error"]
    assert meta["oldest_restorable_point"] == "" and meta["window_covered"] is False


def test_a_missing_object_store_names_the_fix(k8s_emulator: tuple[Path, EmulatorHandle]) -> None:
    kubeconfig = _serve(k8s_emulator, None)
    result, meta = _run(kubeconfig)
    assert not result.success
    assert "ObjectStore twinme-postgres/twinme-db-backups failed: HTTP 404" in meta["error"]
    assert "Fix:" in meta["error"] and "kmock-dummy-token" not in meta["error"]
