"""Point-in-time restores from barman-cloud's bucket layout: production's archive (issue 14).

CloudNativePG's Barman Cloud plugin writes production's WAL and base backups; here the same tools
write them for an embedded PostgreSQL 18 into a moto S3 bucket (``tests/support/
barman_archive.py``: ``barman-cloud-wal-archive`` as ``archive_command``, ``archive_timeout`` 1 s,
one ``barman-cloud-backup``), with heartbeats every 0.25 s in its ``twinme`` database.
``pitr_drill_job`` and ``recover_job`` then run with ``TWINME_WAL_ARCHIVE=cloudnative-pg`` and
restore with ``barman-cloud-restore`` + ``barman-cloud-wal-restore`` onto scratch servers. The
module's last tests damage its own bucket: a corrupt WAL object, then a missing one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import dagster as dg
import pytest

from tests.support.backup_helpers import store_for
from tests.support.barman_archive import BarmanSource, barman_archived_source
from tests.support.list_log import ListLog
from tests.support.pitr_helpers import HeartbeatWriter, location_env
from tests.support.production import recover
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.backups.manifest import MANIFEST
from twinme_ops.backups.pitr.heartbeat import Heartbeat, read_heartbeats, write_heartbeat
from twinme_ops.backups.pitr_drill import random_target, run_pitr_drill
from twinme_ops.definitions import build_definitions
from twinme_ops.sandbox.servers import DATABASE, prepare_database
from twinme_ops.servers.postgres import PostgresResource


@pytest.fixture(scope="module")
def bucket_name(s3_server: str) -> Iterator[str]:
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    name = f"twinme-barman-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=name)
    yield name
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=obj["Key"])
    client.delete_bucket(Bucket=name)


@pytest.fixture(scope="module")
def archived(server_tmp_root: Path, s3_server: str, bucket_name: str) -> Iterator[BarmanSource]:
    with barman_archived_source(server_tmp_root, s3_server, bucket_name) as src:
        prepare_database(src.source)
        with src.source.connect(DATABASE) as conn:
            conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
            conn.execute(
                "INSERT INTO notes (body) SELECT md5(g::text) FROM generate_series(1, 100) g"
            )
        # the database and its heartbeats exist before the base backup, as in production; then
        # a few seconds of heartbeats after it. Not more: with archive_timeout 1 s each second
        # of writes is a 16 MiB segment, and one barman-cloud-wal-archive call takes about that
        writer = HeartbeatWriter(src.source, interval_s=0.25, dbname=DATABASE).start()
        try:
            src.take_backup()
            time.sleep(3.0)
        finally:
            writer.stop()
        assert writer.error is None, writer.error
        assert len(writer.written) >= 10
        yield src


@pytest.fixture
def barman_env(
    archived: BarmanSource,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    slack_receiver: SlackReceiver,
    redis_server: Any,
) -> dict[str, str]:
    """The code location's environment for production's engine (the server name left empty:
    the Cluster's name, the plugin's default)."""
    return location_env(
        monkeypatch,
        tmp_path,
        database_url=archived.source.url(DATABASE),
        redis_url=redis_server.url(),
        slack_url=slack_receiver.url,
        wal_archive={
            "TWINME_WAL_ARCHIVE": "cloudnative-pg",
            "TWINME_WAL_ARCHIVE_DESTINATION": archived.destination,
        },
    )


def _drill_job(seed: int) -> dg.ExecuteInProcessResult:
    job = build_definitions().resolve_job_def("pitr_drill_job")
    config = {"seed": seed, "archive_wait_seconds": 60, "timeout_minutes": 5}
    return job.execute_in_process(
        run_config={"ops": {"point_in_time_drill": {"config": config}}},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def _failure(result: dg.ExecuteInProcessResult) -> tuple[str, str]:
    failure = next(e for e in result.all_events if e.is_step_failure)
    data = failure.step_failure_data
    assert data is not None
    text = (data.user_failure_data.description if data.user_failure_data else "") or ""
    return failure.step_key or "", text or data.error.message  # type: ignore[union-attr]


def _live_state(src: BarmanSource) -> tuple[Any, list[str]]:
    with src.source.connect() as conn:
        started = conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database ORDER BY 1")]
    return started, names


def test_the_drill_restores_the_bucket_to_a_random_second_and_to_latest(
    archived: BarmanSource, barman_env: dict[str, str]
) -> None:
    src = archived
    result = _drill_job(seed=7)
    assert result.success, _failure(result)
    [output] = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    data = output.step_output_data
    assert data is not None
    meta: dict[str, Any] = {k: getattr(v, "value", v) for k, v in data.metadata.items()}
    assert meta["passed"] is True and meta["engine"] == "cloudnative-pg"
    start, end = map(datetime.fromisoformat, (meta["window_start"], meta["window_end"]))
    assert datetime.fromisoformat(meta["target"]) == random_target(start, end, 7)
    details = meta["details"]
    target, latest = details["heartbeats"]["target"], details["heartbeats"]["latest"]
    assert target["ok"] and target["expected"] >= 1 and target["unexpected"] == 0
    assert latest["ok"] and latest["expected"] == latest["present"] > target["expected"]
    for restore in details["restores"].values():
        assert restore["engine"] == "barman-cloud" and restore["backup"] == src.backup_id
        assert restore["archive_mode"] == "off"  # a restored copy never archives
        assert restore["total_s"] > 0 and restore["wal_bytes"] > 0
    assert meta["achieved_rpo_s"] < 5.0
    print("\nbarman-cloud PITR drill figures:", details["restores"], meta["achieved_rpo_s"])


def test_a_direct_drill_names_the_figures_of_each_restore(
    archived: BarmanSource,
) -> None:
    src = archived
    log = ListLog()
    result = run_pitr_drill(
        src.engine(),
        PostgresResource(url=src.source.url(DATABASE)),
        seed=11,
        workdir=src.base,
        flush_timeout_s=60,
        log=log,
    )
    assert result.passed, result.failures
    for name in ("target", "latest"):
        figures = result.restores[name]
        assert figures["restore_s"] > 0 and figures["replay_s"] > 0
        assert figures["total_s"] >= figures["restore_s"] + figures["replay_s"] - 0.01
    assert not [p for p in src.base.iterdir() if p.name.startswith("twinme-pitr-drill-")]
    print("\nbarman-cloud restores:", result.restores)


def _heartbeats(src: BarmanSource, count: int) -> list[Heartbeat]:
    with src.source.connect(DATABASE) as conn:
        for _ in range(count):
            write_heartbeat(conn)
            time.sleep(0.1)
        return read_heartbeats(conn)


def test_recover_job_returns_the_database_to_the_second_from_the_bucket(
    archived: BarmanSource,
    barman_env: dict[str, str],
    slack_receiver: SlackReceiver,
) -> None:
    src = archived
    known = _heartbeats(src, 10)
    before, after = known[-6], known[-5]
    target = before.at + (after.at - before.at) / 2
    with src.source.connect(DATABASE) as conn:
        conn.execute("DELETE FROM notes WHERE id > 40")  # the bad write, after the target
    known = _heartbeats(src, 5)
    with src.source.connect(DATABASE) as conn:
        src.engine().wait_archived(conn, timeout_s=60)
    config = {"target_time": target.isoformat(), "components": ["postgres"], "confirm": DATABASE}
    result = recover(config, dg.DagsterInstance.ephemeral())
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    with src.source.connect(DATABASE) as conn:
        restored = {hb.at for hb in read_heartbeats(conn)}
        notes = conn.execute("SELECT count(*) FROM notes").fetchone()[0]
        kept = conn.execute(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'twinme__pre_recovery_%'"
        ).fetchone()[0]
    assert notes == 100  # the rows the bad write deleted are back
    assert {hb.at for hb in known if hb.at <= before.at} <= restored
    assert not {hb.at for hb in known if hb.at > target} & restored
    assert kept == 1
    store = store_for(barman_env["TWINME_BACKUP_URL"])
    assert [s for s in store.list_sets() if store.exists(s, MANIFEST)]  # the safety set
    assert f"PostgreSQL at {target.isoformat()} (reached " in "\n".join(slack_receiver.messages)


def _after_backup(src: BarmanSource) -> list[tuple[str, str]]:
    """Archived (segment, key) after the base backup's end, oldest first, the newest left out."""
    backup = next(b for b in src.bucket().list_backups() if b.id == src.backup_id)
    keys = sorted(src.wal_keys().items())
    later = [(name, key) for name, key in keys if name[8:] > backup.end_wal[8:]]
    assert len(later) >= 3, later
    return later[:-1]


def test_a_corrupt_wal_object_fails_the_drill_naming_it(
    archived: BarmanSource,
) -> None:
    """The module's bucket is damaged, then repaired: one object replaced by garbage."""
    src = archived
    _heartbeats(src, 5)
    with src.source.connect(DATABASE) as conn:
        src.engine().wait_archived(conn, timeout_s=60)
    name, key = _after_backup(src)[-1]
    client = boto3.client("s3", endpoint_url=src.endpoint)
    original = client.get_object(Bucket=src.bucket_name, Key=key)["Body"].read()
    client.put_object(Bucket=src.bucket_name, Key=key, Body=b"\x1f\x8b garbage, not a segment")
    before = _live_state(src)
    try:
        result = run_pitr_drill(
            src.engine(),
            PostgresResource(url=src.source.url(DATABASE)),
            seed=3,
            workdir=src.base,
            flush_timeout_s=60,
            timeout_s=120,
        )
    finally:
        client.put_object(Bucket=src.bucket_name, Key=key, Body=original)
    assert not result.passed
    named = [f for f in result.failures if name in f]
    assert named, result.failures
    # barman fails to restore it, or (prefetched into the spool) PostgreSQL cannot replay it
    assert "damaged" in named[0] and "Fix:" in named[0] and "take a new base backup" in named[0]
    print("\ncorrupt object:", named[0])
    assert _live_state(src) == before  # the source was never restarted, no database added
    assert not [p for p in src.base.iterdir() if p.name.startswith("twinme-pitr-drill-")]


def test_a_missing_wal_object_fails_the_drill_and_the_recovery_before_anything(
    archived: BarmanSource,
    barman_env: dict[str, str],
    slack_receiver: SlackReceiver,
) -> None:
    """Last in the module: it deletes a WAL object from the module's bucket."""
    src = archived
    _heartbeats(src, 5)
    with src.source.connect(DATABASE) as conn:
        src.engine().wait_archived(conn, timeout_s=60)
    name, key = _after_backup(src)[0]
    boto3.client("s3", endpoint_url=src.endpoint).delete_object(Bucket=src.bucket_name, Key=key)
    before = _live_state(src)

    result = _drill_job(seed=5)
    assert not result.success
    _, message = _failure(result)
    assert "point-in-time drill FAILED" in message
    assert f"segment {name} is missing from {src.destination}/twinme-db/wals/" in message
    assert "Fix: take a new base backup now" in message
    assert any("point-in-time drill" in m and name in m for m in slack_receiver.messages)

    config = {"target_time": "latest", "components": ["postgres"], "confirm": DATABASE}
    step, message = _failure(recover(config, dg.DagsterInstance.ephemeral()))
    assert step == "recovery_preflight"
    assert f"segment {name} is missing" in message and "Nothing was touched" in message
    assert not store_for(barman_env["TWINME_BACKUP_URL"]).list_sets()  # no safety backup
    assert _live_state(src) == before
