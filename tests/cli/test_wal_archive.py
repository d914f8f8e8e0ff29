"""``twinme-ops wal-archive start | stop | status`` against PostgreSQL servers that are not the
sandbox: an unready server is refused with the SQL that fixes it (and that SQL works), a ready one
is archived (receiver, first base backup, heartbeat writer) so that a commit made afterwards can be
restored, and an archive root that cannot continue without a gap, or belongs to another cluster,
is refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.pg_fixtures import ARCHIVER_PASSWORD, ARCHIVER_ROLE
from twinme_ops import cli
from twinme_ops.backups.pitr.external import stop_external_archiving
from twinme_ops.backups.pitr.heartbeat_writer import heartbeat_writer_pid
from twinme_ops.backups.pitr.layout import ArchiveLayout
from twinme_ops.backups.pitr.receiver import DEFAULT_SLOT, receiver_pid, wait_for_flush
from twinme_ops.backups.pitr.restore import restore_to_point
from twinme_ops.scratch.postgres import PostgresServer


@pytest.fixture
def archive_root(server_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The local engine into a fresh root; whatever a test started there is stopped after it."""
    root = server_tmp / "wal-archive"
    for name in ("TWINME_ENV", "TWINME_HEARTBEAT_URL", "TWINME_HEARTBEAT_INTERVAL_S"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TWINME_HOME", str(server_tmp / "home"))
    monkeypatch.setenv("TWINME_WAL_ARCHIVE", "local")
    monkeypatch.setenv("TWINME_WAL_ARCHIVE_ROOT", str(root))
    yield root
    stop_external_archiving(ArchiveLayout.at(root))


def _slots(server: PostgresServer) -> list[str]:
    with server.connect() as conn:
        return [r[0] for r in conn.execute("SELECT slot_name FROM pg_replication_slots")]


def _printed_sql(err: str) -> list[str]:
    """The statements the error tells a superuser to run (indented, ending with ;)."""
    return [line.strip() for line in err.splitlines() if line.startswith("    ") and ";" in line]


def test_an_unready_server_is_refused_with_the_fix_and_then_archived(
    unready_pg: PostgresServer,
    archive_root: Path,
    server_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"postgresql://{ARCHIVER_ROLE}:{ARCHIVER_PASSWORD}@127.0.0.1:{unready_pg.port}/postgres"
    monkeypatch.setenv("DATABASE_URL", url)
    layout = ArchiveLayout.at(archive_root)
    start = ["wal-archive", "start", "--heartbeat", "--heartbeat-interval", "0.5"]

    # refused: every missing setting and privilege, the SQL, the restart, the CloudNativePG note
    assert cli.main(start) == 1
    err = capsys.readouterr().err
    for expected in (
        "is not ready for continuous archiving",
        "wal_level is minimal, needs replica or logical",
        "max_wal_senders is 0, needs >= 5",
        "summarize_wal is off, needs on (incremental base backups need WAL summaries)",
        f"role {ARCHIVER_ROLE} is no REPLICATION, needs REPLICATION",
        "ALTER SYSTEM SET wal_level = 'replica';",
        "ALTER SYSTEM SET max_wal_senders = '10';",
        "ALTER SYSTEM SET summarize_wal = 'on';",
        f"ALTER ROLE {ARCHIVER_ROLE} REPLICATION;",
        "then restart PostgreSQL (max_wal_senders, wal_level only change at a restart)",
        "TWINME_WAL_ARCHIVE=cloudnative-pg",
    ):
        assert expected in err, err
    assert ARCHIVER_PASSWORD not in err
    # nothing was started, nothing created on the server
    assert receiver_pid(layout) is None and _slots(unready_pg) == []

    # the team runs the printed SQL as a superuser and restarts: the server is ready
    with unready_pg.connect() as conn:
        for statement in _printed_sql(err):
            conn.execute(statement.encode())
    unready_pg.restart()

    # the heartbeat writer needs a schema the role may create: refused with that fix
    assert cli.main(start) == 1
    err = capsys.readouterr().err
    assert "the heartbeat writer cannot start" in err
    assert f"CREATE SCHEMA twinme_ops AUTHORIZATION {ARCHIVER_ROLE};" in err
    assert receiver_pid(layout) is None
    with unready_pg.connect() as conn:
        conn.execute(f"CREATE SCHEMA twinme_ops AUTHORIZATION {ARCHIVER_ROLE}".encode())

    assert cli.main(start) == 0
    out = capsys.readouterr().out
    assert "(full) taken now" in out and "heartbeat writer: pid" in out
    assert ARCHIVER_PASSWORD not in out
    pid = receiver_pid(layout)
    assert pid is not None and heartbeat_writer_pid(layout) is not None
    assert f"pid {pid}" in out and _slots(unready_pg) == [DEFAULT_SLOT]

    # a commit made now is archived at once (--synchronous)
    with unready_pg.connect() as conn:
        conn.execute("CREATE TABLE team_orders (id int PRIMARY KEY)")
        conn.execute("INSERT INTO team_orders VALUES (1), (2), (3)")
        wait_for_flush(conn, timeout_s=10)

    assert cli.main(["wal-archive", "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["receiver_alive"] and status["synchronous"] and status["slot_exists"]
    assert status["heartbeat_writer_alive"] and status["heartbeat_interval_s"] == 0.5
    assert status["base_backups"] == 1 and status["newest_base_backup_kind"] == "full"
    assert status["rpo_s"] is not None and status["rpo_s"] < 5
    assert status["problems"] == []
    assert ARCHIVER_PASSWORD not in json.dumps(status) and ARCHIVER_ROLE in status["source"]

    # idempotent: the same receiver, no second base backup, the writer still runs
    assert cli.main(["wal-archive", "start"]) == 0
    out = capsys.readouterr().out
    assert f"pid {pid}," in out and "base backups: 1 in the archive" in out
    assert "heartbeat writer: pid" in out

    # the archive restores what was committed after it started
    restored = restore_to_point(layout, server_tmp / "restored")
    try:
        with restored.server.connect() as conn:
            assert conn.execute("SELECT count(*) FROM team_orders").fetchone()[0] == 3
            assert conn.execute("SELECT count(*) FROM twinme_ops.heartbeat").fetchone()[0] > 0
    finally:
        restored.server.stop(mode="immediate")

    assert cli.main(["wal-archive", "stop"]) == 0
    out = capsys.readouterr().out
    assert "heartbeat writer: stopped" in out and "receiver: stopped" in out
    assert f"slot {DEFAULT_SLOT} kept" in out
    assert receiver_pid(layout) is None and heartbeat_writer_pid(layout) is None
    assert _slots(unready_pg) == [DEFAULT_SLOT]  # the server keeps the WAL for the archive
    assert cli.main(["wal-archive", "status"]) == 3
    assert json.loads(capsys.readouterr().out)["problems"] == ["the WAL receiver is not running"]


def test_an_archive_that_cannot_continue_is_refused(
    server_tmp: Path,
    archive_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ready = {"summarize_wal": "on"}  # PostgreSQL 18's defaults do the rest
    first = PostgresServer.start(server_tmp / "first", settings=ready)
    other = PostgresServer.start(server_tmp / "other", settings=ready)
    layout = ArchiveLayout.at(archive_root)
    try:
        monkeypatch.setenv("DATABASE_URL", first.url())
        assert cli.main(["wal-archive", "start"]) == 0
        assert cli.main(["wal-archive", "stop", "--drop-slot"]) == 0
        out = capsys.readouterr().out
        assert f"slot {DEFAULT_SLOT} dropped" in out and _slots(first) == []

        # the WAL written since the slot was dropped is gone: continuing would leave a gap
        assert cli.main(["wal-archive", "start"]) == 1
        err = capsys.readouterr().err
        assert "holds WAL up to segment" in err and f"no replication slot '{DEFAULT_SLOT}'" in err
        assert "point TWINME_WAL_ARCHIVE_ROOT at a new, empty directory" in err
        assert receiver_pid(layout) is None and _slots(first) == []

        # another cluster's base backups are in the root
        monkeypatch.setenv("DATABASE_URL", other.url())
        assert cli.main(["wal-archive", "start"]) == 1
        err = capsys.readouterr().err
        assert "holds base backups of another PostgreSQL cluster" in err
        assert receiver_pid(layout) is None and _slots(other) == []
    finally:
        first.stop(mode="immediate")
        other.stop(mode="immediate")


def test_what_to_archive_where_comes_from_the_environment(
    archive_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert cli.main(["wal-archive", "start"]) == 2
    err = capsys.readouterr().err
    assert "DATABASE_URL is not set" in err and "twinme-ops sandbox up" in err

    monkeypatch.setenv("DATABASE_URL", "postgresql://team:s3cret-Pw@127.0.0.1:1/app")
    monkeypatch.setenv("TWINME_WAL_ARCHIVE", "cloudnative-pg")
    assert cli.main(["wal-archive", "status"]) == 2
    err = capsys.readouterr().err
    assert "engine is cloudnative-pg" in err and "Fix: export TWINME_WAL_ARCHIVE=local" in err
    monkeypatch.setenv("TWINME_WAL_ARCHIVE", "barman")
    assert cli.main(["wal-archive", "stop"]) == 2
    assert "is not one of local, cloudnative-pg, off" in capsys.readouterr().err

    parser = cli.build_parser()
    assert parser.parse_args(["wal-archive", "start"]).handler is cli.cmd_wal_archive_start
    assert parser.parse_args(["wal-archive", "stop"]).handler is cli.cmd_wal_archive_stop
    assert parser.parse_args(["wal-archive", "status"]).handler is cli.cmd_wal_archive_status
