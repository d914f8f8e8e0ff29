"""Restore the local archive to a point in time onto a scratch server, and measure it.

1. Choose the newest base backup (and its chain) that was complete before the target.
2. ``pg_combinebackup`` the chain into a fresh data directory (a full backup alone is copied the
   same way).
3. Recover with a ``restore_command`` that copies from the archive's ``wal/`` (falling back to
   ``<segment>.partial``, the segment pg_receivewal is still writing: without it a target whose
   WAL is only in the ``.partial`` is never reached), archiving off, and wait until promoted:
   the steps both engines share (:mod:`.replay`), with a ``pg_hba.conf`` that trusts loopback
   (the source's may require passwords we do not have).

Restores hold the archive's lock shared (:mod:`.lock`): retention waits until they are done.

The caller owns the returned server (stop it) and the data directory (remove it).
"""

from __future__ import annotations

import os
import shlex
import time
from datetime import datetime
from pathlib import Path

from twinme_ops.backups.pitr.basebackup import BaseBackup, chain_of, list_backups
from twinme_ops.backups.pitr.layout import (
    ArchiveLayout,
    PitrError,
    parse_lsn,
    pitr_error,
    run_tool,
    tool_failure,
    user_ids,
)
from twinme_ops.backups.pitr.lock import archive_lock
from twinme_ops.backups.pitr.replay import (
    RESTORED_SETTINGS,
    PitrRestore,
    backups_before,
    conf_value,
    describe_target,
    fix_from_log,
    fresh_data_dir,
    measured,
    start_and_replay,
    write_recovery_settings,
)
from twinme_ops.backups.pitr.walcheck import wal_gap

__all__ = [
    "RESTORED_SETTINGS",
    "PitrRestore",
    "choose_backup",
    "describe_target",
    "restorable_chain",
    "restore_command",
    "restore_to_point",
]
RESTORED_HBA = (
    "# twinme_ops point-in-time restore: a scratch copy on loopback\n"
    "local   all   all                  trust\n"
    "host    all   all   127.0.0.1/32   trust\n"
)
# what to do when the archive ends before the target: get a later commit flushed
BEHIND_FIX = (
    "wait until the receiver has flushed a later commit (write a heartbeat, wait_for_flush)"
)


def choose_backup(
    layout: ArchiveLayout, target_time: datetime | None = None, target_lsn: str | None = None
) -> list[BaseBackup]:
    """The chain (full first) of the newest backup complete before the target."""
    fits = backups_before(
        list_backups(layout),
        target_time,
        target_lsn,
        where=str(layout.base_dir),
        empty_fix="take one (take_base_backup) while the WAL receiver runs",
    )
    errors: list[str] = []
    for backup in reversed(fits):
        try:
            return chain_of(layout, backup)
        except PitrError as exc:
            errors.append(str(exc))
    raise pitr_error("; ".join(errors))


def restorable_chain(
    layout: ArchiveLayout, target_time: datetime | None = None, target_lsn: str | None = None
) -> list[BaseBackup]:
    """:func:`choose_backup`'s chain, refused when the archive has a hole after it."""
    chain = choose_backup(layout, target_time, target_lsn)
    newest = chain[-1]
    gap = wal_gap(layout, newest)
    if gap is not None and (target_lsn is None or parse_lsn(target_lsn) >= parse_lsn(gap[0])):
        raise pitr_error(
            f"the WAL archive has a gap after base backup {newest.id}: {gap[1]}. Nothing after "
            f"{gap[0]} can be restored from this backup. Fix: take a new full base backup (and "
            "keep the receiver running: its slot keeps the WAL while it is down)"
        )
    return chain


def restore_command(layout: ArchiveLayout) -> str:
    """Copy ``%f`` from the archive, else its ``.partial`` (the segment still being written)."""
    wal = shlex.quote(str(layout.wal_dir))
    return (
        f'cp {wal}/%f "%p" 2>/dev/null || cp {wal}/%f.partial "%p" 2>/dev/null '
        f'|| cp {wal}/%f "%p"'  # renamed from .partial meanwhile; its error goes to the log
    )


def restore_to_point(
    layout: ArchiveLayout,
    data_dir: Path,
    *,
    target_time: datetime | None = None,
    target_lsn: str | None = None,
    inclusive: bool = True,
    settings: dict[str, str] | None = None,
    timeout_s: float = 600.0,
) -> PitrRestore:
    """Restore the archive at ``layout`` into the fresh ``data_dir`` and start it, promoted.

    No target: replay everything the archive holds (latest). ``target_time`` (timezone-aware) or
    ``target_lsn``: stop there (``inclusive``: the commit at exactly the target is kept).
    """
    if target_time is not None and target_lsn is not None:
        raise pitr_error("give target_time or target_lsn, not both")
    # shared with other restores; retention waits until the replay no longer reads the archive
    with archive_lock(layout, exclusive=False, timeout_s=timeout_s, purpose="restore"):
        return _restore(layout, data_dir, target_time, target_lsn, inclusive, settings, timeout_s)


def _trust_loopback(data_dir: Path, run_as: str | None) -> None:
    """The source's pg_hba.conf came with the copy (or, with its config outside the data
    directory, none did): the scratch copy trusts loopback like every scratch server, so that we
    connect as postgres without the source's passwords."""
    (data_dir / "pg_hba.conf").write_text(RESTORED_HBA)
    with open(data_dir / "postgresql.auto.conf", "a") as fh:
        fh.write(f"hba_file = {conf_value(str(data_dir / 'pg_hba.conf'))}\n")
    if run_as:
        os.chown(data_dir / "pg_hba.conf", *user_ids(run_as))


def _restore(
    layout: ArchiveLayout,
    data_dir: Path,
    target_time: datetime | None,
    target_lsn: str | None,
    inclusive: bool,
    settings: dict[str, str] | None,
    timeout_s: float,
) -> PitrRestore:
    target = describe_target(target_time, target_lsn)
    chain = restorable_chain(layout, target_time, target_lsn)
    newest = chain[-1]
    data_dir = fresh_data_dir(data_dir, layout.run_as)
    began = time.monotonic()
    args = ["-o", str(data_dir), "--no-sync", *(str(b.data_dir) for b in chain)]
    proc = run_tool("pg_combinebackup", args, run_as=layout.run_as)
    if proc.returncode != 0:
        raise tool_failure(
            "pg_combinebackup", proc, "check the chain with pg_verifybackup, or restore from an "
            "older full backup",
        )  # fmt: skip
    write_recovery_settings(
        data_dir,
        restore_command(layout),
        target_time=target_time,
        target_lsn=target_lsn,
        inclusive=inclusive,
        settings=settings,
        run_as=layout.run_as,
    )
    _trust_loopback(data_dir, layout.run_as)
    replayed = start_and_replay(
        data_dir,
        run_as=layout.run_as,
        timeout_s=timeout_s,
        target=target,
        diagnose=lambda log: fix_from_log(log, target, behind=BEHIND_FIX),
    )
    return measured(
        replayed,
        engine="local",
        backup=newest.id,
        chain=[b.id for b in chain],
        target=target,
        start_lsn=newest.start_lsn,
        began=began,
    )
