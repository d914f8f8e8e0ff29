"""The heartbeat writer: a small process that commits a heartbeat every few seconds, for ever.

Heartbeats (:mod:`.heartbeat`) are what make the recovery point measurable all the time: the RPO
(:mod:`.rpo`) is the age of the newest heartbeat the archive holds, and a restore to a point in
time is checked against them. The writer runs

* in the sandbox, as a detached process started beside the WAL receiver
  (:func:`start_heartbeat_writer`, ``python -m twinme_ops.backups.pitr.heartbeat_writer``), with
  its pid file, state and log in ``<archive root>/heartbeat/``; idempotent and restartable like
  the receiver, stopped by :func:`stop_heartbeat_writer`;
* in production, as the ``twinme-heartbeat`` Deployment (``deploy/postgres/70-heartbeat.yaml``,
  ``twinme-ops heartbeat``), reading ``DATABASE_URL``.

The URL travels in the environment (``TWINME_HEARTBEAT_URL``, else ``DATABASE_URL``), never in
argv where ``ps`` shows it. A lost connection is retried (the writer never dies of a restart of
the server); SIGTERM ends it cleanly. Rows older than ``keep_days`` are deleted once an hour.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from twinme_ops.backups.pitr.heartbeat import SCHEMA, TABLE, ensure_heartbeat_table, write_heartbeat
from twinme_ops.backups.pitr.layout import ArchiveLayout, pitr_error
from twinme_ops.common.redact import redact, redact_url, register_secrets_in
from twinme_ops.scratch.detached import DetachedProcess

URL_ENV = "TWINME_HEARTBEAT_URL"
INTERVAL_ENV = "TWINME_HEARTBEAT_INTERVAL_S"
DEFAULT_INTERVAL_S = 5.0
DEFAULT_KEEP_DAYS = 7
PID_FILE = "heartbeat.pid"
STATE_FILE = "heartbeat.json"
LOG_FILE = "heartbeat.log"
PROCESS_HINT = "heartbeat"
_PRUNE_EVERY_S = 3600.0


@dataclass
class HeartbeatWriterState:
    """What runs: written to ``heartbeat/heartbeat.json`` when the writer starts."""

    pid: int
    interval_s: float
    started_at: str
    target: str  # the URL without its password
    log_file: str


def _say(message: str) -> None:
    print(f"{datetime.now(UTC).isoformat()} {redact(message)}", flush=True)


def run_writer(
    url: str,
    interval_s: float = DEFAULT_INTERVAL_S,
    *,
    stop: threading.Event | None = None,
    keep_days: int = DEFAULT_KEEP_DAYS,
) -> int:
    """Commit a heartbeat every ``interval_s`` until ``stop`` is set (or SIGTERM); the count.

    Connection failures are logged and retried every ``min(interval_s, 5)`` seconds.
    """
    import psycopg

    if interval_s <= 0:
        raise pitr_error(f"heartbeat interval {interval_s} s is not > 0. Fix: {INTERVAL_ENV}")
    register_secrets_in(url)
    stop = stop or threading.Event()
    written = 0
    conn: Any = None
    last_prune = 0.0
    failing = False
    _say(f"heartbeat writer: every {interval_s:g} s into {redact_url(url)}")
    while not stop.is_set():
        try:
            if conn is None:
                conn = psycopg.connect(url, autocommit=True, connect_timeout=10)
                ensure_heartbeat_table(conn)
                if failing:
                    _say("heartbeat writer: connected again")
                failing = False
            write_heartbeat(conn)
            written += 1
            if time.monotonic() - last_prune > _PRUNE_EVERY_S:
                conn.execute(
                    f"DELETE FROM {SCHEMA}.{TABLE} WHERE at < now() - make_interval(days => %s)",
                    (keep_days,),
                )
                last_prune = time.monotonic()
        except (psycopg.Error, OSError) as exc:
            if not failing:
                _say(f"heartbeat writer: {type(exc).__name__}: {exc}; retrying")
            failing = True
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
            conn = None
            stop.wait(min(interval_s, 5.0))
            continue
        stop.wait(interval_s)
    if conn is not None:
        with contextlib.suppress(Exception):
            conn.close()
    _say(f"heartbeat writer: stopped after {written} heartbeats")
    return written


def url_from_env() -> str:
    """The target URL: ``TWINME_HEARTBEAT_URL``, else ``DATABASE_URL``; an error naming both."""
    url = (os.environ.get(URL_ENV) or os.environ.get("DATABASE_URL") or "").strip()
    if not url:
        raise pitr_error(
            f"the heartbeat writer has no database. Fix: set DATABASE_URL (or {URL_ENV})"
        )
    return url


def interval_from_env(default: float = DEFAULT_INTERVAL_S) -> float:
    """``TWINME_HEARTBEAT_INTERVAL_S`` or ``default``, validated."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise pitr_error(f"{INTERVAL_ENV}={text!r} is not a number of seconds > 0")
    return value


def serve(url: str, interval_s: float, keep_days: int = DEFAULT_KEEP_DAYS) -> int:
    """Run in the foreground until SIGTERM or SIGINT (the Deployment's and the detached form)."""
    stop = threading.Event()

    def _stop(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    run_writer(url, interval_s, stop=stop, keep_days=keep_days)
    return 0


# --------------------------------------------------------------------------------------------
# the detached writer of an archive root


def heartbeat_writer_process(layout: ArchiveLayout) -> DetachedProcess:
    """The writer of this archive root as a detached process: its pid, state and log files."""
    return DetachedProcess(layout.heartbeat_dir, PID_FILE, STATE_FILE, LOG_FILE, PROCESS_HINT)


def heartbeat_writer_state(layout: ArchiveLayout) -> HeartbeatWriterState | None:
    """The writer's recorded state, or None if it was never started here."""
    return heartbeat_writer_process(layout).state(HeartbeatWriterState)


def heartbeat_writer_pid(layout: ArchiveLayout) -> int | None:
    """The pid of the live heartbeat writer of this archive root, or None."""
    return heartbeat_writer_process(layout).pid()


def _count(conn: Any) -> int:
    row = conn.execute(f"SELECT count(*) FROM {SCHEMA}.{TABLE}").fetchone()
    return int(row[0]) if row else 0


def start_heartbeat_writer(
    layout: ArchiveLayout, url: str, *, interval_s: float = DEFAULT_INTERVAL_S
) -> HeartbeatWriterState:
    """Start the detached writer into ``url``'s database unless it already runs; its state.

    Waits until the first heartbeat is committed (at most 15 s), else stops it and raises with
    its log.
    """
    import psycopg

    process = heartbeat_writer_process(layout)
    with process.lock():
        running = process.running(HeartbeatWriterState)
        if running is not None:
            return running
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            ensure_heartbeat_table(conn)
            before = _count(conn)
        argv = [sys.executable, "-m", "twinme_ops.backups.pitr.heartbeat_writer"]
        argv += ["--interval", f"{interval_s:g}"]
        # the URL in the environment, not in argv where ps shows it
        env = {**os.environ, URL_ENV: url}
        pid = process.launch(argv, what="the heartbeat writer", env=env)
        state = HeartbeatWriterState(
            pid=pid,
            interval_s=interval_s,
            started_at=datetime.now(UTC).isoformat(),
            target=redact_url(url),
            log_file=str(process.log_file),
        )
        process.record(state)
        deadline = time.monotonic() + 15.0
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            while time.monotonic() < deadline and process.alive(pid):
                if _count(conn) > before:
                    return state
                time.sleep(0.05)
        stop_heartbeat_writer(layout)
        tail = process.log_tail(8)
        raise pitr_error(
            f"the heartbeat writer wrote nothing within 15 s. Its log:\n{tail}\nFix: check that "
            "the database accepts connections and that the role may create the twinme_ops schema"
        )


def stop_heartbeat_writer(layout: ArchiveLayout, timeout_s: float = 10.0) -> bool:
    """Stop the writer (SIGTERM, SIGKILL after ``timeout_s``); whether one was running."""
    return heartbeat_writer_process(layout).stop(timeout_s)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m twinme_ops.backups.pitr.heartbeat_writer [--interval S] [--keep-days N]``."""
    parser = argparse.ArgumentParser(
        prog="heartbeat_writer",
        description=f"Commit a heartbeat every few seconds into {URL_ENV} (else DATABASE_URL).",
    )
    parser.add_argument("--interval", type=float, default=None, help="seconds between beats")
    parser.add_argument("--keep-days", type=int, default=DEFAULT_KEEP_DAYS)
    args = parser.parse_args(argv)
    try:
        interval = args.interval if args.interval is not None else interval_from_env()
        url = url_from_env()
    except Exception as exc:
        print(f"error: {redact(exc)}", file=sys.stderr)
        return 2
    return serve(url, interval, args.keep_days)


if __name__ == "__main__":
    sys.exit(main())
