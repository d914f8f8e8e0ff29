"""recover_job with target_time: PostgreSQL back to a second, from the WAL archive (issue 14).

A sandbox-like source (the TwinMe schema) archived by a --synchronous pg_receivewal with a full
base backup; heartbeats committed every 0.1 s in its ``twinme`` database. The recovery restores
on a scratch server, copies the database into the live server and swaps it in.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from tests.support.backup_helpers import store_for
from tests.support.pitr_helpers import ArchivedSource, archived_source, location_env
from tests.support.production import recover
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.backups.manifest import MANIFEST
from twinme_ops.backups.pitr.heartbeat import (
    Heartbeat,
    ensure_heartbeat_table,
    read_heartbeats,
    write_heartbeat,
)
from twinme_ops.backups.pitr.receiver import wait_for_flush
from twinme_ops.sandbox.servers import DATABASE, prepare_database
from twinme_ops.scratch.postgres import PostgresServer
from twinme_ops.scratch.redis import RedisServer


@pytest.fixture(scope="module")
def live(server_tmp_root: Path) -> Iterator[ArchivedSource]:
    with archived_source(server_tmp_root) as src:
        prepare_database(src.source)
        yield src


@pytest.fixture
def recovery_env(
    live: ArchivedSource,
    redis_server: RedisServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    slack_receiver: SlackReceiver,
) -> dict[str, str]:
    return location_env(
        monkeypatch,
        tmp_path,
        database_url=live.source.url(DATABASE),
        redis_url=redis_server.url(),
        slack_url=slack_receiver.url,
        wal_archive={
            "TWINME_WAL_ARCHIVE": "local",
            "TWINME_WAL_ARCHIVE_ROOT": str(live.layout.root),
        },
    )


def _heartbeats(live: ArchivedSource, count: int) -> list[Heartbeat]:
    with live.source.connect(DATABASE) as conn:
        ensure_heartbeat_table(conn)
        for _ in range(count):
            write_heartbeat(conn)
            time.sleep(0.1)
        known = read_heartbeats(conn)
        wait_for_flush(conn, timeout_s=30)
    return known


def _failure(result: dg.ExecuteInProcessResult) -> tuple[str, str]:
    failure = next(e for e in result.all_events if e.is_step_failure)
    return failure.step_key or "", failure.step_failure_data.error.message  # type: ignore[union-attr]


def test_recover_job_returns_postgres_to_the_second(
    live: ArchivedSource, recovery_env: dict[str, str], slack_receiver: SlackReceiver
) -> None:
    known = _heartbeats(live, 16)
    before, after = known[7], known[8]
    target = before.at + (after.at - before.at) / 2
    config: dict[str, Any] = {
        "target_time": target.isoformat(),
        "components": ["postgres"],
        "confirm": DATABASE,
    }
    result = recover(config, dg.DagsterInstance.ephemeral())
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    with live.source.connect(DATABASE) as conn:
        restored = {hb.at for hb in read_heartbeats(conn)}
        kept = [
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE 'twinme__pre_recovery_%'"
            ).fetchall()
        ]
    assert {hb.at for hb in known if hb.at <= before.at} <= restored
    assert not {hb.at for hb in known if hb.at > target} & restored
    assert len(kept) == 1  # the database as it was before the recovery
    store = store_for(recovery_env["TWINME_BACKUP_URL"])
    safety = [s for s in store.list_sets() if s.startswith("safety-")]
    assert len(safety) == 1 and store.exists(safety[0], MANIFEST)
    report = "\n".join(slack_receiver.messages)
    assert f"PostgreSQL at {target.isoformat()} (reached " in report


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"target_time": "2999-01-01T00:00:00+00:00"}, "is in the future"),
        ({"target_time": "2020-01-01T00:00:00+00:00"}, "before the oldest base backup ended"),
        ({"target_time": "2026-12-05T09:00:00"}, "has no time zone"),
        (
            {"target_time": "latest", "components": ["postgres", "redis"]},
            "redis have no point-in-time archive",
        ),
        ({"target_time": "", "components": ["postgres"]}, "set_id is empty"),
    ],
    ids=["future", "before-base-backup", "no-timezone", "redis-without-set", "no-set"],
)
def test_the_guards_refuse_before_anything(
    live: ArchivedSource, recovery_env: dict[str, str], config: dict[str, Any], expected: str
) -> None:
    full = {"components": ["postgres"], "confirm": DATABASE, **config}
    result = recover(full, dg.DagsterInstance.ephemeral())
    assert not result.success
    step, message = _failure(result)
    assert step == "recovery_preflight"
    assert expected in message and "Nothing was touched" in message and "Fix:" in message
    assert not store_for(recovery_env["TWINME_BACKUP_URL"]).list_sets()


def test_cloudnative_pg_without_a_bucket_names_it_and_the_cluster_bootstrap(
    live: ArchivedSource, recovery_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With cloudnative-pg recover_job restores from the plugin's bucket
    (tests/backups/test_pitr_barman.py); without one configured it says which setting, and the
    other way back (a new Cluster)."""
    monkeypatch.setenv("TWINME_WAL_ARCHIVE", "cloudnative-pg")
    monkeypatch.delenv("TWINME_WAL_ARCHIVE_DESTINATION", raising=False)
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    config = {"target_time": past, "components": ["postgres"], "confirm": DATABASE}
    step, message = _failure(recover(config, dg.DagsterInstance.ephemeral()))
    assert step == "recovery_preflight"
    assert "has no destination" in message and "TWINME_WAL_ARCHIVE_DESTINATION" in message
    assert "Nothing was touched" in message
    assert "new Cluster bootstrapped from the ObjectStore" in message and "runbooks.md" in message


def test_the_archive_of_another_server_is_refused(
    live: ArchivedSource,
    recovery_env: dict[str, str],
    pg_server: PostgresServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", pg_server.url("postgres"))
    config = {"target_time": "latest", "components": ["postgres"], "confirm": "postgres"}
    step, message = _failure(recover(config, dg.DagsterInstance.ephemeral()))
    assert step == "recovery_preflight"
    assert "is of another server" in message and "TWINME_WAL_ARCHIVE_ROOT" in message
    assert "Nothing was touched" in message
