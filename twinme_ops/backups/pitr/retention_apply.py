"""Carrying out the WAL archive's retention plan, so that a kill at any instant leaves it usable.

:func:`run_wal_retention` takes the archive's lock exclusively (restores hold it shared:
``lock.py``), finishes what a killed run left, plans (``retention.py``), then deletes:

1. base backups, oldest chain first and, within a chain, incrementals before what they depend
   on. Each is first *renamed* to ``base/.trash-<id>`` (one atomic rename, then an fsync of
   ``base/``), and only then removed: ``list_backups`` skips dot-names, so a backup is either
   whole under its name or not listed at all, and every listed backup's chain stays whole;
2. then, only if every backup deletion succeeded, WAL files, oldest first: a kill leaves a
   shorter prefix of WAL that no kept backup needs.

A killed run's ``.trash-`` folders are removed by the next run before it plans. A dry run plans
and reports, and touches nothing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twinme_ops.backups.pitr.basebackup import list_backups
from twinme_ops.backups.pitr.drill_record import read_drill_record
from twinme_ops.backups.pitr.layout import ArchiveLayout, format_lsn
from twinme_ops.backups.pitr.lock import archive_lock
from twinme_ops.backups.pitr.retention import (
    DEFAULT_RECOVERY_WINDOW_DAYS,
    WalRetentionPlan,
    plan_wal_retention,
    wal_files,
)
from twinme_ops.backups.pitr.walcheck import segment_size
from twinme_ops.common.log import DEFAULT_LOG, Log
from twinme_ops.common.redact import redact

TRASH_PREFIX = ".trash-"
DEFAULT_LOCK_TIMEOUT_S = 1800.0


@dataclass
class WalRetentionReport:
    """What one run kept and deleted (in a dry run: would delete), and what it could not."""

    plan: WalRetentionPlan
    dry_run: bool
    deleted_backups: list[str] = field(default_factory=list)
    deleted_wal: list[str] = field(default_factory=list)
    deleted_wal_bytes: int = 0
    swept: list[str] = field(default_factory=list)  # a killed run's .trash- folders, finished
    failures: list[str] = field(default_factory=list)

    def to_metadata(self) -> dict[str, Any]:
        """Counts, bytes and the oldest restorable point, for the run's metadata."""
        plan = self.plan
        kept = plan.kept
        doomed = plan.delete_order
        oldest = plan.oldest_restorable
        return {
            "dry_run": self.dry_run,
            "recovery_window_days": plan.window_days,
            "window_start": plan.window_start.isoformat(),
            "oldest_restorable_point": oldest.finished_at if oldest else "",
            "oldest_restorable_backup": oldest.id if oldest else "",
            "window_covered": plan.window_covered,
            "anchor_backup": plan.anchor or "",
            "base_backups_kept": len(kept),
            "base_backup_bytes_kept": sum(b.bytes for b in kept),
            "base_backups_to_delete": len(doomed),
            "base_backups_deleted": len(self.deleted_backups),
            "base_backup_bytes_deleted": sum(
                b.bytes for b in doomed if b.id in self.deleted_backups
            ),
            "wal_files_kept": len(plan.wal_keep),
            "wal_bytes_kept": sum(f.size for f in plan.wal_keep),
            "wal_files_to_delete": len(plan.wal_delete),
            "wal_files_deleted": len(self.deleted_wal),
            "wal_bytes_deleted": self.deleted_wal_bytes,
            "wal_cutoff_lsn": format_lsn(plan.cutoff_lsn) if plan.cutoff_lsn is not None else "",
            "drill_passed_at": plan.drill.passed_at if plan.drill else "",
            "drill_protected": plan.drill.protected if plan.drill else [],
            "trash_removed": self.swept,
            "notes": plan.notes,
            "failures": self.failures,
        }

    def decisions_markdown(self) -> str:
        """A table of every base backup: kind, finished, action, reasons."""
        lines = ["| base backup | kind | finished | action | reasons |", "|---|---|---|---|---|"]
        for d in self.plan.decisions:
            action = d.action if d.action == "keep" else f"**{d.action}**"
            cells = [d.backup.id, d.backup.kind, d.backup.finished_at, action, "; ".join(d.reasons)]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        if not self.plan.decisions:
            lines.append("| (none) | | | | |")
        return "\n".join(lines)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sweep_trash(layout: ArchiveLayout) -> list[str]:
    """Remove the ``.trash-`` folders a killed retention left; their names."""
    if not layout.base_dir.is_dir():
        return []
    swept = []
    for path in sorted(layout.base_dir.iterdir()):
        if path.name.startswith(TRASH_PREFIX) and path.is_dir():
            shutil.rmtree(path)
            swept.append(path.name)
    return swept


def run_wal_retention(
    layout: ArchiveLayout,
    *,
    window_days: int = DEFAULT_RECOVERY_WINDOW_DAYS,
    now: datetime | None = None,
    dry_run: bool = False,
    log: Log = DEFAULT_LOG,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    progress_every: int = 500,
) -> WalRetentionReport:
    """Apply the recovery window to the archive at ``layout`` (or, ``dry_run``, only report).

    Waits up to ``lock_timeout_s`` for running restores; logs each decision, and progress every
    ``progress_every`` WAL files. A failed deletion stops the run (the report lists it) with the
    archive still restorable; the next run picks up where it stopped.
    """
    now = now or datetime.now(UTC)
    with archive_lock(
        layout, exclusive=not dry_run, timeout_s=lock_timeout_s, purpose="WAL archive retention"
    ):
        swept = [] if dry_run else sweep_trash(layout)
        if swept:
            log.warning(f"finished the deletions of a killed retention run: {', '.join(swept)}")
        drill, drill_note = read_drill_record(layout)
        size = segment_size(layout)
        plan = plan_wal_retention(
            list_backups(layout),
            wal_files(layout, size),
            window_days=window_days,
            now=now,
            segment_size=size,
            drill=drill,
            drill_note=drill_note,
        )
        report = WalRetentionReport(plan, dry_run, swept=swept)
        for note in plan.notes:
            (log.warning if note == drill_note else log.info)(f"WAL archive retention: {note}")
        for decision in plan.decisions:
            verb = "would delete" if dry_run and decision.action == "delete" else decision.action
            log.info(f"{verb} {decision.explain()}")
        if not dry_run:
            _delete(layout, report, log, progress_every)
    return report


def _delete(layout: ArchiveLayout, report: WalRetentionReport, log: Log, every: int) -> None:
    for backup in report.plan.delete_order:
        trash = layout.base_dir / f"{TRASH_PREFIX}{backup.id}"
        try:
            os.rename(backup.path, trash)
            _fsync_dir(layout.base_dir)
        except OSError as exc:
            report.failures.append(
                f"base backup {backup.id} could not be moved aside: {redact(exc)}. Fix: check "
                f"the permissions of {layout.base_dir} and run retention again"
            )
            log.warning(report.failures[-1])
            return  # nothing more: every later deletion assumes this one happened
        log.info(f"base backup {backup.id} moved aside ({trash.name}), removing it")
        report.deleted_backups.append(backup.id)
        with contextlib.suppress(OSError):  # what is left is removed by the next run
            shutil.rmtree(trash)
    doomed = report.plan.wal_delete
    if not doomed:
        return
    total = sum(f.size for f in doomed)
    log.info(f"WAL: deleting {len(doomed)} files ({total / 2**20:.1f} MiB), oldest first")
    for n, wal in enumerate(doomed, 1):
        try:
            wal.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            report.failures.append(
                f"WAL file {wal.name} could not be deleted: {redact(exc)}. Fix: check the "
                f"permissions of {layout.wal_dir} and run retention again"
            )
            log.warning(report.failures[-1])
            break
        report.deleted_wal.append(wal.name)
        report.deleted_wal_bytes += wal.size
        if n % every == 0 and n < len(doomed):
            log.info(f"WAL: {n}/{len(doomed)} files deleted")
    _fsync_dir(layout.wal_dir)
    log.info(
        f"WAL: {len(report.deleted_wal)} files deleted ({report.deleted_wal_bytes / 2**20:.1f} MiB)"
    )
