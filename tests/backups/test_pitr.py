"""Continuous archiving and point-in-time recovery on real PostgreSQL 18 servers (issue 14).

One source server per module, prepared from settings that cannot archive (wal_level minimal, no
WAL senders), archived by a --synchronous pg_receivewal on a slot while a heartbeat is committed
every 0.25 s. Restores go to scratch servers started from the combined backups.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.pitr_helpers import HeartbeatWriter
from twinme_ops.backups.pitr.basebackup import (
    TMP_PREFIX,
    BaseBackup,
    list_backups,
    sweep_partial_backups,
    take_base_backup,
)
from twinme_ops.backups.pitr.heartbeat import Heartbeat, read_heartbeats, verify_heartbeats
from twinme_ops.backups.pitr.layout import ArchiveLayout, PitrError, parse_lsn, segment_start
from twinme_ops.backups.pitr.receiver import (
    receiver_pid,
    start_receiver,
    stop_receiver,
    wait_for_flush,
)
from twinme_ops.backups.pitr.restore import PitrRestore, restore_to_point
from twinme_ops.backups.pitr.source import (
    Requirement,
    SourceReport,
    check_source,
    prepare_local_source,
)
from twinme_ops.backups.pitr.status import archive_status
from twinme_ops.backups.pitr.walcheck import wal_gap
from twinme_ops.scratch.postgres import PostgresServer

REPO = Path(__file__).resolve().parents[2]
FIGURES: dict[str, object] = {}


@dataclass
class Archive:
    base: Path
    source: PostgresServer
    layout: ArchiveLayout
    before: list[Requirement]
    prepared: SourceReport
    heartbeats: HeartbeatWriter

    @property
    def url(self) -> str:
        return self.source.url()


@pytest.fixture(scope="module")
def archive(server_tmp_root: Path) -> Iterator[Archive]:
    base = Path(tempfile.mkdtemp(prefix="pitr-", dir=server_tmp_root))
    base.chmod(0o755)
    source = PostgresServer.start(
        base / "source", settings={"wal_level": "minimal", "max_wal_senders": "0"}
    )
    layout = ArchiveLayout.at(base / "archive")
    writer: HeartbeatWriter | None = None
    try:
        with source.connect() as conn:
            before = check_source(conn)
        prepared = prepare_local_source(source)
        start_receiver(layout, source.url(), synchronous=True)
        writer = HeartbeatWriter(source, interval_s=0.25).start()
        yield Archive(base, source, layout, before, prepared, writer)
        assert writer.error is None, writer.error
    finally:
        if writer is not None:
            writer.stop()
        stop_receiver(layout)
        source.stop()
        shutil.rmtree(base, ignore_errors=True)
        print("\nPITR figures:", FIGURES)


@pytest.fixture(scope="module")
def backups(archive: Archive) -> tuple[BaseBackup, BaseBackup]:
    """A full backup, a second of heartbeats and writes, then an incremental one."""
    full = take_base_backup(archive.layout, archive.url)
    with archive.source.connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, body text)")
        conn.execute(
            "INSERT INTO notes (body) SELECT repeat('x', 200) FROM generate_series(1, 5000)"
        )
    time.sleep(1.2)
    incremental = take_base_backup(archive.layout, archive.url, kind="incremental")
    FIGURES["full_backup"] = {"s": full.seconds, "bytes": full.bytes}
    FIGURES["incremental_backup"] = {"s": incremental.seconds, "bytes": incremental.bytes}
    return full, incremental


@contextmanager
def restored(archive: Archive, **target: object) -> Iterator[PitrRestore]:
    where = Path(tempfile.mkdtemp(prefix="restore-", dir=archive.base))
    where.chmod(0o755)
    result: PitrRestore | None = None
    try:
        result = restore_to_point(archive.layout, where / "data", **target)  # type: ignore[arg-type]
        yield result
    finally:
        if result is not None:
            result.server.stop(mode="immediate")
        shutil.rmtree(where, ignore_errors=True)


def _flushed_heartbeats(archive: Archive) -> list[Heartbeat]:
    """Every heartbeat committed so far, once the archive has flushed all of them."""
    with archive.source.connect() as conn:
        known = read_heartbeats(conn)
        wait_for_flush(conn, timeout_s=10)
    return known


def _wait_heartbeats_after(archive: Archive, when: datetime, count: int) -> None:
    deadline = time.monotonic() + 30
    while sum(hb.at > when for hb in archive.heartbeats.written) < count:
        assert time.monotonic() < deadline, "the heartbeat writer stalled"
        time.sleep(0.1)


def _settings(server: PostgresServer, *names: str) -> list[str]:
    with server.connect() as conn:
        return [conn.execute(f"SHOW {name}").fetchone()[0] for name in names]


def test_source_is_prepared_with_a_restart(archive: Archive) -> None:
    before = {r.name: r for r in archive.before}
    assert not before["wal_level"].ok and before["wal_level"].needs_restart
    assert not before["max_wal_senders"].ok and before["max_wal_senders"].needs_restart
    assert not before["summarize_wal"].ok and not before["summarize_wal"].needs_restart
    report = archive.prepared
    assert report.restarted and report.ok
    assert set(report.restart_needed) == {"wal_level", "max_wal_senders"}
    assert {"wal_level", "max_wal_senders", "summarize_wal"} <= set(report.changed)
    assert _settings(archive.source, "wal_level", "summarize_wal") == ["replica", "on"]
    # a second run changes nothing
    again = prepare_local_source(archive.source)
    assert again.changed == [] and not again.restarted


def test_continuous_archiving_survives_a_receiver_outage(archive: Archive) -> None:
    layout, url = archive.layout, archive.url
    with archive.source.connect() as conn:
        conn.execute("CREATE TABLE events (id bigserial PRIMARY KEY, body text)")
        conn.execute(
            "INSERT INTO events (body) SELECT md5(g::text) FROM generate_series(1, 20000) g"
        )
        conn.execute("SELECT pg_switch_wal()")
        wait_for_flush(conn)
    status = archive_status(layout, url)
    assert status.receiver_alive and status.synchronous is True
    assert status.segments >= 1 and status.partial_segment is not None
    assert status.slot_active and status.flush_source == "pg_stat_replication"
    assert status.lag_bytes is not None and status.lag_bytes < 1 << 20
    FIGURES["receiver_lag_bytes"] = status.lag_bytes
    FIGURES["newest_segment_age_s"] = status.newest_segment_age_s
    pid = receiver_pid(layout)
    assert start_receiver(layout, url, synchronous=True).pid == pid  # idempotent

    assert stop_receiver(layout)
    with archive.source.connect() as conn:
        conn.execute(
            "INSERT INTO events (body) SELECT md5(g::text) FROM generate_series(1, 20000) g"
        )
        conn.execute("SELECT pg_switch_wal()")
    down = archive_status(layout, url)
    assert not down.receiver_alive and down.slot_exists and down.slot_active is False
    assert down.flush_source == "slot restart_lsn" and (down.lag_bytes or 0) > 0
    assert down.slot_wal_status in ("reserved", "extended")  # the slot keeps the WAL

    start_receiver(layout, url, synchronous=True)
    with archive.source.connect() as conn:
        wait_for_flush(conn, timeout_s=30)
    # every segment since the first one is there: nothing was lost while the receiver was down
    names = [p.name for p in [*layout.segment_files(), *layout.partial_files()]]
    segnos = sorted(segment_start(n)[1] >> 24 for n in names)
    assert segnos == list(range(segnos[0], segnos[-1] + 1))


def test_without_synchronous_the_archive_flushes_whole_segments(archive: Archive) -> None:
    layout = ArchiveLayout.at(archive.base / "async-archive")
    start_receiver(layout, archive.url, slot="twinme_async")
    try:
        with archive.source.connect() as conn:
            lsn = parse_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
            with pytest.raises(PitrError, match="pg_switch_wal"):
                wait_for_flush(conn, lsn, slot="twinme_async", timeout_s=1.5)
            conn.execute("SELECT pg_switch_wal()")
            assert wait_for_flush(conn, lsn, slot="twinme_async", timeout_s=30) >= lsn
        assert archive_status(layout).synchronous is False
    finally:
        stop_receiver(layout)
        with archive.source.connect() as conn:
            conn.execute("SELECT pg_drop_replication_slot('twinme_async')")


def test_full_and_incremental_base_backups(
    archive: Archive, backups: tuple[BaseBackup, BaseBackup]
) -> None:
    full, incremental = backups
    assert full.kind == "full" and full.parent is None and full.chain == [full.id]
    assert incremental.kind == "incremental" and incremental.parent == full.id
    assert incremental.chain == [full.id, incremental.id]
    assert full.verified and incremental.verified
    assert incremental.bytes < full.bytes
    assert parse_lsn(full.end_lsn) < parse_lsn(incremental.start_lsn)
    assert full.finished < incremental.finished
    assert list_backups(archive.layout) == [full, incremental]
    assert (incremental.path / "label.json").exists()
    assert not [p for p in archive.layout.base_dir.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert wal_gap(archive.layout, full) is None


def test_restore_to_a_random_time_between_heartbeats_is_exact(
    archive: Archive, backups: tuple[BaseBackup, BaseBackup]
) -> None:
    _, incremental = backups
    with archive.source.connect() as conn:  # ~50 MB of WAL to replay after the backup
        conn.execute("CREATE TABLE bulk (id bigserial PRIMARY KEY, body text)")
        conn.execute(
            "INSERT INTO bulk (body) "
            "SELECT repeat(md5(g::text), 20) FROM generate_series(1, 60000) g"
        )
    _wait_heartbeats_after(archive, datetime.now(UTC), 6)
    known = _flushed_heartbeats(archive)
    pairs = [(a, b) for a, b in zip(known, known[1:], strict=False) if a.at > incremental.finished]
    before, after = random.choice(pairs[-6:-1])  # after the bulk load
    target = before.at + (after.at - before.at) * random.uniform(0.2, 0.8)
    partial = archive_status(archive.layout).partial_start_lsn
    assert partial is not None
    with restored(archive, target_time=target) as result:
        assert result.chain == incremental.chain  # combined: full + incremental
        # the target's WAL was only in the .partial segment pg_receivewal was writing
        assert parse_lsn(result.reached_lsn) >= parse_lsn(partial)
        with result.server.connect() as conn:
            check = verify_heartbeats(conn, known, target)
        assert check.ok, check
        assert check.newest_present == before.at.isoformat()
        assert check.expected > 5 and check.unexpected == 0
        assert result.reached_time is not None
        assert before.at <= datetime.fromisoformat(result.reached_time) <= target
        # archiving off, no synchronous standby to wait for: the copy never writes into the archive
        assert _settings(result.server, "archive_mode", "synchronous_standby_names") == ["off", ""]
        assert result.timeline > 1 and result.wal_bytes > 0 and result.replay_s > 0
        FIGURES["restore_time_target"] = result.to_metadata()
        FIGURES["heartbeats_time_target"] = check.to_metadata()


def test_restore_to_an_lsn_from_the_full_backup_alone(
    archive: Archive, backups: tuple[BaseBackup, BaseBackup]
) -> None:
    full, incremental = backups
    known = _flushed_heartbeats(archive)
    pairs = [
        (a, b)
        for a, b in zip(known, known[1:], strict=False)
        if a.at > full.finished and parse_lsn(b.lsn) < parse_lsn(incremental.end_lsn)
    ]
    assert pairs, "no heartbeat between the full and the incremental backup"
    before, after = pairs[len(pairs) // 2]
    with restored(archive, target_lsn=after.lsn, inclusive=False) as result:
        assert result.chain == [full.id]
        with result.server.connect() as conn:
            check = verify_heartbeats(conn, known, after.at - timedelta(microseconds=1))
        assert check.ok and check.newest_present == before.at.isoformat(), check
        FIGURES["restore_lsn_target"] = result.to_metadata()


def test_restore_to_latest_has_the_last_flushed_heartbeat(
    archive: Archive, backups: tuple[BaseBackup, BaseBackup]
) -> None:
    known = _flushed_heartbeats(archive)
    # replay waits until 3 s after each commit: the server is still in (hot standby) recovery
    # when pg_ctl -w returns, and the restore must wait for the promotion
    with restored(archive, settings={"recovery_min_apply_delay": "3s"}) as result:
        assert result.target == "latest" and result.replay_s > 1.5
        with result.server.connect() as conn:
            check = verify_heartbeats(conn, known, None)
        assert check.ok, check
        assert check.expected == len(known) and check.newest_present is not None
        assert datetime.fromisoformat(check.newest_present) >= known[-1].at
        FIGURES["restore_latest"] = result.to_metadata()


def test_a_target_before_the_first_base_backup_is_refused(
    archive: Archive, backups: tuple[BaseBackup, BaseBackup]
) -> None:
    full, _ = backups
    with pytest.raises(PitrError, match="before the first base backup was complete") as err:
        restore_to_point(
            archive.layout, archive.base / "never", target_time=full.finished - timedelta(seconds=1)
        )
    assert full.id in str(err.value) and "choose a later target" in str(err.value)
    with pytest.raises(PitrError, match="before the first base backup"):
        restore_to_point(archive.layout, archive.base / "never", target_lsn="0/1")
    assert not (archive.base / "never").exists()


def test_a_target_after_the_archived_wal_names_the_fix(
    archive: Archive, backups: tuple[BaseBackup, BaseBackup]
) -> None:
    future = datetime.now(UTC) + timedelta(hours=1)
    with (
        pytest.raises(PitrError, match="archive ends before the target") as err,
        restored(archive, target_time=future, timeout_s=120),
    ):
        pass
    assert "choose an earlier target or 'latest'" in str(err.value)


def test_an_incremental_backup_needs_a_full_one(archive: Archive) -> None:
    empty = ArchiveLayout.at(archive.base / "empty-archive")
    with pytest.raises(PitrError, match="take a full one first"):
        take_base_backup(empty, archive.url, kind="incremental")


def test_a_killed_base_backup_leaves_nothing_that_looks_complete(
    archive: Archive, backups: tuple[BaseBackup, BaseBackup]
) -> None:
    layout = archive.layout
    complete = list_backups(layout)
    code = (
        "import sys; from twinme_ops.backups.pitr.basebackup import take_base_backup; "
        "from twinme_ops.backups.pitr.layout import ArchiveLayout; "
        "take_base_backup(ArchiveLayout.at(sys.argv[1]), sys.argv[2], max_rate='32k')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(layout.root), archive.url],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(layout.base_dir.glob(f"{TMP_PREFIX}*/data/base")):
            assert proc.poll() is None, "the backup ended before it could be killed"
            assert time.monotonic() < deadline, "the backup never started writing"
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    leftovers = [p.name for p in layout.base_dir.iterdir() if p.name.startswith(TMP_PREFIX)]
    assert len(leftovers) == 1
    assert list_backups(layout) == complete  # the killed one is not a backup
    assert not (layout.base_dir / leftovers[0] / "label.json").exists()
    assert sweep_partial_backups(layout) == leftovers
    assert not [p for p in layout.base_dir.iterdir() if p.name.startswith(TMP_PREFIX)]
