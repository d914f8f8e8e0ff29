"""Restore drills: a set counts only once it restores; a bad set fails the run and says why."""

from __future__ import annotations

import base64
import glob
import json
import os
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from tests.support.backup_helpers import (
    PARTITION,
    read_manifest,
    run_backup,
    run_drill_job,
    run_text,
    store_for,
)
from tests.support.list_log import ListLog
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.backups.drill import backup_freshness, same_database
from twinme_ops.backups.manifest import DRILL
from twinme_ops.definitions import build_definitions
from twinme_ops.defs.resources import build_resources


def _check_evaluations(result: dg.ExecuteInProcessResult) -> list:
    return [
        e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ]


@pytest.fixture
def private_tmp(server_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's own temporary directory: other processes' drills (a second test run on the
    same machine) cannot appear among its leftovers."""
    monkeypatch.setattr(tempfile, "tempdir", str(server_tmp))
    return server_tmp


def _drill_leftovers(root: Path) -> set[str]:
    return set(glob.glob(str(root / "twinme-drill-*")))


def test_nightly_job_drills_its_set_and_records_rto_rpo(
    sandbox, backup_env, private_tmp: Path
) -> None:
    before = _drill_leftovers(private_tmp)
    result = run_backup()
    assert result.success
    (evaluation,) = _check_evaluations(result)
    assert evaluation.check_name == "restore_drill" and evaluation.passed
    meta = evaluation.metadata
    assert meta["rto_total_s"].value > 0 and meta["rto_postgres_s"].value > 0
    assert "rpo_hours" in meta and "all components restored" in meta["reason"].value
    store = store_for(backup_env["TWINME_BACKUP_URL"])
    record = json.loads(store.get_bytes(PARTITION, DRILL))
    assert record["passed"] and set(record["rto_s"]) == {"postgres", "redis", "files"}
    assert record["restored"]["postgres"]["knn_rows"] == 5
    assert _drill_leftovers(private_tmp) == before  # scratch servers and directories removed


def test_flipped_byte_fails_the_drill_and_the_run_naming_the_artifact(
    sandbox, backup_env, slack_receiver: SlackReceiver, private_tmp: Path
) -> None:
    assert run_backup().success
    store = store_for(backup_env["TWINME_BACKUP_URL"])
    path = Path(backup_env["TWINME_BACKUP_URL"].removeprefix("file://")) / PARTITION
    name = read_manifest(store)["artifacts"]["redis"]["name"]
    artifact = path / name
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))
    before = _drill_leftovers(private_tmp)
    instance = dg.DagsterInstance.ephemeral()
    result = run_drill_job(PARTITION, instance)
    assert not result.success
    (evaluation,) = _check_evaluations(result)
    assert not evaluation.passed
    text = run_text(instance, result)
    assert name in text and "checksum mismatch" in text
    record = json.loads(store.get_bytes(PARTITION, DRILL))
    assert not record["passed"] and "redis" in record["failures"]
    assert "postgres" not in record["failures"] and "files" not in record["failures"]
    assert any("restore drill" in m and "FAILED" in m for m in slack_receiver.messages)
    assert _drill_leftovers(private_tmp) == before


def test_wrong_encryption_key_fails_cleanly(
    sandbox, backup_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWINME_BACKUP_ENCRYPTION_KEY", base64.b64encode(os.urandom(32)).decode())
    assert run_backup().success
    other = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("TWINME_BACKUP_ENCRYPTION_KEY", other)
    instance = dg.DagsterInstance.ephemeral()
    result = run_drill_job(PARTITION, instance)
    assert not result.success
    text = run_text(instance, result)
    name = read_manifest(store_for(os.environ["TWINME_BACKUP_URL"]))["artifacts"]["postgres"]
    assert "decryption failed" in text and name["name"] in text
    assert other not in text


def test_drill_job_without_config_drills_the_newest_set(sandbox, backup_env) -> None:
    assert run_backup(partition="2026-11-22").success
    assert run_backup(partition="2026-11-23").success
    result = run_drill_job()
    assert result.success
    (evaluation,) = _check_evaluations(result)
    assert evaluation.partition == "2026-11-23" and evaluation.passed


def test_drill_never_targets_the_production_database() -> None:
    assert same_database(
        "postgresql://a@localhost:5432/twinme", "postgresql://b:pw@127.0.0.1/twinme"
    )
    assert not same_database(
        "postgresql://a@127.0.0.1:5433/twinme", "postgresql://a@127.0.0.1/twinme"
    )
    assert not same_database(
        "postgresql://a@127.0.0.1/twinme_drill", "postgresql://a@127.0.0.1/twinme"
    )


def test_freshness_sensor_alerts_once_then_clears(
    sandbox, backup_env, slack_receiver: SlackReceiver
) -> None:
    defs = build_definitions()
    sensor = defs.get_sensor_def("backup_freshness_sensor")
    resources = {
        "backup_store": store_for(backup_env["TWINME_BACKUP_URL"]),
        "slack": build_resources()["slack"],
    }
    with dg.instance_for_test() as instance:

        def tick(cursor: str | None) -> tuple[dg.SkipReason, str | None]:
            with dg.build_sensor_context(
                instance=instance, resources=resources, cursor=cursor
            ) as ctx:
                reason = sensor(ctx)
                assert isinstance(reason, dg.SkipReason)
                return reason, ctx.cursor

        first, cursor = tick(None)
        assert "ever passed" in (first.skip_message or "")
        assert len(slack_receiver.messages) == 1 and "stale" in slack_receiver.messages[0]
        _, cursor = tick(cursor)
        assert len(slack_receiver.messages) == 1  # no repeat within 6 h

        today = datetime.now(UTC).strftime("%Y-%m-%d")
        assert run_backup(partition=today).success  # backed up and drilled
        slack_receiver.messages.clear()
        fresh, _ = tick(cursor)
        assert "passed its drill" in (fresh.skip_message or "")
        assert slack_receiver.messages and "fresh again" in slack_receiver.messages[0]


def test_freshness_uses_the_age_of_the_verified_set(sandbox, backup_env) -> None:
    assert run_backup().success
    store = store_for(backup_env["TWINME_BACKUP_URL"])
    created = datetime.fromisoformat(read_manifest(store)["created_at"])
    assert backup_freshness(store, created + timedelta(hours=25), 26).fresh
    stale = backup_freshness(store, created + timedelta(hours=27), 26)
    assert not stale.fresh and PARTITION in stale.message


def test_drill_restores_policies_that_name_production_roles(
    pg_server, redis_server, tmp_path: Path
) -> None:
    """RLS policies name roles (e.g. authenticated_users) that only production has: the drill
    creates them on its scratch server, so the restore of the policies does not fail."""
    from twinme_ops.backups.drill import run_drill
    from twinme_ops.backups.store.base import BackupStore
    from twinme_ops.backups.take import Sources, backup_all
    from twinme_ops.servers.files import FileStorageResource
    from twinme_ops.servers.postgres import PostgresResource
    from twinme_ops.servers.redis import RedisResource

    with pg_server.connect() as conn:
        conn.execute("DROP DATABASE IF EXISTS rls_src")
        conn.execute("CREATE DATABASE rls_src")
    with pg_server.connect("rls_src") as conn:
        conn.execute(
            "DO $$ BEGIN CREATE ROLE drill_app_users NOLOGIN; EXCEPTION WHEN "
            "duplicate_object THEN NULL; END $$"
        )
        conn.execute("CREATE TABLE notes (id int, owner int)")
        conn.execute("INSERT INTO notes SELECT g, g % 3 FROM generate_series(1, 10) g")
        conn.execute("ALTER TABLE notes ENABLE ROW LEVEL SECURITY")
        conn.execute("CREATE POLICY own ON notes FOR ALL TO drill_app_users USING (owner = 1)")
    files = tmp_path / "files"
    files.mkdir()
    (files / "a.txt").write_text("a")
    store = BackupStore(url=f"file://{tmp_path}/store")
    sources = Sources(
        PostgresResource(url=pg_server.url("rls_src")),
        RedisResource(url=redis_server.url(with_password=True)),
        FileStorageResource(path=str(files)),
    )
    manifest = backup_all(
        store, "2026-11-20", sources, key=None, environment="test", run_id="r", log=ListLog()
    )
    assert manifest["artifacts"]["postgres"]["source"]["policy_roles"] == ["drill_app_users"]
    result = run_drill(store, "2026-11-20", key=None, log=ListLog())
    assert result.passed, result.reason


def test_redis_keys_whose_ttl_passed_before_the_snapshot_loaded_do_not_fail_the_drill(
    tmp_path: Path,
) -> None:
    """INFO counts an expired key Redis has not evicted yet; loading the RDB drops it. Fewer
    restored keys are accepted up to the number with a TTL, never more, never fewer still."""
    from twinme_ops.backups.drill import _verify_redis
    from twinme_ops.scratch.redis import RedisServer

    server = RedisServer.start(tmp_path / "src")
    try:
        client = server.client()
        for i in range(9):
            client.set(f"k{i}", "v")
        client.expire("k0", 3600)
        client.save()
        rdb = (tmp_path / "src" / "dump.rdb").read_bytes()
    finally:
        server.stop()

    def verify(keys: int, expires: int) -> None:
        source = {"keys": {"db0": keys}, "expires": {"db0": expires}}
        workdir = tmp_path / f"w{keys}-{expires}"
        workdir.mkdir()
        _verify_redis(iter([rdb]), source, workdir, None, ListLog())

    verify(9, 1)  # exact
    verify(10, 1)  # one key with a TTL expired between INFO and the load
    with pytest.raises(RuntimeError, match="key counts differ"):
        verify(10, 0)  # a key lost that had no TTL
    with pytest.raises(RuntimeError, match="key counts differ"):
        verify(8, 1)  # more keys than the manifest says
