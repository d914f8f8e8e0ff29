"""postgres_base_backup with the cloudnative-pg engine: a ``Backup`` through kmock's emulator.

The asset creates a ``postgresql.cnpg.io/v1`` Backup with the official client; the fixture of
``tests/support/cnpg_operator.py`` plays CloudNativePG and the Barman Cloud plugin: it runs a real
``barman-cloud-backup`` of an embedded PostgreSQL 18 into a moto S3 bucket and writes the status
the operator writes. The Backup the asset creates (and the status the operator writes) are checked
against CloudNativePG's CRD, strictly.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from tests.support.cnpg_operator import (
    CLUSTER,
    FAIL_ERROR,
    NAMESPACE,
    BackupOperator,
    barman_available,
    custom_api,
)
from tests.support.crd_schema import crd_schemas, strict_schema, validation_errors
from tests.support.k8s_emulator import EmulatorHandle
from twinme_ops.alerting.alert import Where
from twinme_ops.backups.pitr.archive import WalArchive
from twinme_ops.backups.pitr.cnpg_backup import (
    GROUP,
    PLUGIN,
    PLURAL,
    VERSION,
    backup_body,
    backup_name,
    take_cnpg_backup,
)
from twinme_ops.backups.pitr.layout import parse_lsn
from twinme_ops.defs.alerts.steps import step_failure
from twinme_ops.defs.backups.base_backup import postgres_base_backup
from twinme_ops.defs.backups.jobs import base_backup_job
from twinme_ops.scratch.postgres import PostgresServer
from twinme_ops.servers.postgres import PostgresResource

pytest_plugins = ["tests.support.cnpg_operator"]

_BESIDE = Path(__file__).resolve().parents[3] / "shared" / "schemas" / "cnpg"
CRD_DIR = Path(os.environ.get("TWINME_CNPG_CRDS", str(_BESIDE)))
Start = Callable[..., BackupOperator]


@cache
def backup_schema() -> dict[str, Any]:
    assert CRD_DIR.is_dir(), f"no CloudNativePG CRDs in {CRD_DIR}: set TWINME_CNPG_CRDS"
    return strict_schema(crd_schemas(CRD_DIR)[(f"{GROUP}/{VERSION}", "Backup")])


@pytest.fixture(scope="module")
def source(server_tmp_root: Path) -> Iterator[PostgresServer]:
    """The database the operator backs up (wal_level replica: barman-cloud-backup needs it)."""
    base = Path(tempfile.mkdtemp(prefix="cnpg-source-", dir=server_tmp_root))
    base.chmod(0o755)
    server = PostgresServer.start(base / "data")
    try:
        with server.connect() as conn:
            conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
            conn.execute(
                "INSERT INTO notes (body) SELECT md5(g::text) FROM generate_series(1, 20000) g"
            )
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def _materialize(
    kubeconfig: Path, run_config: dict[str, Any] | None = None
) -> tuple[dg.ExecuteInProcessResult, list[str]]:
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [postgres_base_backup],
        resources={
            "postgres": PostgresResource(url="postgresql://unused@127.0.0.1:1/none"),
            "wal_archive": WalArchive(
                engine="cloudnative-pg",
                cluster=CLUSTER,
                namespace=NAMESPACE,
                kubeconfig=str(kubeconfig),
            ),
        },
        run_config={
            "ops": {
                "postgres_base_backup": {"config": {"poll_interval_s": 0.1, **(run_config or {})}}
            }
        },
        instance=instance,
        raise_on_error=False,
    )
    return result, [entry.user_message for entry in instance.all_logs(result.run_id)]


def _failure(result: dg.ExecuteInProcessResult) -> str:
    [event] = [e for e in result.all_events if e.is_step_failure]
    data = event.step_failure_data
    assert data is not None
    return (data.user_failure_data.description if data.user_failure_data else "") or str(data.error)


def _metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    [event] = result.get_asset_materialization_events()
    meta = event.materialization.metadata
    return {key: getattr(value, "value", value) for key, value in meta.items()}


def _stored(kubeconfig: Path, name: str) -> dict[str, Any]:
    return custom_api(kubeconfig).get_namespaced_custom_object(  # type: ignore[return-value]
        GROUP, VERSION, NAMESPACE, PLURAL, name
    )


def test_the_backup_twinme_ops_creates_is_valid_for_the_crd() -> None:
    name = backup_name(CLUSTER, "0b4e2f7c-5d6a-4c1b-9e8f-123456789abc")
    assert name == "twinme-db-base-0b4e2f7c-5d6a-4c1b-9e8f-123456789abc"
    assert backup_name(CLUSTER, "0b4e2f7c-5d6a-4c1b-9e8f-123456789abc") == name  # deterministic
    body = backup_body(name, NAMESPACE, CLUSTER, "0b4e2f7c-5d6a-4c1b-9e8f-123456789abc")
    assert validation_errors(body, backup_schema()) == []
    assert body["spec"] == {
        "cluster": {"name": CLUSTER},
        "method": "plugin",
        "pluginConfiguration": {"name": PLUGIN},
        "target": "prefer-standby",
    }
    # the strict schema does refuse a misspelt field (the API server would silently prune it)
    wrong = {**body, "spec": {**body["spec"], "pluginConfig": {"name": PLUGIN}}}
    assert validation_errors(wrong, backup_schema())


@pytest.mark.skipif(
    not barman_available(), reason="barman-cloud-backup is not installed (.ci/deps)"
)
def test_completed_backup_records_the_operator_status(
    k8s_emulator: tuple[Path, EmulatorHandle],
    backup_operator_factory: Start,
    source: PostgresServer,
    s3_server: str,
    s3_bucket: str,
) -> None:
    kubeconfig, _ = k8s_emulator
    operator = backup_operator_factory(
        "barman", server=source, destination=f"s3://{s3_bucket}/twinme-db", endpoint=s3_server
    )
    result, logs = _materialize(kubeconfig, {"timeout_s": 120})
    assert not operator.errors, operator.errors
    assert result.success, _failure(result)
    meta = _metadata(result)
    name = backup_name(CLUSTER, result.run_id)
    assert operator.seen == [name]
    assert meta["backup"] == f"{NAMESPACE}/{name}" and meta["phase"] == "completed"
    assert meta["engine"] == "cloudnative-pg" and meta["kind"] == "full"
    assert meta["backup_id"] and meta["started_at"] and meta["stopped_at"]
    assert parse_lsn(meta["end_lsn"]) >= parse_lsn(meta["begin_lsn"]) > 0
    assert meta["duration_s"] >= 0
    stored = _stored(kubeconfig, name)
    assert stored["status"]["backupId"] == meta["backup_id"]
    # what twinme_ops created, and what the operator wrote, both fit the CRD strictly
    assert validation_errors(stored, backup_schema()) == []
    assert any("phase completed" in line for line in logs), logs
    assert "kmock-dummy-token" not in " ".join(logs) + str(meta)


def test_a_retried_step_waits_for_the_backup_it_created(
    k8s_emulator: tuple[Path, EmulatorHandle], backup_operator_factory: Start
) -> None:
    """Same run id, same name: the second attempt finds the Backup (HTTP 409) and no second
    backup is taken."""
    kubeconfig, _ = k8s_emulator
    api = custom_api(kubeconfig)
    run_id = "5f0c9a55-0000-4000-8000-000000000001"
    name = backup_name(CLUSTER, run_id)
    api.create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, backup_body(name, NAMESPACE, CLUSTER, run_id)
    )
    api.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        NAMESPACE,
        PLURAL,
        name,
        {"status": {"phase": "completed", "backupId": "20261205T010000", "beginLSN": "0/3000028",
                    "endLSN": "0/3000120", "startedAt": "2026-12-05T00:00:00Z",
                    "stoppedAt": "2026-12-05T00:01:30Z"}},
    )  # fmt: skip
    operator = backup_operator_factory("fail")

    class Lines(list[str]):
        def debug(self, msg: str) -> None:
            self.append(msg)

        info = warning = debug

    log = Lines()
    backup = take_cnpg_backup(
        cluster=CLUSTER,
        namespace=NAMESPACE,
        run_id=run_id,
        log=log,
        kubeconfig=str(kubeconfig),
        poll_interval_s=0.05,
    )
    assert not backup.created and backup.backup_id == "20261205T010000"
    assert backup.seconds == 90.0 and operator.seen == []
    assert any("already exists" in line for line in log)


def test_a_failed_backup_fails_the_step_with_the_error_and_a_fix(
    k8s_emulator: tuple[Path, EmulatorHandle], backup_operator_factory: Start
) -> None:
    kubeconfig, _ = k8s_emulator
    operator = backup_operator_factory("fail")
    result, _ = _materialize(kubeconfig, {"timeout_s": 30})
    assert not result.success
    message = _failure(result)
    name = backup_name(CLUSTER, result.run_id)
    assert operator.seen == [name]
    assert f"Backup {NAMESPACE}/{name} failed" in message
    assert "Bucket twinme-db-backups does not exist" in message  # status.error, surfaced
    assert "Fix:" in message and "WAL archive still holds" in message
    assert _stored(kubeconfig, name)["status"]["error"] == FAIL_ERROR
    # the Slack alert (base_backup_job's failure hook) says what the failure means
    alert = step_failure(Where("base_backup_job", result.run_id, "postgres_base_backup"), message)
    assert "PostgreSQL base backup" in alert.step_label
    assert "WAL archive still holds every segment" in alert.advice
    assert {hook.name for hook in base_backup_job.hooks or ()} == {"slack_on_backup_failure"}


def test_a_backup_that_never_finishes_times_out(
    k8s_emulator: tuple[Path, EmulatorHandle], backup_operator_factory: Start
) -> None:
    kubeconfig, _ = k8s_emulator
    operator = backup_operator_factory("stuck")
    result, _ = _materialize(kubeconfig, {"timeout_s": 1.5})
    assert not result.success
    message = _failure(result)
    name = backup_name(CLUSTER, result.run_id)
    assert operator.seen == [name]
    assert "did not finish within 2 s (phase started)" in message
    assert "Fix:" in message and f"describe backup {name}" in message
