"""The WAL archive's writer: ``pg_receivewal`` on a physical slot, run as a detached process.

The slot is created (``RESERVE_WAL`` at once) before the receiver first connects, so the server
keeps every segment the archive has not flushed while the receiver is down; the receiver picks up
at the slot's position when it comes back. ``--synchronous`` flushes each chunk and reports the
flush at once (milliseconds behind a commit); without it segments are flushed when they are
complete. pg_receivewal retries by itself when the connection drops; if the process itself dies,
:func:`start_receiver` (idempotent) starts it again. Pid, state and log live in
``<root>/receiver/``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from twinme_ops.backups.pitr.layout import (
    ArchiveLayout,
    as_user,
    format_lsn,
    parse_lsn,
    pitr_error,
    split_password,
    tool_env,
)
from twinme_ops.common.pgtools import pg_bin
from twinme_ops.common.redact import redact_url
from twinme_ops.scratch.detached import DetachedProcess

DEFAULT_SLOT = "twinme_wal_archive"
APPLICATION_NAME = "twinme_wal_archive"
PID_FILE = "pg_receivewal.pid"
STATE_FILE = "receiver.json"
LOG_FILE = "pg_receivewal.log"
PROCESS_HINT = "pg_receivewal"


@dataclass
class ReceiverState:
    """What runs: written to ``receiver/receiver.json`` when the receiver starts."""

    pid: int
    slot: str
    synchronous: bool
    started_at: str
    source: str  # the URL without its password
    log_file: str


def connect(url: str) -> Any:
    """An autocommit psycopg connection to the source (the password stays out of errors)."""
    import psycopg

    try:
        return psycopg.connect(url, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        raise pitr_error(
            f"cannot connect to the source {redact_url(url)}: {exc}. Fix: check that the server "
            "runs and that the URL, user and password are right"
        ) from None


def ensure_slot(conn: Any, slot: str = DEFAULT_SLOT) -> bool:
    """Create the physical slot (reserving WAL at once) if missing; whether it was created."""
    row = conn.execute(
        "SELECT slot_type FROM pg_replication_slots WHERE slot_name = %s", (slot,)
    ).fetchone()
    if row is not None:
        if row[0] != "physical":
            raise pitr_error(
                f"replication slot {slot!r} exists but is {row[0]}: the WAL archive needs a "
                "physical slot. Fix: pick another slot name, or drop it with "
                f"SELECT pg_drop_replication_slot('{slot}')"
            )
        return False
    conn.execute("SELECT pg_create_physical_replication_slot(%s, true)", (slot,))
    return True


def receiver_process(layout: ArchiveLayout) -> DetachedProcess:
    """The receiver of this archive as a detached process: its pid, state and log files."""
    return DetachedProcess(layout.receiver_dir, PID_FILE, STATE_FILE, LOG_FILE, PROCESS_HINT)


def receiver_state(layout: ArchiveLayout) -> ReceiverState | None:
    """The receiver's recorded state, or None if it was never started here."""
    return receiver_process(layout).state(ReceiverState)


def receiver_pid(layout: ArchiveLayout) -> int | None:
    """The pid of the live receiver of this archive, or None."""
    return receiver_process(layout).pid()


def _receiver_url(url: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.setdefault("application_name", APPLICATION_NAME)
    return urlunsplit(parts._replace(query=urlencode(query)))


def start_receiver(
    layout: ArchiveLayout,
    url: str,
    *,
    slot: str = DEFAULT_SLOT,
    synchronous: bool = False,
    status_interval_s: int = 1,
    connect_timeout_s: float = 30.0,
) -> ReceiverState:
    """Start ``pg_receivewal`` into ``<root>/wal/`` unless it already runs; its state.

    Creates the archive folders and the slot first. Waits until the receiver holds the slot, and
    raises with its log if it does not within ``connect_timeout_s`` (the process is stopped then).
    """
    layout.create()
    process = receiver_process(layout)
    with process.lock():
        running = process.running(ReceiverState)
        if running is not None:
            if running.slot != slot:
                raise pitr_error(
                    f"a receiver already archives into {layout.wal_dir} on slot "
                    f"{running.slot!r}, not {slot!r}: stop it first (stop_receiver)"
                )
            return running
        with connect(url) as conn:
            ensure_slot(conn, slot)
        plain_url, env = split_password(_receiver_url(url))
        argv = [pg_bin("pg_receivewal"), "-D", str(layout.wal_dir), "-S", slot]
        argv += ["-d", plain_url, "-s", str(status_interval_s), "--no-password", "-v"]
        if synchronous:
            argv.append("--synchronous")
        uid, gid, groups = as_user(layout.run_as)
        # outlives the step that started it
        pid = process.launch(
            argv, what="pg_receivewal", env=tool_env(env), user=uid, group=gid, extra_groups=groups
        )
        state = ReceiverState(
            pid=pid,
            slot=slot,
            synchronous=synchronous,
            started_at=datetime.now(UTC).isoformat(),
            source=redact_url(url),
            log_file=str(process.log_file),
        )
        process.record(state)
        try:
            _wait_slot_active(url, slot, process, pid, connect_timeout_s)
        except BaseException:
            stop_receiver(layout)
            raise
        return state


def _wait_slot_active(
    url: str, slot: str, process: DetachedProcess, pid: int, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    with connect(url) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            ).fetchone()
            if row and row[0]:
                return
            if not process.alive(pid):
                break
            time.sleep(0.1)
    raise pitr_error(
        f"pg_receivewal did not start streaming on slot {slot!r} within {timeout:.0f} s. Its log:\n"
        f"{process.log_tail(12)}\nFix: check the source URL, the role's REPLICATION attribute and "
        "pg_hba.conf's replication lines (check_source)"
    )


def stop_receiver(layout: ArchiveLayout, timeout_s: float = 30.0) -> bool:
    """Stop the receiver (SIGTERM: it flushes and exits; SIGKILL after ``timeout_s``).

    Whether one was running. The slot stays, so the server keeps the WAL until it restarts.
    """
    return receiver_process(layout).stop(timeout_s)


def flushed_lsn(conn: Any, slot: str = DEFAULT_SLOT) -> int | None:
    """How far the receiver on ``slot`` has flushed WAL into the archive, from the server.

    ``pg_stat_replication.flush_lsn`` of the sender that holds the slot, or the slot's
    ``restart_lsn`` when the receiver is not connected. None when the slot does not exist.
    """
    row = conn.execute(
        "SELECT r.flush_lsn::text, s.restart_lsn::text FROM pg_replication_slots s "
        "LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = %s",
        (slot,),
    ).fetchone()
    if row is None:
        return None
    value = row[0] or row[1]
    return parse_lsn(value) if value else None


def wait_for_flush(
    conn: Any, lsn: int | None = None, *, slot: str = DEFAULT_SLOT, timeout_s: float = 30.0
) -> int:
    """Wait until the receiver has flushed ``lsn`` (default: the server's current position).

    Returns the flushed position. Without ``--synchronous`` the receiver flushes only whole
    segments: call ``pg_switch_wal()`` first.
    """
    if lsn is None:
        lsn = parse_lsn(conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()[0])
    deadline = time.monotonic() + timeout_s
    while True:
        flushed = flushed_lsn(conn, slot)
        if flushed is not None and flushed >= lsn:
            return flushed
        if time.monotonic() >= deadline:
            raise pitr_error(
                f"the WAL archive has not flushed {format_lsn(lsn)} within {timeout_s:.0f} s "
                f"(flushed: {'none' if flushed is None else format_lsn(flushed)}). Fix: check "
                "that the receiver runs (archive status), or SELECT pg_switch_wal() when it is "
                "not --synchronous"
            )
        time.sleep(0.02)
