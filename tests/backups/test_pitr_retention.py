"""WAL archive retention on a real archive: PostgreSQL 18, pg_receivewal, pg_basebackup (issue 14).

One source per module, archived by a --synchronous pg_receivewal, with six real base backups and
a WAL switch between each: F1, I1 (incremental on F1), F2, I2 (on F2), I3 (on I2), F3. After
each backup a row named after it is committed and the LSN just after it noted: restores stop
there (``target_lsn``, not inclusive), and the rows they bring back say which point was reached.

**40 days of history, simulated.** Retention reads time only from each backup's ``label.json``
(``finished_at``, the server's clock when the backup ended). Each test works on a copy of the
archive (hard links: nothing is copied, and the original is never changed) whose labels are
rewritten so the backups finished 40, 37, 33, 31, 10 and 1 day(s) ago; LSNs, files and WAL stay
real. With the default 30-day window, I2 is the newest backup finished before the window began
(its anchor), so F1 and I1 and the WAL before F2's start go. Restores then use LSN targets, which
``restore_to_point`` matches against the labels' LSNs, not their rewritten times: the point just
after I2, the oldest restorable point, older than any second inside the window.
"""

from __future__ import annotations

import json
import os
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
from typing import Any

import dagster as dg
import pytest
import yaml

from tests.support.list_log import ListLog
from tests.support.pitr_helpers import ArchivedSource, archived_source
from twinme_ops.backups.pitr.archive import WalArchive
from twinme_ops.backups.pitr.basebackup import LABEL, BaseBackup, chain_of, list_backups
from twinme_ops.backups.pitr.drill_record import DrillRecord, write_drill_record
from twinme_ops.backups.pitr.layout import (
    ArchiveLayout,
    PitrError,
    parse_lsn,
    segment_start,
    user_ids,
)
from twinme_ops.backups.pitr.lock import LOCK_FILE, archive_lock
from twinme_ops.backups.pitr.receiver import stop_receiver, wait_for_flush
from twinme_ops.backups.pitr.restore import restore_to_point
from twinme_ops.backups.pitr.retention_apply import TRASH_PREFIX, run_wal_retention
from twinme_ops.backups.pitr.walcheck import segment_size
from twinme_ops.defs.backups.wal_retention import WalRetentionConfig, wal_archive_retention
from twinme_ops.scratch.local import write_json_atomic

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "run_config" / "retention_job.yaml"
NAMES = ("F1", "I1", "F2", "I2", "I3", "F3")
AGES_DAYS = {"F1": 40, "I1": 37, "F2": 33, "I2": 31, "I3": 10, "F3": 1}
FIGURES: dict[str, object] = {}


@dataclass
class History:
    src: ArchivedSource
    backups: dict[str, BaseBackup]  # by name
    after: dict[str, str]  # name -> the LSN just after the row committed after that backup

    def ids(self, *names: str) -> list[str]:
        return [self.backups[n].id for n in names]


@pytest.fixture(scope="module")
def history(server_tmp_root: Path) -> Iterator[History]:
    from twinme_ops.backups.pitr.basebackup import take_base_backup

    with archived_source(server_tmp_root) as src:
        url = src.source.url()
        with src.source.connect() as conn:
            conn.execute("CREATE TABLE marks (id serial PRIMARY KEY, name text)")
        backups: dict[str, BaseBackup] = {}
        after: dict[str, str] = {}
        for name in NAMES:
            if name == "F1":
                backup = src.full
            else:
                kind = "full" if name.startswith("F") else "incremental"
                backup = take_base_backup(src.layout, url, kind=kind)  # on the newest one
            backups[name] = backup
            with src.source.connect() as conn:
                conn.execute("INSERT INTO marks (name) VALUES (%s)", (name,))
                after[name] = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0]
                conn.execute("SELECT pg_switch_wal()")
                wait_for_flush(conn, timeout_s=30)
        assert [b.chain for b in backups.values()] == [
            [backups["F1"].id],
            [backups["F1"].id, backups["I1"].id],
            [backups["F2"].id],
            [backups["F2"].id, backups["I2"].id],
            [backups["F2"].id, backups["I2"].id, backups["I3"].id],
            [backups["F3"].id],
        ]
        with src.source.connect() as conn:  # WAL in the next segment: the receiver's .partial
            conn.execute("INSERT INTO marks (name) VALUES ('tail')")
            wait_for_flush(conn, timeout_s=30)
        stop_receiver(src.layout)  # the archive stays as it is, its .partial too
        assert src.layout.partial_files()
        yield History(src, backups, after)
        print("\nWAL retention figures:", FIGURES)


def _copy(history: History, *, backdate: bool = True) -> ArchiveLayout:
    """A hard-linked copy of the archive, its labels rewritten to 40 days of history."""
    src = history.src.layout
    copy = ArchiveLayout.at(Path(tempfile.mkdtemp(prefix="retention-", dir=history.src.base)))
    copy.root.rmdir()
    shutil.copytree(
        src.root,
        copy.root,
        copy_function=os.link,
        ignore=shutil.ignore_patterns("receiver", "heartbeat", ".archive.lock"),
    )
    if copy.run_as:  # the folders are new and ours: the tools' user must read them
        uid, gid = user_ids(copy.run_as)
        for path in [copy.root, *(p for p in copy.root.rglob("*") if p.is_dir())]:
            os.chown(path, uid, gid)
    if backdate:
        now = datetime.now(UTC)
        names = {b.id: name for name, b in history.backups.items()}
        for backup in list_backups(copy):
            finished = now - timedelta(days=AGES_DAYS[names[backup.id]])
            label = json.loads((backup.path / LABEL).read_text())
            label["finished_at"] = finished.isoformat()
            label["started_at"] = (finished - timedelta(seconds=backup.seconds)).isoformat()
            write_json_atomic(backup.path / LABEL, label)  # a new file: the original keeps its own
    return copy


@contextmanager
def _restored(history: History, layout: ArchiveLayout, after: str) -> Iterator[list[str]]:
    """Restore ``layout`` to just after the row committed after backup ``after``; the rows."""
    where = Path(tempfile.mkdtemp(prefix="restore-", dir=history.src.base))
    where.chmod(0o755)
    restore = None
    try:
        restore = restore_to_point(
            layout, where / "data", target_lsn=history.after[after], inclusive=False
        )
        FIGURES[f"restore_after_{after}_s"] = restore.total_s
        with restore.server.connect() as conn:
            rows = [r[0] for r in conn.execute("SELECT name FROM marks ORDER BY id").fetchall()]
        yield rows
    finally:
        if restore is not None:
            restore.server.stop(mode="immediate")
        shutil.rmtree(where, ignore_errors=True)


def _wal_names(layout: ArchiveLayout) -> set[str]:
    return {p.name for p in layout.wal_dir.iterdir()}


def _below(layout: ArchiveLayout, lsn: str) -> set[str]:
    """The completed segments of ``layout`` that end at or before ``lsn``."""
    size = segment_size(layout)
    return {
        p.name
        for p in layout.segment_files()
        if segment_start(p.name, size)[1] + size <= parse_lsn(lsn)
    }


def _assert_restorable(layout: ArchiveLayout) -> list[str]:
    """Every listed backup's chain is whole (no half-deleted backup is ever listed)."""
    listed = list_backups(layout)
    for backup in listed:
        chain_of(layout, backup)  # raises when a member is gone
    return [b.id for b in listed]


def _materialize(layout: ArchiveLayout, **config: Any) -> tuple[dg.ExecuteInProcessResult, dict]:
    result = dg.materialize(
        [wal_archive_retention],
        resources={"wal_archive": WalArchive(engine="local", root=str(layout.root))},
        run_config={"ops": {"wal_archive_retention": {"config": config}}},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    meta: dict[str, Any] = {}
    if result.success:
        [event] = result.get_asset_materialization_events()
        meta = {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}
    return result, meta


def test_old_chains_and_their_wal_go_and_the_window_still_restores(history: History) -> None:
    layout = _copy(history)
    f2 = history.backups["F2"]
    doomed_wal = _below(layout, f2.start_lsn)
    partial = [p.name for p in layout.partial_files()]
    assert doomed_wal and partial, (doomed_wal, partial)
    began = time.monotonic()
    result, meta = _materialize(layout)
    FIGURES["retention_s"] = round(time.monotonic() - began, 3)
    assert result.success
    assert _assert_restorable(layout) == history.ids("F2", "I2", "I3", "F3")
    # what went: the two old chains and every segment before F2's start; the rest is untouched
    assert not _wal_names(layout) & doomed_wal
    assert _wal_names(layout) == _wal_names(history.src.layout) - doomed_wal
    assert set(partial) <= _wal_names(layout)  # the receiver's segment
    assert not list(layout.base_dir.glob(f"{TRASH_PREFIX}*"))
    assert meta["base_backups_deleted"] == 2 and meta["base_backups_kept"] == 4
    assert meta["wal_files_deleted"] == len(doomed_wal) and meta["wal_bytes_deleted"] > 0
    assert meta["anchor_backup"] == history.backups["I2"].id
    assert meta["oldest_restorable_backup"] == f2.id and meta["window_covered"] is True
    assert meta["wal_cutoff_lsn"] == f2.start_lsn
    assert "no passing point-in-time drill recorded" in str(meta["notes"])
    assert "kept backup" in meta["decisions"] and "**delete**" in meta["decisions"]
    FIGURES["deleted"] = {k: meta[k] for k in ("base_backups_deleted", "wal_files_deleted")}
    # the oldest restorable point: the anchor's chain (F2 + I2) and the WAL after it
    with _restored(history, layout, "I2") as rows:
        assert rows == ["F1", "I1", "F2", "I2"]
    # and the time before it is really gone
    with pytest.raises(PitrError, match="before the first base backup"):
        restore_to_point(layout, layout.root / "never", target_lsn=history.after["I1"])
    # a second run finds nothing more to delete
    result, meta = _materialize(layout)
    assert result.success and meta["base_backups_deleted"] == meta["wal_files_deleted"] == 0


def test_the_drills_chain_is_kept_even_outside_the_window(history: History) -> None:
    layout = _copy(history)
    f1, i1 = history.backups["F1"], history.backups["I1"]
    write_drill_record(
        layout,
        DrillRecord(
            passed_at=datetime.now(UTC).isoformat(),
            target="(37 days ago)",
            backup=i1.id,
            chain=[f1.id, i1.id],
            reached_lsn=history.after["I1"],
            latest_backup=history.backups["F3"].id,
            latest_chain=[history.backups["F3"].id],
        ),
    )
    before = _wal_names(layout)
    report = run_wal_retention(layout, log=ListLog())
    assert _assert_restorable(layout) == history.ids(*NAMES)
    oldest = report.plan.oldest_restorable
    assert oldest is not None and oldest.id == f1.id
    # WAL from F1's start on is kept: only what came before the first backup may go
    assert _wal_names(layout) == before - _below(history.src.layout, f1.start_lsn)
    reasons = {d.backup.id: "; ".join(d.reasons) for d in report.plan.decisions}
    assert "restored by the newest passing point-in-time drill" in reasons[i1.id]
    with _restored(history, layout, "I1") as rows:  # what the drill restored still restores
        assert rows == ["F1", "I1"]


def test_a_dry_run_deletes_nothing(history: History) -> None:
    layout = _copy(history)

    def state() -> dict[str, tuple[float, int]]:
        """Every file but the lock file (which holds no data), with its time and size."""
        return {
            str(p): (p.stat().st_mtime, p.stat().st_size)
            for p in layout.root.rglob("*")
            if p.is_file() and p.name != LOCK_FILE
        }

    before = state()
    log = ListLog()
    report = run_wal_retention(layout, dry_run=True, log=log)
    assert state() == before
    meta = report.to_metadata()
    assert meta["base_backups_to_delete"] == 2 and meta["base_backups_deleted"] == 0
    assert meta["wal_files_to_delete"] > 0 and meta["wal_files_deleted"] == 0
    assert any(line.startswith("would delete " + history.backups["I1"].id) for line in log.lines)
    # the Dagster example (a preview of both retentions) validates and deletes nothing either
    example = yaml.safe_load(EXAMPLE.read_text())["ops"]["wal_archive_retention"]["config"]
    assert example == {**WalRetentionConfig().model_dump(), "dry_run": True}
    result, meta = _materialize(layout, **example)
    assert result.success and meta["dry_run"] is True and meta["base_backups_to_delete"] == 2
    assert state() == before


_KILLED = """
import sys, time
from twinme_ops.backups.pitr.layout import ArchiveLayout
from twinme_ops.backups.pitr.retention_apply import run_wal_retention

class PauseAt:
    '''Stops the run at its first log line containing the marker, until it is killed.'''
    def debug(self, msg): pass
    def info(self, msg):
        if sys.argv[2] in msg:
            print("PAUSED", flush=True)
            time.sleep(600)
    warning = info

run_wal_retention(ArchiveLayout.at(sys.argv[1]), log=PauseAt(), progress_every=1)
print("FINISHED", flush=True)
"""


@pytest.mark.parametrize(
    ("marker", "listed_after_kill"),
    [
        # I1 moved aside (F1, its full backup, not yet): its chain is not listed half-deleted
        ("moved aside", ("F1", "F2", "I2", "I3", "F3")),
        # both old chains gone, one WAL segment deleted, the others not yet
        ("WAL: 1/", ("F2", "I2", "I3", "F3")),
    ],
    ids=["between-backups", "during-wal"],
)
def test_a_killed_retention_leaves_a_restorable_archive_and_the_next_run_finishes(
    history: History, marker: str, listed_after_kill: tuple[str, ...]
) -> None:
    layout = _copy(history)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED, str(layout.root), marker],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()  # blocks until the run pauses (or ends)
        assert line == "PAUSED", f"the run did not reach {marker!r}: {line!r}"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # kill -9, in the middle of the deletions
        proc.wait(10)
    assert _assert_restorable(layout) == history.ids(*listed_after_kill)
    doomed = sorted(_below(history.src.layout, history.backups["F2"].start_lsn))
    gone = sorted(set(doomed) - _wal_names(layout))
    # WAL goes oldest first, and only after the base backups: a prefix, here of one segment
    assert gone == doomed[: 1 if marker.startswith("WAL") else 0]
    with _restored(history, layout, "I2") as rows:
        assert rows == ["F1", "I1", "F2", "I2"]
    log = ListLog()
    report = run_wal_retention(layout, log=log)  # the kill released the lock with the process
    assert not report.failures
    if marker == "moved aside":
        assert report.swept == [f"{TRASH_PREFIX}{history.backups['I1'].id}"]
        assert any("finished the deletions of a killed retention run" in x for x in log.lines)
    assert _assert_restorable(layout) == history.ids("F2", "I2", "I3", "F3")
    assert not list(layout.base_dir.glob(f"{TRASH_PREFIX}*"))
    assert not _wal_names(layout) & _below(history.src.layout, history.backups["F2"].start_lsn)


def test_retention_waits_for_a_restore_reading_the_archive(history: History) -> None:
    layout = _copy(history)
    before = _assert_restorable(layout)
    with archive_lock(layout, exclusive=False, timeout_s=5, purpose="test restore"):
        with pytest.raises(PitrError, match="busy for 1 s.*Fix: run retention again") as err:
            run_wal_retention(layout, lock_timeout_s=1.0)
        # readers share the lock: a dry run still reports
        assert run_wal_retention(layout, dry_run=True, lock_timeout_s=1.0).plan.anchor
    assert "restore or the point-in-time drill" in str(err.value)
    assert _assert_restorable(layout) == before
