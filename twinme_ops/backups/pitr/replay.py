"""Replaying archived WAL on a restored data directory: what both restore engines share.

An engine (``restore.py``: PostgreSQL's own base backups; ``barman_restore.py``: barman-cloud's
bucket) lays a base backup into a fresh data directory and knows its ``restore_command``. From
there the steps are the same, and live here once:

1. :func:`write_recovery_settings`: the ``restore_command``, the target,
   ``recovery_target_action = 'promote'`` and archiving *off* (a restored copy inherits
   ``archive_mode``/``archive_command`` and must never write into the archive, nor wait for the
   source's synchronous standby), appended to ``postgresql.auto.conf``; then ``recovery.signal``;
2. :func:`start_and_replay`: start it on a free port and wait until ``pg_is_in_recovery()`` is
   false (``pg_ctl -w`` returns as soon as the server accepts read-only connections, long
   before the target), then read where it stopped;
3. :func:`measured`: the :class:`PitrRestore` the drill and the recovery read, whichever engine.

A server that stops during recovery, or never leaves it, is an error whose fix comes from the
engine's ``diagnose`` (it reads the server log, and what it knows of its archive).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from twinme_ops.backups.pitr.layout import format_lsn, parse_lsn, pitr_error, user_ids
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
# connection failures that waiting will not cure
_AUTH_FAILURES = ("authentication failed", "no pg_hba.conf entry", "does not exist")
# Given a server log (or a start error), the fix to print
Diagnose = Callable[[str], str]


@dataclass
class PitrRestore:
    """A server restored to a point in time, and what it took (both engines)."""

    server: PostgresServer
    backup: str
    chain: list[str]
    target: str
    restore_s: float  # laying the base backup down (combine, or download and extract)
    replay_s: float
    total_s: float
    start_lsn: str
    reached_lsn: str
    reached_time: str | None  # the last replayed transaction's commit time
    wal_bytes: int
    replay_mb_s: float
    timeline: int
    engine: str = "local"

    def to_metadata(self) -> dict[str, Any]:
        facts = {k: v for k, v in vars(self).items() if k != "server"}
        return {**facts, "port": self.server.port, "data_dir": str(self.server.data_dir)}


@dataclass
class Replayed:
    """A restored server that left recovery: where it stopped, and when."""

    server: PostgresServer
    started: float  # time.monotonic() when the server was started
    promoted: float  # ... and when it was out of recovery
    reached_lsn: int
    reached_time: datetime | None
    timeline: int


def describe_target(target_time: datetime | None, target_lsn: str | None) -> str:
    if target_time is not None:
        return f"time {target_time.isoformat()}"
    if target_lsn is not None:
        return f"LSN {target_lsn}"
    return "latest"


class _Backup(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def end_lsn(self) -> str: ...
    @property
    def finished(self) -> datetime: ...


_B = TypeVar("_B", bound=_Backup)


def backups_before(
    backups: list[_B],
    target_time: datetime | None,
    target_lsn: str | None,
    *,
    where: str,
    empty_fix: str,
) -> list[_B]:
    """The backups (oldest first) complete before the target: every one for latest.

    Refused, with the fix, when there is none at all or the target precedes the first.
    """
    if not backups:
        raise pitr_error(
            f"no complete base backup in {where}: nothing to restore from. Fix: {empty_fix}"
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
            f"backup was complete ({first.id}: consistent at {first.finished.isoformat()}, LSN "
            f"{first.end_lsn}): no earlier state can be restored from {where}. "
            "Fix: choose a later target"
        )
    return fits


def conf_value(value: str) -> str:
    """A value quoted for postgresql.conf."""
    return "'" + value.replace("'", "''") + "'"


def fresh_data_dir(data_dir: Path, run_as: str | None) -> Path:
    """``data_dir`` created empty (0700, owned by ``run_as``); an error when it holds anything."""
    data_dir = Path(data_dir).absolute()
    if data_dir.exists() and any(data_dir.iterdir()):
        raise pitr_error(f"{data_dir} is not empty: restore into a fresh directory")
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    if run_as:
        os.chown(data_dir, *user_ids(run_as))
    return data_dir


def write_recovery_settings(
    data_dir: Path,
    restore_command: str,
    *,
    target_time: datetime | None,
    target_lsn: str | None,
    inclusive: bool,
    settings: Mapping[str, str] | None,
    run_as: str | None,
) -> None:
    """Append the recovery settings to ``postgresql.auto.conf`` and create ``recovery.signal``."""
    lines = {**RESTORED_SETTINGS, **(settings or {}), "restore_command": restore_command}
    lines["recovery_target_action"] = "promote"
    if target_time is not None:
        lines["recovery_target_time"] = target_time.astimezone(UTC).isoformat(sep=" ")
    elif target_lsn is not None:
        lines["recovery_target_lsn"] = target_lsn
    if target_time is not None or target_lsn is not None:
        lines["recovery_target_inclusive"] = "on" if inclusive else "off"
    with open(data_dir / "postgresql.auto.conf", "a") as fh:
        fh.write("\n# twinme_ops point-in-time restore: archiving off, never into the archive\n")
        fh.writelines(f"{key} = {conf_value(value)}\n" for key, value in lines.items())
    (data_dir / "recovery.signal").touch()
    # the source's socket lock files and log came with the copy
    for stale in data_dir.glob(".s.PGSQL.*"):
        stale.unlink()
    (data_dir / "server.log").write_text("")
    if run_as:
        uid, gid = user_ids(run_as)
        for name in ("recovery.signal", "server.log", "postgresql.auto.conf"):
            os.chown(data_dir / name, uid, gid)


def fix_from_log(log: str, target: str, *, behind: str) -> str:
    """The fix for what the server log says; ``behind``: how to get a later commit archived."""
    text = log.lower()
    if "before configured recovery target was reached" in text:
        return (
            f"the archive ends before the target ({target}): no transaction committed after it "
            f"has been archived yet. Fix: choose an earlier target or 'latest', or {behind}"
        )
    if "before consistent recovery point" in text:
        return f"the target ({target}) is inside the base backup: choose a later target"
    if "could not find redo location" in text or "could not locate required checkpoint" in text:
        return "the base backup's WAL is missing from the archive: take a new full base backup"
    return "read the server log above"


def server_log_tail(server: PostgresServer, lines: int = 20) -> str:
    try:
        return "\n".join(server.log_file.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _wait_promoted(
    server: PostgresServer, timeout_s: float, target: str, diagnose: Diagnose
) -> None:
    import psycopg

    deadline = time.monotonic() + timeout_s
    while True:
        # the postmaster alone: pg_ctl -w has returned, the status line says "ready" in recovery
        if not pid_alive(server.pid, "postgres"):
            log = server_log_tail(server)
            raise pitr_error(
                f"the restored server stopped during recovery. Server log (last lines):\n{log}\n"
                f"Fix: {diagnose(log)}"
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
            log = server_log_tail(server)
            raise pitr_error(
                f"the restored server was still in recovery after {timeout_s:.0f} s "
                f"(target {target}). Server log (last lines):\n{log}\n"
                f"Fix: raise the timeout, or check that restore_command finds the WAL "
                f"({diagnose(log)})"
            )
        time.sleep(0.1)


def start_and_replay(
    data_dir: Path, *, run_as: str | None, timeout_s: float, target: str, diagnose: Diagnose
) -> Replayed:
    """Start the prepared ``data_dir`` and wait until it is promoted; the caller owns the server
    (it is stopped here only when this fails)."""
    started = time.monotonic()
    try:
        server = PostgresServer.start(
            data_dir, timeout=timeout_s, system_user=run_as or PG_SYSTEM_USER
        )
    except LocalServerError as exc:
        raise pitr_error(f"{exc}\nFix: {diagnose(str(exc))}") from None
    try:
        left = max(1.0, timeout_s - (time.monotonic() - started))
        _wait_promoted(server, left, target, diagnose)
        promoted = time.monotonic()
        with server.connect() as conn:
            lsn, at, tli = conn.execute(
                "SELECT pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp(), "
                "pg_walfile_name(pg_current_wal_lsn())"
            ).fetchone()
    except BaseException:
        server.stop(mode="immediate")
        raise
    # the promoted server's new timeline
    return Replayed(server, started, promoted, parse_lsn(lsn), at, int(tli[:8], 16))


def measured(
    replayed: Replayed,
    *,
    engine: str,
    backup: str,
    chain: list[str],
    target: str,
    start_lsn: str,
    began: float,
) -> PitrRestore:
    """The restore's figures: ``began`` is when laying the base backup down started."""
    wal_bytes = max(0, replayed.reached_lsn - parse_lsn(start_lsn))
    replay_s = replayed.promoted - replayed.started
    at = replayed.reached_time
    return PitrRestore(
        server=replayed.server,
        backup=backup,
        chain=chain,
        target=target,
        restore_s=round(replayed.started - began, 3),
        replay_s=round(replay_s, 3),
        total_s=round(replayed.promoted - began, 3),
        start_lsn=start_lsn,
        reached_lsn=format_lsn(replayed.reached_lsn),
        reached_time=at.astimezone(UTC).isoformat() if at else None,
        wal_bytes=wal_bytes,
        replay_mb_s=round(wal_bytes / 1e6 / replay_s, 3) if replay_s > 0 else 0.0,
        timeline=replayed.timeline,
        engine=engine,
    )
