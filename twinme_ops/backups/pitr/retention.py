"""Retention of the WAL archive (local engine): which base backups and WAL files to keep.

The promise is a *recovery window* (30 days by default): any second of the last N days can be
restored. A restore to the window's first second starts from the newest base backup that was
complete before it (the *anchor*), so the plan keeps (:func:`plan_wal_retention`, pure):

1. the anchor (the newest base backup whose chain is whole and which finished at or before
   ``now - window``), every base backup after it, and every backup their chains need: an
   incremental's full backup and the incrementals between are never deleted while a kept
   incremental depends on them;
2. the chains the newest passing point-in-time drill restored from (``drill_record.py``), even
   outside the window, and everything after them: the archive stays one restorable range, from
   the oldest kept backup to now;
3. every WAL file from the oldest kept backup's start LSN on. WAL is ordered by LSN across
   timelines, and a restore replays from its backup's start LSN up, so a segment that ends at or
   before the smallest start LSN of the kept backups is needed by none of them. A timeline's
   ``.history`` file goes only when its timeline is older than every kept backup's; the newest
   ``.partial`` (the segment the receiver is writing) is never deleted.

With no backup finished before the window start (the archive is younger than the window) every
backup is kept; without a drill record the window alone decides, and the report says "no passing
point-in-time drill recorded". Carrying the plan out (crash-safe, oldest first) is
``retention_apply.py``'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from twinme_ops.backups.pitr.basebackup import BaseBackup
from twinme_ops.backups.pitr.drill_record import DrillRecord
from twinme_ops.backups.pitr.layout import (
    HISTORY_RE,
    PARTIAL_SUFFIX,
    SEGMENT_RE,
    ArchiveLayout,
    format_lsn,
    parse_lsn,
    segment_start,
)

DEFAULT_RECOVERY_WINDOW_DAYS = 30
WalKind = Literal["segment", "partial", "history"]


@dataclass(frozen=True)
class WalFile:
    """One file of ``wal/``: a completed segment, a ``.partial`` one, or a ``.history`` file."""

    path: Path
    kind: WalKind
    timeline: int
    start: int  # the first LSN it holds (0 for a history file)
    size: int  # bytes on disk

    @property
    def name(self) -> str:
        return self.path.name


def wal_files(layout: ArchiveLayout, segment_size: int) -> list[WalFile]:
    """Every segment, partial segment and history file in ``wal/`` (other files are ignored)."""
    out: list[WalFile] = []
    if not layout.wal_dir.is_dir():
        return out
    for path in layout.wal_dir.iterdir():
        name = path.name
        try:
            size = path.stat().st_size
        except FileNotFoundError:  # the receiver renamed its .partial meanwhile
            continue
        if SEGMENT_RE.match(name) or (
            name.endswith(PARTIAL_SUFFIX) and SEGMENT_RE.match(name.removesuffix(PARTIAL_SUFFIX))
        ):
            tli, start = segment_start(name, segment_size)
            kind: WalKind = "partial" if name.endswith(PARTIAL_SUFFIX) else "segment"
            out.append(WalFile(path, kind, tli, start, size))
        elif HISTORY_RE.match(name):
            out.append(WalFile(path, "history", int(name[:8], 16), 0, size))
    return sorted(out, key=lambda f: (f.kind == "history", f.start, f.timeline, f.name))


@dataclass
class BackupDecision:
    """What retention does with one base backup, and why."""

    backup: BaseBackup
    action: Literal["keep", "delete"]
    reasons: list[str]

    def explain(self) -> str:
        return f"{self.backup.id} ({self.backup.kind}): {self.action} ({'; '.join(self.reasons)})"


@dataclass
class WalRetentionPlan:
    """Every decision of one retention run, before anything is deleted."""

    now: datetime
    window_days: int
    decisions: list[BackupDecision]  # oldest first
    anchor: str | None
    drill: DrillRecord | None
    notes: list[str] = field(default_factory=list)
    cutoff_lsn: int | None = None  # WAL ending at or before it goes
    wal_delete: list[WalFile] = field(default_factory=list)  # in deletion order
    wal_keep: list[WalFile] = field(default_factory=list)

    @property
    def window_start(self) -> datetime:
        return self.now - timedelta(days=self.window_days)

    @property
    def kept(self) -> list[BaseBackup]:
        return [d.backup for d in self.decisions if d.action == "keep"]

    @property
    def delete_order(self) -> list[BaseBackup]:
        """The backups to delete, oldest chain first and, within a chain, each incremental
        before what it depends on: at every moment each remaining backup's chain is whole."""
        doomed = [d.backup for d in self.decisions if d.action == "delete"]
        return sorted(doomed, key=lambda b: (b.chain[0] if b.chain else b.id, -len(b.chain), b.id))

    @property
    def oldest_restorable(self) -> BaseBackup | None:
        """The oldest kept backup whose chain is whole: the archive's first restorable point."""
        kept_ids = {b.id for b in self.kept}
        for backup in self.kept:
            if all(i in kept_ids for i in backup.chain):
                return backup
        return None

    @property
    def window_covered(self) -> bool:
        oldest = self.oldest_restorable
        return oldest is not None and oldest.finished <= self.window_start


def plan_wal_retention(
    backups: list[BaseBackup],
    wal: list[WalFile],
    *,
    window_days: int,
    now: datetime,
    segment_size: int,
    drill: DrillRecord | None = None,
    drill_note: str = "",
) -> WalRetentionPlan:
    """Decide, for every base backup and WAL file, keep or delete, with the reasons.

    Pure. ``backups`` oldest first (``list_backups``), ``now`` timezone-aware (label times are
    the source server's clock). See the module docstring for the rules.
    """
    if window_days < 1:
        raise ValueError(f"the recovery window must be at least 1 day, got {window_days}")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware, e.g. datetime.now(UTC)")
    plan = WalRetentionPlan(now, window_days, [], None, drill)
    if drill is None:
        plan.notes.append(drill_note or "no passing point-in-time drill recorded")
    if not backups:
        plan.notes.append("no base backup in the archive: nothing is deleted")
        plan.wal_keep = list(wal)
        return plan
    start = plan.window_start
    index = {b.id: i for i, b in enumerate(backups)}

    def whole(b: BaseBackup) -> bool:
        return all(i in index for i in b.chain)

    reasons: dict[str, list[str]] = {b.id: [] for b in backups}
    anchor = next((b for b in reversed(backups) if b.finished <= start and whole(b)), None)
    first = len(backups)
    if anchor is None:
        first = 0
        plan.notes.append(
            f"no restorable base backup finished before the window start ({start.isoformat()}): "
            "every backup is kept"
        )
    else:
        plan.anchor = anchor.id
        first = index[anchor.id]
        reasons[anchor.id].append(
            f"newest backup finished before the {window_days}-day window began "
            f"({start.isoformat()}): restores to the window's first seconds start from it"
        )
    if drill is not None:
        present = [i for i in drill.protected if i in index]
        gone = [i for i in drill.protected if i not in index]
        if gone:
            plan.notes.append(
                f"the newest passing drill ({drill.passed_at}) restored from {', '.join(gone)}, "
                "no longer in the archive"
            )
        for backup_id in present:
            reasons[backup_id].append(
                f"restored by the newest passing point-in-time drill ({drill.passed_at})"
            )
        if present:
            first = min(first, *(index[i] for i in present))
    keep = {b.id for b in backups[first:]}
    for backup in backups[first:]:
        if not reasons[backup.id]:
            if backup.finished > start:
                reasons[backup.id].append(f"finished inside the {window_days}-day window")
            else:
                reasons[backup.id].append(
                    "after the drill's backup: the archive stays one restorable range"
                )
        if not whole(backup):
            missing = [i for i in backup.chain if i not in index]
            reasons[backup.id].append(f"its chain is broken ({', '.join(missing)} gone)")
        for dependency in backup.chain[:-1]:
            if dependency in index and dependency not in keep:
                keep.add(dependency)
                reasons[dependency].append(f"kept backup {backup.id} is an incremental on it")
    for backup in backups:
        if backup.id in keep:
            plan.decisions.append(BackupDecision(backup, "keep", reasons[backup.id]))
        else:
            age = (now - backup.finished).total_seconds() / 86400
            why = f"finished {age:.1f} days ago, before " + (
                f"the window's anchor {anchor.id}" if anchor is not None else "the kept backups"
            )
            plan.decisions.append(BackupDecision(backup, "delete", [why]))
    _plan_wal(plan, wal, segment_size)
    return plan


def _plan_wal(plan: WalRetentionPlan, wal: list[WalFile], segment_size: int) -> None:
    kept = plan.kept
    cutoff = min(parse_lsn(b.start_lsn) for b in kept)
    oldest_timeline = min(b.timeline for b in kept)
    plan.cutoff_lsn = cutoff
    partials = [f for f in wal if f.kind == "partial"]
    current = max(partials, key=lambda f: (f.timeline, f.start)) if partials else None
    for f in wal:
        if f.kind == "history":
            doomed = f.timeline < oldest_timeline
        else:
            doomed = f.start + segment_size <= cutoff and f is not current
        (plan.wal_delete if doomed else plan.wal_keep).append(f)
    if plan.wal_delete:
        plan.notes.append(
            f"WAL before {format_lsn(cutoff)} (the oldest kept backup's start) is needed by no "
            "kept backup"
        )
