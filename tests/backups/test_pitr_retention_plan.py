"""The WAL archive's retention rules, on labels and file names alone (issue 14).

The plan is pure (``backups/pitr/retention.py``): these tests give it base backups (as their
labels describe them) and WAL file names, and check what it keeps, deletes and says. The same
rules run against real PostgreSQL archives in ``test_pitr_retention.py``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from twinme_ops.backups.pitr.basebackup import BaseBackup
from twinme_ops.backups.pitr.cnpg_retention import judge_policy, policy_days
from twinme_ops.backups.pitr.drill_record import (
    DRILL_RECORD,
    DrillRecord,
    read_drill_record,
    write_drill_record,
)
from twinme_ops.backups.pitr.layout import ArchiveLayout, format_lsn, segment_name
from twinme_ops.backups.pitr.retention import WalFile, WalRetentionPlan, plan_wal_retention

NOW = datetime(2026, 9, 30, 5, 0, tzinfo=UTC)
SEG = 16 << 20


def backup(
    bid: str, chain: list[str], days_ago: float, start_seg: int, *, timeline: int = 1
) -> BaseBackup:
    """A backup that started at segment ``start_seg`` and ended in the next one."""
    finished = NOW - timedelta(days=days_ago)
    return BaseBackup(
        id=bid,
        kind="full" if len(chain) == 1 else "incremental",
        parent=chain[-2] if len(chain) > 1 else None,
        chain=chain,
        start_lsn=format_lsn(start_seg * SEG + 40),
        end_lsn=format_lsn((start_seg + 1) * SEG + 100),
        timeline=timeline,
        started_at=(finished - timedelta(minutes=5)).isoformat(),
        finished_at=finished.isoformat(),
        system_identifier="7400000000000000001",
        bytes=1000,
        seconds=300.0,
        verified=True,
        path=Path("/archive/base") / bid,
    )


def segments(
    first: int, last: int, *, timeline: int = 1, partial: int | None = None
) -> list[WalFile]:
    """Completed segments ``first..last`` and, if given, the ``.partial`` segment ``partial``."""
    out = [
        WalFile(Path(segment_name(timeline, n * SEG)), "segment", timeline, n * SEG, SEG)
        for n in range(first, last + 1)
    ]
    if partial is not None:
        name = segment_name(timeline, partial * SEG) + ".partial"
        out.append(WalFile(Path(name), "partial", timeline, partial * SEG, SEG))
    return out


# 40 days of history: two chains before the window (30 days: starts 2026-08-31 05:00)
F1 = backup("F1", ["F1"], 40, 2)
I1 = backup("I1", ["F1", "I1"], 37, 5)
F2 = backup("F2", ["F2"], 33, 8)
I2 = backup("I2", ["F2", "I2"], 31, 11)  # the anchor: newest finished before the window
I3 = backup("I3", ["F2", "I2", "I3"], 10, 14)
F3 = backup("F3", ["F3"], 1, 17)
HISTORY = [F1, I1, F2, I2, I3, F3]


def plan(
    backups: list[BaseBackup], wal: list[WalFile], drill: DrillRecord | None = None
) -> WalRetentionPlan:
    return plan_wal_retention(backups, wal, window_days=30, now=NOW, segment_size=SEG, drill=drill)


def kept_ids(p: WalRetentionPlan) -> list[str]:
    return [b.id for b in p.kept]


def test_old_chains_go_and_an_incremental_keeps_its_full_backup() -> None:
    p = plan(HISTORY, segments(2, 19, partial=20))
    assert p.anchor == "I2"
    assert kept_ids(p) == ["F2", "I2", "I3", "F3"]
    # I2 finished before the window, F2 even earlier: both needed to restore its first second
    reasons = {d.backup.id: "; ".join(d.reasons) for d in p.decisions}
    assert "kept backup I2 is an incremental on it" in reasons["F2"]
    assert "newest backup finished before the 30-day window began" in reasons["I2"]
    assert "finished inside the 30-day window" in reasons["F3"]
    # incrementals before the full they depend on, the oldest chain first
    assert [b.id for b in p.delete_order] == ["I1", "F1"]
    assert p.oldest_restorable is F2 and p.window_covered
    # WAL: everything that ends at or before F2's start goes, the .partial stays
    assert p.cutoff_lsn == 8 * SEG + 40
    assert [f.start // SEG for f in p.wal_delete] == list(range(2, 8))
    assert {f.start // SEG for f in p.wal_keep} == set(range(8, 21))
    assert "no passing point-in-time drill recorded" in p.notes


def test_the_newest_passing_drills_chain_is_kept_outside_the_window() -> None:
    drill = DrillRecord(
        passed_at=(NOW - timedelta(hours=1)).isoformat(),
        target=(NOW - timedelta(days=36)).isoformat(),
        backup="I1",
        chain=["F1", "I1"],
        reached_lsn=format_lsn(6 * SEG),
        latest_backup="F3",
        latest_chain=["F3"],
    )
    p = plan(HISTORY, segments(2, 19), drill=drill)
    assert kept_ids(p) == ["F1", "I1", "F2", "I2", "I3", "F3"]
    reasons = {d.backup.id: "; ".join(d.reasons) for d in p.decisions}
    assert "restored by the newest passing point-in-time drill" in reasons["I1"]
    assert "restored by the newest passing point-in-time drill" in reasons["F1"]
    assert "the archive stays one restorable range" in reasons["F2"]
    assert p.wal_delete == [] and p.cutoff_lsn == 2 * SEG + 40
    # a drill record naming a backup that is gone protects nothing, and says so
    gone = DrillRecord(**{**drill.__dict__, "chain": ["F0"], "latest_chain": []})
    p = plan(HISTORY, segments(2, 19), drill=gone)
    assert kept_ids(p) == ["F2", "I2", "I3", "F3"]
    assert any("F0, no longer in the archive" in n for n in p.notes)


def test_a_branching_chain_is_deleted_leaves_first() -> None:
    """Incrementals on a parent that is not the newest make a tree: every dependent goes
    before what it depends on, so each remaining backup always has its whole chain."""
    a = backup("A", ["A"], 50, 2)
    b = backup("B", ["A", "B"], 49, 3)
    c = backup("C", ["A", "C"], 48, 4)  # on A, not on B
    d = backup("D", ["A", "C", "D"], 47, 5)
    e = backup("E", ["E"], 45, 6)  # the anchor
    p = plan([a, b, c, d, e], segments(2, 8))
    order = [x.id for x in p.delete_order]
    assert set(order) == {"A", "B", "C", "D"} and order[-1] == "A"
    assert order.index("D") < order.index("C")
    assert kept_ids(p) == ["E"]


def test_an_archive_younger_than_the_window_keeps_every_backup() -> None:
    young = [backup("F1", ["F1"], 20, 4), backup("I1", ["F1", "I1"], 5, 6)]
    p = plan(young, segments(1, 8))
    assert kept_ids(p) == ["F1", "I1"] and p.anchor is None and not p.window_covered
    assert any("no restorable base backup finished before the window start" in n for n in p.notes)
    # the WAL before the first base backup restores nothing: it goes
    assert [f.start // SEG for f in p.wal_delete] == [1, 2, 3]


def test_a_backup_with_a_broken_chain_is_never_the_anchor() -> None:
    broken = backup("I9", ["F9", "I9"], 31, 11)  # its full backup F9 is gone
    p = plan([F2, broken, F3], segments(8, 19))
    assert p.anchor == "F2"
    assert kept_ids(p) == ["F2", "I9", "F3"]
    reasons = {d.backup.id: "; ".join(d.reasons) for d in p.decisions}
    assert "its chain is broken (F9 gone)" in reasons["I9"]


def test_history_files_and_older_timelines() -> None:
    """After a recovery the source runs on timeline 2. A timeline's history file goes only when
    every kept backup is on a later timeline; segments are judged by LSN whatever their
    timeline; the newest .partial stays even when its LSN is old."""
    old = backup("F1", ["F1"], 40, 2)
    anchor = backup("F2", ["F2"], 31, 9, timeline=2)
    newer = backup("F3", ["F3"], 3, 12, timeline=3)
    wal = [
        *segments(2, 10),
        *segments(9, 11, timeline=2, partial=None),
        WalFile(Path("00000002.history"), "history", 2, 0, 42),
        WalFile(Path("00000003.history"), "history", 3, 0, 84),
        *segments(12, 12, timeline=3, partial=13),
        # a .partial left on timeline 1 at the switch: old, not the receiver's current one
        WalFile(Path(segment_name(1, 3 * SEG) + ".partial"), "partial", 1, 3 * SEG, SEG),
    ]
    p = plan([old, anchor, newer], wal)
    assert kept_ids(p) == ["F2", "F3"]
    deleted = {f.name for f in p.wal_delete}
    assert deleted == {segment_name(1, n * SEG) for n in range(2, 9)} | {
        segment_name(1, 3 * SEG) + ".partial"
    }
    assert "00000002.history" not in deleted  # F2 is on timeline 2
    # with F2 gone too (a 2-day window), timeline 2's history is not needed any more
    short = plan_wal_retention([old, anchor, newer], wal, window_days=2, now=NOW, segment_size=SEG)
    assert kept_ids(short) == ["F3"]
    assert "00000002.history" in {f.name for f in short.wal_delete}
    assert "00000003.history" not in {f.name for f in short.wal_delete}
    current = segment_name(3, 13 * SEG) + ".partial"
    assert current in {f.name for f in short.wal_keep}


def test_no_backup_deletes_nothing() -> None:
    p = plan([], segments(1, 5, partial=6))
    assert p.decisions == [] and p.wal_delete == [] and len(p.wal_keep) == 6
    assert "no base backup in the archive: nothing is deleted" in p.notes


def test_the_window_must_be_a_day_or_more() -> None:
    with pytest.raises(ValueError, match="at least 1 day"):
        plan_wal_retention(HISTORY, [], window_days=0, now=NOW, segment_size=SEG)


def test_the_drill_record_round_trip(tmp_path: Path) -> None:
    layout = ArchiveLayout(tmp_path)
    record, note = read_drill_record(layout)
    assert record is None and "no passing point-in-time drill recorded" in note
    drill = DrillRecord(NOW.isoformat(), NOW.isoformat(), "I1", ["F1", "I1"], "0/6000000")
    write_drill_record(layout, drill)
    assert read_drill_record(layout) == (drill, "")
    assert drill.protected == ["F1", "I1"]
    (tmp_path / DRILL_RECORD).write_text('{"passed_at": "yesterday", "chain": ["F1"]}')
    record, note = read_drill_record(layout)
    assert record is None and "malformed" in note


@pytest.mark.parametrize(
    ("policy", "verdict"),
    [("30d", "matches"), ("4w", "shorter"), ("1m", "longer"), ("", "missing"), ("30", "invalid")],
)
def test_the_object_stores_retention_policy_is_judged_against_the_window(
    policy: str, verdict: str
) -> None:
    got, message = judge_policy(policy, 30)
    assert got == verdict
    if verdict in ("shorter", "missing", "invalid"):
        assert 'Fix: set spec.retentionPolicy: "30d"' in message
    assert policy_days("1m") == 31 and policy_days("2w") == 14 and policy_days("0d") is None


def test_the_window_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from twinme_ops.defs.resources import wal_archive_resource

    assert wal_archive_resource("local", "/tmp/h").recovery_window_days == 30
    monkeypatch.setenv("TWINME_WAL_RECOVERY_WINDOW_DAYS", "45")
    assert wal_archive_resource("local", "/tmp/h").recovery_window_days == 45
    monkeypatch.setenv("TWINME_WAL_RECOVERY_WINDOW_DAYS", "two weeks")
    with pytest.raises(ValueError, match="TWINME_WAL_RECOVERY_WINDOW_DAYS.*Fix:"):
        wal_archive_resource("local", "/tmp/h")
