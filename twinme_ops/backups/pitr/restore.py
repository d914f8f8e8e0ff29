"""Restore to a point in time onto a scratch server, and measure it.

1. Choose the newest base backup (and its chain) that was complete before the target.
2. ``pg_combinebackup`` the chain into a fresh data directory (a full backup alone is copied the
   same way).
3. Append the recovery settings to ``postgresql.auto.conf``: a ``restore_command`` that copies from
   the archive's ``wal/`` (falling back to ``<segment>.partial``, the segment pg_receivewal is
   still writing: without it a target whose WAL is only in the ``.partial`` is never reached),
   the target, ``recovery_target_action = 'promote'``, and archiving *off* (a restored copy
   inherits ``archive_mode``/``archive_command``, and must never write into the archive, nor wait
   for the source's synchronous standby); then ``recovery.signal``, and a ``pg_hba.conf`` that
   trusts loopback (the source's may require passwords we do not have).
4. Start it on a free port and wait until ``pg_is_in_recovery()`` is false (``pg_ctl -w`` returns
   as soon as the server accepts read-only connections, long before the target).

The caller owns the returned server (stop it) and the data directory (remove it).
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twinme_ops.backups.pitr.basebackup import BaseBackup, chain_of, list_backups
from twinme_ops.backups.pitr.layout import (
    ArchiveLayout,
    PitrError,
    format_lsn,
    parse_lsn,
    pitr_error,
    run_tool,
    tool_failure,
    user_ids,
)
from twinme_ops.backups.pitr.lock import archive_lock
from twinme_ops.backups.pitr.walcheck import wal_gap
from twinme_ops.scratch.local import PG_SYSTEM_USER, LocalServerError, pid_alive
from twinme_ops.scratch.postgres import PostgresServer

# a scratch copy is thrown away: durability buys nothing, and it must never archive or wait
RESTORED_SETTINGS = {
    "archive_mode": "off",
    "archive_command": "",
    "archive_library": "",
    "synchronous_standby_names": "",
    "summarize_wal": "off",
    "primary_conninfo": "",
    "primary_slot_name": "",
    "hot_standby": "on",
    "fsync": "off",
    "recovery_target_timeline": "latest",
}


@dataclass
class PitrRestore:
    """A server restored to a point in time, and what it took."""

    server: PostgresServer
    backup: str
    chain: list[str]
    target: str
    restore_s: float
    replay_s: float
    total_s: float
    start_lsn: str
    reached_lsn: str
    reached_time: str | None  # the last replayed transaction's commit time
    wal_bytes: int
    replay_mb_s: float
    timeline: int

    def to_metadata(self) -> dict[str, Any]:
        facts = {k: v for k, v in vars(self).items() if k != "server"}
        return {**facts, "port": self.server.port, "data_dir": str(self.server.data_dir)}


RESTORED_HBA = (
    "# twinme_ops point-in-time restore: a scratch copy on loopback\n"
    "local   all   all                  trust\n"
    "host    all   all   127.0.0.1/32   trust\n"
)
# connection failures that waiting will not cure
_AUTH_FAILURES = ("authentication failed", "no pg_hba.conf entry", "does not exist")


def describe_target(target_time: datetime | None, target_lsn: str | None) -> str:
    if target_time is not None:
        return f"time {target_time.isoformat()}"
    if target_lsn is not None:
        return f"LSN {target_lsn}"
    return "latest"


def choose_backup(
    layout: ArchiveLayout, target_time: datetime | None = None, target_lsn: str | None = None
) -> list[BaseBackup]:
    """The chain (full first) of the newest backup complete before the target."""
    backups = list_backups(layout)
    if not backups:
        raise pitr_error(
            f"no complete base backup in {layout.base_dir}: nothing to restore from. "
            "Fix: take one (take_base_backup) while the WAL receiver runs"
        )
    if target_time is not None:
        if target_time.tzinfo is None:
            raise pitr_error(f"target time {target_time} has no time zone: give it one (UTC)")
        fits = [b for b in backups if b.finished <= target_time]
    elif target_lsn is not None:
        fits = [b for b in backups if parse_lsn(b.end_lsn) <= parse_lsn(target_lsn)]
    else:
        fits = backups
    if not fits:
        first = backups[0]
        raise pitr_error(
            f"the target ({describe_target(target_time, target_lsn)}) is before the first base "
            f"backup was complete ({first.id}: finished {first.finished_at}, LSN "
            f"{first.end_lsn}): no earlier state can be restored from {layout.root}. "
            "Fix: choose a later target"
        )
    errors: list[str] = []
    for backup in reversed(fits):
        try:
            return chain_of(layout, backup)
        except PitrError as exc:
            errors.append(str(exc))
    raise pitr_error("; ".join(errors))


def _conf(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def restore_command(layout: ArchiveLayout) -> str:
    """Copy ``%f`` from the archive, else its ``.partial`` (the segment still being written)."""
    wal = shlex.quote(str(layout.wal_dir))
    return (
        f'cp {wal}/%f "%p" 2>/dev/null || cp {wal}/%f.partial "%p" 2>/dev/null '
        f'|| cp {wal}/%f "%p"'  # renamed from .partial meanwhile; its error goes to the log
    )


def _write_recovery(
    layout: ArchiveLayout,
    data_dir: Path,
    target_time: datetime | None,
    target_lsn: str | None,
    inclusive: bool,
    settings: dict[str, str] | None,
) -> None:
    lines = {**RESTORED_SETTINGS, **(settings or {}), "restore_command": restore_command(layout)}
    lines["recovery_target_action"] = "promote"
    if target_time is not None:
        lines["recovery_target_time"] = target_time.astimezone(UTC).isoformat(sep=" ")
    elif target_lsn is not None:
        lines["recovery_target_lsn"] = target_lsn
    if target_time is not None or target_lsn is not None:
        lines["recovery_target_inclusive"] = "on" if inclusive else "off"
    with open(data_dir / "postgresql.auto.conf", "a") as fh:
        fh.write("\n# twinme_ops point-in-time restore: archiving off, never into the archive\n")
        fh.writelines(f"{key} = {_conf(value)}\n" for key, value in lines.items())
    (data_dir / "recovery.signal").touch()
    # the source's pg_hba.conf came with the copy (or, with its config outside the data directory,
    # none did): the scratch copy trusts loopback like every scratch server, so that we can
    # connect as postgres without the source's passwords
    (data_dir / "pg_hba.conf").write_text(RESTORED_HBA)
    with open(data_dir / "postgresql.auto.conf", "a") as fh:
        fh.write(f"hba_file = {_conf(str(data_dir / 'pg_hba.conf'))}\n")
    # the source's socket lock files and log came with the copy
    for stale in data_dir.glob(".s.PGSQL.*"):
        stale.unlink()
    (data_dir / "server.log").write_text("")
    if layout.run_as:
        uid, gid = user_ids(layout.run_as)
        for name in ("recovery.signal", "server.log", "postgresql.auto.conf", "pg_hba.conf"):
            os.chown(data_dir / name, uid, gid)


def _fix_from_log(log: str, target: str) -> str:
    text = log.lower()
    if "before configured recovery target was reached" in text:
        return (
            f"the archive ends before the target ({target}): no transaction committed after it "
            "has been archived yet. Fix: choose an earlier target or 'latest', or wait until "
            "the receiver has flushed a later commit (write a heartbeat, wait_for_flush)"
        )
    if "before consistent recovery point" in text:
        return f"the target ({target}) is inside the base backup: choose a later target"
    if "could not find redo location" in text or "could not locate required checkpoint" in text:
        return "the base backup's WAL is missing from the archive: take a new full base backup"
    return "read the server log above"


def _wait_promoted(server: PostgresServer, timeout_s: float, target: str) -> None:
    import psycopg

    deadline = time.monotonic() + timeout_s
    while True:
        # the postmaster alone: pg_ctl -w has returned, the status line says "ready" in recovery
        if not pid_alive(server.pid, "postgres"):
            log = _log(server)
            raise pitr_error(
                f"the restored server stopped during recovery. Server log (last lines):\n{log}\n"
                f"Fix: {_fix_from_log(log, target)}"
            )
        try:
            with server.connect() as conn:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    return
        except psycopg.OperationalError as exc:
            if any(failure in str(exc) for failure in _AUTH_FAILURES):
                raise pitr_error(
                    f"cannot connect to the restored server: {exc}. Fix: the restored copy "
                    "must accept the postgres role over loopback (its pg_hba.conf is replaced "
                    "by trust lines; a cluster without a postgres role needs one)"
                ) from None
        if time.monotonic() >= deadline:
            raise pitr_error(
                f"the restored server was still in recovery after {timeout_s:.0f} s "
                f"(target {target}). Server log (last lines):\n{_log(server)}\n"
                "Fix: raise the timeout, or check that restore_command finds the WAL"
            )
        time.sleep(0.1)


def _log(server: PostgresServer) -> str:
    try:
        return "\n".join(server.log_file.read_text(errors="replace").splitlines()[-20:])
    except OSError:
        return ""


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
    chain = choose_backup(layout, target_time, target_lsn)
    newest = chain[-1]
    gap = wal_gap(layout, newest)
    if gap is not None and (target_lsn is None or parse_lsn(target_lsn) >= parse_lsn(gap[0])):
        raise pitr_error(
            f"the WAL archive has a gap after base backup {newest.id}: {gap[1]}. Nothing after "
            f"{gap[0]} can be restored from this backup. Fix: take a new full base backup (and "
            "keep the receiver running: its slot keeps the WAL while it is down)"
        )
    data_dir = Path(data_dir).absolute()
    if data_dir.exists() and any(data_dir.iterdir()):
        raise pitr_error(f"{data_dir} is not empty: restore into a fresh directory")
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    if layout.run_as:
        os.chown(data_dir, *user_ids(layout.run_as))
    began = time.monotonic()
    args = ["-o", str(data_dir), "--no-sync", *(str(b.data_dir) for b in chain)]
    proc = run_tool("pg_combinebackup", args, run_as=layout.run_as)
    if proc.returncode != 0:
        raise tool_failure(
            "pg_combinebackup", proc, "check the chain with pg_verifybackup, or restore from an "
            "older full backup",
        )  # fmt: skip
    _write_recovery(layout, data_dir, target_time, target_lsn, inclusive, settings)
    restored = time.monotonic()
    try:
        server = PostgresServer.start(
            data_dir, timeout=timeout_s, system_user=layout.run_as or PG_SYSTEM_USER
        )
    except LocalServerError as exc:
        raise pitr_error(f"{exc}\nFix: {_fix_from_log(str(exc), target)}") from None
    try:
        _wait_promoted(server, max(1.0, timeout_s - (time.monotonic() - restored)), target)
        replayed = time.monotonic()
        with server.connect() as conn:
            lsn, at, tli = conn.execute(
                "SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp(), "
                "pg_walfile_name(pg_current_wal_lsn())"
            ).fetchone()
    except BaseException:
        server.stop(mode="immediate")
        raise
    wal_bytes = max(0, parse_lsn(lsn) - parse_lsn(newest.start_lsn))
    replay_s = replayed - restored
    return PitrRestore(
        server=server,
        backup=newest.id,
        chain=[b.id for b in chain],
        target=target,
        restore_s=round(restored - began, 3),
        replay_s=round(replay_s, 3),
        total_s=round(replayed - began, 3),
        start_lsn=newest.start_lsn,
        reached_lsn=format_lsn(parse_lsn(lsn)),
        reached_time=at.astimezone(UTC).isoformat() if at else None,
        wal_bytes=wal_bytes,
        replay_mb_s=round(wal_bytes / 1e6 / replay_s, 3) if replay_s > 0 else 0.0,
        timeline=int(tli[:8], 16),  # the promoted server's new timeline
    )
