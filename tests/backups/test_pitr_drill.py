"""The nightly point-in-time drill on real PostgreSQL 18 servers (issue 14).

One archived source per module (--synchronous pg_receivewal, a full base backup, a heartbeat
every 0.2 s, a nightly logical set taken after the base backup); the drill restores onto scratch
servers. A damaged copy of the archive makes the drill, and pitr_drill_job, fail with an alert.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest

from tests.support.backup_helpers import ENV_VARS, store_for
from tests.support.list_log import ListLog
from tests.support.pitr_helpers import ArchivedSource, HeartbeatWriter, archived_source
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.alerting.metric_specs import METRICS
from twinme_ops.backups.pitr.drill_record import read_drill_record
from twinme_ops.backups.pitr.layout import ArchiveLayout, parse_lsn, segment_start, user_ids
from twinme_ops.backups.pitr.receiver import wait_for_flush
from twinme_ops.backups.pitr_drill import random_target, run_pitr_drill
from twinme_ops.backups.store.base import BackupStore
from twinme_ops.backups.take import Sources, backup_all
from twinme_ops.definitions import build_definitions
from twinme_ops.scratch.redis import RedisServer
from twinme_ops.servers.files import FileStorageResource
from twinme_ops.servers.postgres import PostgresResource
from twinme_ops.servers.redis import RedisResource

SET_ID = "2026-12-05"


@pytest.fixture(scope="module")
def archived(server_tmp_root: Path) -> Iterator[tuple[ArchivedSource, HeartbeatWriter]]:
    with archived_source(server_tmp_root) as src:
        with src.source.connect() as conn:
            conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
            conn.execute(
                "INSERT INTO notes (body) SELECT md5(g::text) FROM generate_series(1, 500) g"
            )
        writer = HeartbeatWriter(src.source, interval_s=0.2).start()
        try:
            yield src, writer
            assert writer.error is None, writer.error
        finally:
            writer.stop()


@pytest.fixture(scope="module")
def logical_store(
    archived: tuple[ArchivedSource, HeartbeatWriter], redis_server: RedisServer
) -> BackupStore:
    """A nightly logical set of the source, taken inside the recovery window."""
    src, _ = archived
    files = src.base / "files"
    files.mkdir()
    (files / "a.txt").write_text("a")
    store = store_for(f"file://{src.base}/backups")
    backup_all(
        store,
        SET_ID,
        Sources(
            PostgresResource(url=src.source.url()),
            RedisResource(url=redis_server.url()),
            FileStorageResource(path=str(files)),
        ),
        key=None,
        environment="test",
        run_id="pitr-drill-test",
        log=ListLog(),
    )
    time.sleep(1.0)  # heartbeats after the set
    return store


def test_the_drill_restores_a_random_second_and_the_latest_point_exactly(
    archived: tuple[ArchivedSource, HeartbeatWriter], logical_store: BackupStore
) -> None:
    src, _ = archived
    log = ListLog()
    result = run_pitr_drill(
        src.layout,
        PostgresResource(url=src.source.url()),
        seed=7,
        store=logical_store,
        workdir=src.base,
        log=log,
    )
    assert result.passed, result.failures
    assert result.window_start == src.full.finished.isoformat()
    assert result.window_start and result.window_end and result.target
    start, end = map(datetime.fromisoformat, (result.window_start, result.window_end))
    assert datetime.fromisoformat(result.target) == random_target(start, end, 7)
    target = result.heartbeats["target"]
    assert target["ok"] and target["expected"] >= 1 and target["unexpected"] == 0
    latest = result.heartbeats["latest"]
    assert latest["ok"] and latest["expected"] == latest["present"] > target["expected"]
    assert result.rpo_s is not None and result.rpo_s < 1.0
    for figures in result.restores.values():
        # the engine runs restored servers with archiving off: they never write into the archive
        assert figures["archive_mode"] == "off"
        assert figures["total_s"] > 0 and figures["wal_bytes"] > 0
    assert result.rto_s == result.restores["latest"]["total_s"]
    facts = result.logical_set
    assert facts["set_id"] == SET_ID and facts["missing"] == [] and facts["tables"] >= 2
    assert facts["counts"]["public.notes"] == {"set": 500, "restored": 500}
    # every scratch server and directory is gone
    assert not [p for p in src.base.iterdir() if p.name.startswith("twinme-pitr-drill-")]
    # the archive records what the passing drill restored from: retention keeps it
    record, _ = read_drill_record(src.layout)
    assert record is not None and record.passed_at == result.checked_at
    assert record.chain == result.restores["target"]["chain"] == [src.full.id]
    assert record.latest_chain == result.restores["latest"]["chain"] and record.seed == 7
    print("\nPITR drill figures:", result.to_metadata())


def test_without_a_nearby_set_the_drill_says_so(
    archived: tuple[ArchivedSource, HeartbeatWriter], tmp_path: Path
) -> None:
    src, _ = archived
    empty = store_for(f"file://{tmp_path}/none")
    result = run_pitr_drill(
        src.layout, PostgresResource(url=src.source.url()), seed=3, store=empty, workdir=src.base
    )
    assert result.passed, result.failures
    assert "no nightly logical set" in result.logical_set["note"]


def _damaged_copy(src: ArchivedSource, where: Path) -> ArchiveLayout:
    """A copy of the archive without one completed WAL segment written after the base backup."""
    with src.source.connect() as conn:
        conn.execute("SELECT pg_switch_wal()")
    copy = ArchiveLayout.at(where)
    shutil.copytree(
        src.layout.root, copy.root, ignore=shutil.ignore_patterns("receiver*", "*.partial")
    )
    if copy.run_as:  # the copy is ours: give it back to the tools' user
        uid, gid = user_ids(copy.run_as)
        for path in [copy.root, *copy.root.rglob("*")]:
            os.chown(path, uid, gid)
    segments = copy.segment_files()
    assert len(segments) >= 2, segments
    segments[-1].unlink()  # the newest completed segment: after the base backup
    return copy


def test_a_missing_wal_segment_fails_the_drill_and_alerts(
    archived: tuple[ArchivedSource, HeartbeatWriter],
    server_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    slack_receiver: SlackReceiver,
) -> None:
    src, _ = archived
    damaged = _damaged_copy(src, server_tmp / "damaged")
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    env = {
        "TWINME_HOME": str(server_tmp / "home"),
        "TWINME_BACKUP_URL": f"file://{server_tmp}/backups",
        "SLACK_WEBHOOK_URL": slack_receiver.url,
        "DATABASE_URL": src.source.url(),
        "TWINME_WAL_ARCHIVE": "local",
        "TWINME_WAL_ARCHIVE_ROOT": str(damaged.root),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    job = build_definitions().resolve_job_def("pitr_drill_job")
    result = job.execute_in_process(
        run_config={"ops": {"point_in_time_drill": {"config": {"seed": 11}}}},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    message = failure.step_failure_data.error.message  # type: ignore[union-attr]
    assert "point-in-time drill FAILED" in message and "gap" in message and "Fix:" in message
    assert any(
        "point-in-time drill" in m and "new full base backup" in m for m in slack_receiver.messages
    ), slack_receiver.messages


def test_a_corrupted_wal_segment_fails_the_drill(
    archived: tuple[ArchivedSource, HeartbeatWriter],
) -> None:
    """Last in the module: it damages the module's own archive."""
    src, writer = archived
    with src.source.connect() as conn:
        conn.execute("SELECT pg_switch_wal()")
        wait_for_flush(conn, timeout_s=30)
    time.sleep(1.0)  # heartbeats in the next segment too
    with src.source.connect() as conn:
        conn.execute("SELECT pg_switch_wal()")
        wait_for_flush(conn, timeout_s=30)
    end = parse_lsn(src.full.end_lsn)
    after = [p for p in src.layout.segment_files() if segment_start(p.name)[1] > end]
    assert after, "no completed segment after the base backup"
    victim = after[-1]
    with victim.open("r+b") as fh:  # garbage from the first record on (after the page header)
        fh.seek(40)
        fh.write(os.urandom(victim.stat().st_size - 40))
    writer.stop()
    recorded = read_drill_record(src.layout)
    result = run_pitr_drill(
        src.layout, PostgresResource(url=src.source.url()), seed=5, workdir=src.base, timeout_s=120
    )
    assert not result.passed
    assert read_drill_record(src.layout) == recorded  # a failed drill protects nothing new
    assert "Fix:" in result.reason
    assert any(
        "lacks" in f or "archive ends before the target" in f or "not exact" in f
        for f in result.failures
    ), result.failures
    assert not [p for p in src.base.iterdir() if p.name.startswith("twinme-pitr-drill-")]


def test_the_drill_metrics_are_declared() -> None:
    assert {"twinme_pitr_drill_success", "twinme_pitr_drill_rto_seconds"} <= set(METRICS)
