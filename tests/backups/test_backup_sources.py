"""The backup sources against real servers in hostile conditions, and the job's wiring."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import psycopg
import pytest
import redis

from tests.support.compare import redis_snapshot_of
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.backups.artifacts import write_artifact
from twinme_ops.backups.manifest import ManifestError, build_manifest
from twinme_ops.backups.store.base import BackupStore
from twinme_ops.common.pgtools import pg_bin, pg_bin_dir
from twinme_ops.common.redact import redact, register_secret
from twinme_ops.definitions import build_definitions
from twinme_ops.scratch.postgres import PostgresServer
from twinme_ops.scratch.redis import RedisServer
from twinme_ops.servers.postgres import PostgresError, PostgresResource, snapshot_dump
from twinme_ops.servers.redis import RedisResource, rdb_snapshot

SET = "2026-11-24"


def test_server_stopped_in_the_middle_of_the_dump_commits_nothing(
    server_tmp: Path, tmp_path: Path
) -> None:
    server = PostgresServer.start(server_tmp / "pg")
    try:
        with server.connect() as conn:
            conn.execute(
                "CREATE TABLE big AS SELECT g, md5(g::text) || repeat('x', 200) AS pad "
                "FROM generate_series(1, 200000) g"
            )
        pg = PostgresResource(url=server.url("postgres"))
        store = BackupStore(url=f"file://{tmp_path}/store")

        def stop_after_first_chunk(chunks: Iterator[bytes]) -> Iterator[bytes]:
            for i, chunk in enumerate(chunks):
                yield chunk
                if i == 0:
                    server.stop(mode="immediate")

        with pytest.raises(PostgresError) as info:  # noqa: SIM117 (the order matters)
            with snapshot_dump(pg) as (chunks, _facts):
                write_artifact(store, SET, "postgres.dump.zst", stop_after_first_chunk(chunks))
        message = str(info.value)
        assert "pg_dump of postgresql://postgres@127.0.0.1" in message
        assert "Fix: the server went away during the dump" in message
        assert store.list_artifacts(SET) == {} if SET in store.list_sets() else True
        assert not list((tmp_path / "store").rglob("*.tmp-*"))
    finally:
        server.stop(mode="immediate")


def test_row_counts_come_from_the_dump_snapshot(pg_server: PostgresServer) -> None:
    """Rows inserted while the dump runs are neither dumped nor counted."""
    with pg_server.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS counted; CREATE TABLE counted(i int)")
        conn.execute("INSERT INTO counted SELECT generate_series(1, 1000)")
    pg = PostgresResource(url=pg_server.url("postgres"))
    with snapshot_dump(pg) as (chunks, facts):
        with pg_server.connect() as conn:
            conn.execute("INSERT INTO counted SELECT generate_series(1, 500)")
        size = sum(len(c) for c in chunks)
    assert size > 0
    assert facts.tables["public.counted"] == 1000


def test_redis_snapshot_works_on_a_production_like_server(server_tmp: Path) -> None:
    """Password, AOF on, CONFIG/FLUSHALL/KEYS renamed away: SYNC still gives a loadable RDB."""
    password = "Redis-Prod-Pass-42"
    server = RedisServer.start(
        server_tmp / "prod",
        password=password,
        extra_config=[
            "appendonly yes",
            'rename-command CONFIG ""',
            'rename-command FLUSHALL ""',
            'rename-command KEYS ""',
            'rename-command DEBUG ""',
        ],
    )
    scratch = None
    try:
        client = redis.Redis.from_url(server.url(with_password=True))
        with pytest.raises(redis.ResponseError):
            client.config_get("maxmemory")  # really renamed away
        client.set("cache:a", "1", ex=3600)
        client.hset("session:x", mapping={"user": "7"})
        client.rpush("queue", "a", "b")
        client.xadd("events", {"k": "v"})
        res = RedisResource(url=server.url(with_password=True))
        with rdb_snapshot(res) as (chunks, facts):
            rdb = b"".join(chunks)
        assert rdb.startswith(b"REDIS")
        assert facts.total_keys == 4 and facts.keys == {"db0": 4}
        rdb_file = server_tmp / "dump.rdb"
        rdb_file.write_bytes(rdb)
        scratch = RedisServer.start(server_tmp / "scratch", rdb_file=rdb_file)
        assert redis_snapshot_of(redis.Redis.from_url(scratch.url())) == redis_snapshot_of(client)
        assert password not in res.describe()
    finally:
        server.stop()
        if scratch:
            scratch.stop()


def test_redact_masks_urls_keys_and_registered_secrets() -> None:
    register_secret("hunter2-registered")
    text = redact(
        "postgresql://app:pa55word@db:5432/twinme?sslmode=require and password=topsecret "
        "and hunter2-registered and https://hooks.slack.com/services/T1/B2/XYZ"
    )
    assert "pa55word" not in text and "topsecret" not in text
    assert "hunter2-registered" not in text and "XYZ" not in text
    assert "postgresql://app:***@db:5432/twinme" in text


def test_manifest_refuses_missing_or_resized_artifacts() -> None:
    with pytest.raises(ManifestError, match="lacks component records for: postgres, redis, files"):
        build_manifest(SET, {}, {}, environment="local", run_id="r", location="file:///x")


def test_slack_retries_429_and_5xx_then_delivers(slack_receiver: SlackReceiver) -> None:
    slack_receiver.fail_next = [429, 503]
    assert SlackNotifier(webhook_url=slack_receiver.url).send("hello")
    assert slack_receiver.messages == ["hello"]
    assert len(slack_receiver.raw) == 3


def test_undeliverable_slack_alert_never_raises(slack_receiver: SlackReceiver) -> None:
    slack_receiver.fail_next = [500] * 10
    assert not SlackNotifier(webhook_url=slack_receiver.url, max_retries=1).send("x")
    assert not SlackNotifier(webhook_url="http://127.0.0.1:1/hook", max_retries=0).send("x")


def test_schedule_backs_up_today_at_two_in_paris() -> None:
    defs = build_definitions()
    schedule = defs.get_schedule_def("nightly_backup_schedule")
    assert schedule.cron_schedule == "0 2 * * *"
    assert schedule.execution_timezone == "Europe/Paris"
    tick = datetime(2026, 11, 25, 2, 0, tzinfo=ZoneInfo("Europe/Paris"))
    with (
        dg.instance_for_test() as instance,
        dg.build_schedule_context(instance=instance, scheduled_execution_time=tick) as ctx,
    ):
        data = schedule.evaluate_tick(ctx)
    assert data.run_requests and data.run_requests[0].partition_key == "2026-11-25"


def test_definitions_validate_and_public_names() -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "dagster",
            "definitions",
            "validate",
            "-m",
            "twinme_ops.definitions",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    defs = build_definitions()
    assert defs.resolve_job_def("nightly_backup_job").name == "nightly_backup_job"
    for asset in ("postgres_backup", "redis_backup", "files_backup", "backup_set"):
        assert defs.resolve_assets_def(asset).descriptions_by_key


def test_production_requires_its_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWINME_ENV", "production")
    for var in ("DATABASE_URL", "REDIS_URL", "TWINME_FILES_DIR", "TWINME_BACKUP_URL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="DATABASE_URL, REDIS_URL, TWINME_FILES_DIR"):
        build_definitions()
    monkeypatch.setenv("TWINME_ENV", "staging")
    with pytest.raises(ValueError, match="TWINME_ENV='staging' is not one of local, production"):
        build_definitions()


def test_client_tools_come_from_twinme_pg_client_dir(
    pg_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SSL-enabled client (the production image's PGDG one) replaces the wheel's pg_dump."""
    client = tmp_path / "pg18" / "bin"
    client.mkdir(parents=True)
    calls = tmp_path / "calls.log"
    for tool in ("pg_dump", "pg_restore", "psql"):
        wrapper = client / tool
        wrapper.write_text(f'#!/bin/sh\necho {tool} >> {calls}\nexec {pg_bin_dir() / tool} "$@"\n')
        wrapper.chmod(0o755)
    monkeypatch.setenv("TWINME_PG_CLIENT_DIR", str(client))
    assert pg_bin("pg_dump") == str(client / "pg_dump")
    assert pg_bin("initdb") == str(pg_bin_dir() / "initdb")  # scratch servers keep pgvector
    with snapshot_dump(PostgresResource(url=pg_server.url("postgres"))) as (chunks, _facts):
        assert sum(len(c) for c in chunks) > 0
    assert calls.read_text().split() == ["pg_dump"]
    monkeypatch.setenv("TWINME_PG_CLIENT_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="TWINME_PG_CLIENT_DIR=.*18"):
        pg_bin("pg_restore")


def test_a_table_locked_by_a_migration_fails_the_dump_naming_it(pg_server: PostgresServer) -> None:
    """A dump that cannot lock a table in time fails with its name and how to find the holder,
    and leaves no session of its own behind (pg_dump's, the row counts' snapshot)."""
    with pg_server.connect() as conn:
        conn.execute("DROP TABLE IF EXISTS migrating; CREATE TABLE migrating(i int)")
    migration = psycopg.connect(pg_server.url("postgres"), application_name="migration")
    try:
        migration.execute("LOCK TABLE migrating IN ACCESS EXCLUSIVE MODE")
        pg = PostgresResource(url=pg_server.url("postgres"))
        with pytest.raises(PostgresError) as info:  # noqa: SIM117 (the order matters)
            with snapshot_dump(pg, lock_wait_timeout_s=1) as (chunks, _facts):
                for _ in chunks:
                    pass
        message = str(info.value)
        assert "waited 1 s for a lock on public.migrating" in message, message
        assert "relation = 'public.migrating'::regclass" in message
        assert "lock_wait_timeout_s in the run config" in message
        with pg_server.connect() as conn:
            # the query the message gives finds the migration's session
            query = message.split("Fix: find it with ")[1].split(", let it finish")[0]
            holders = conn.execute(query).fetchall()
            assert [h[2] for h in holders] == ["LOCK TABLE migrating IN ACCESS EXCLUSIVE MODE"]
            left = conn.execute(
                "SELECT application_name, state FROM pg_stat_activity "
                "WHERE application_name LIKE 'twinme_ops%' AND state <> 'idle'"
            ).fetchall()
        assert left == []
    finally:
        migration.rollback()
        migration.close()
