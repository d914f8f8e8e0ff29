"""The embedded sandbox: a local PostgreSQL + Redis + files directory that looks like TwinMe.

``ensure_sandbox(home)`` starts the servers once and reuses them afterwards; several Dagster step
processes may call it at the same time, so the start is serialised with ``flock`` and the common
case (already running) is a state-file read plus two liveness checks, without the lock.

Layout under ``home/sandbox``: ``postgres/`` (data directory), ``redis/``, ``files/``,
``state.json`` (ports, pids), ``companions.json`` and ``.lock``.

*Companions* are detached processes that work on the sandbox's servers on behalf of a higher
layer (the WAL receiver and the heartbeat writer of continuous archiving): the sandbox knows them
only by pid file and process name (:func:`register_companion`), and :func:`stop_sandbox` stops
them before PostgreSQL. ``ensure_sandbox(on_start=...)`` is how that layer learns the servers
just started (it may not be imported from here: docs/architecture.md, "Import contracts").
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import psycopg

from twinme_ops.scratch.detached import pid_from_file, stop_pid
from twinme_ops.scratch.local import (
    LocalServerError,
    dir_lock,
    pid_alive,
    read_json_file,
    write_json_atomic,
)
from twinme_ops.scratch.postgres import PostgresServer
from twinme_ops.scratch.redis import RedisServer

logger = logging.getLogger(__name__)

DATABASE = "twinme"
DEFAULT_SCALE = 0.02
STATE_VERSION = 1
# The sandbox Redis persists to disk (unlike scratch servers), so "down" then "up" keeps the
# keys that match the PostgreSQL rows and files.
REDIS_CONFIG = {"save": "3600 1"}


@dataclass(frozen=True)
class SandboxInfo:
    """Where the running sandbox is: URLs carry no password (the sandbox trusts loopback)."""

    home: Path
    database_url: str
    redis_url: str
    files_dir: Path
    postgres_port: int
    redis_port: int


def default_home() -> Path:
    """``TWINME_HOME`` or ``./.twinme``, read when called (never at import time)."""
    return Path(os.environ.get("TWINME_HOME") or ".twinme").absolute()


def sandbox_dir(home: Path) -> Path:
    return Path(home).absolute() / "sandbox"


def _info(home: Path, state: dict[str, Any]) -> SandboxInfo:
    pg_port, redis_port = int(state["postgres_port"]), int(state["redis_port"])
    return SandboxInfo(
        home=home,
        database_url=f"postgresql://postgres@127.0.0.1:{pg_port}/{DATABASE}",
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        files_dir=sandbox_dir(home) / "files",
        postgres_port=pg_port,
        redis_port=redis_port,
    )


def _state_alive(state: dict[str, Any] | None) -> bool:
    return bool(
        state
        and state.get("version") == STATE_VERSION
        and state.get("ready")
        and pid_alive(state.get("postgres_pid"), "postgres")
        and pid_alive(state.get("redis_pid"), "redis-server")
    )


def _locked(base: Path) -> contextlib.AbstractContextManager[None]:
    base.mkdir(parents=True, exist_ok=True)
    return dir_lock(base / ".lock")


OnStart = Callable[[SandboxInfo, PostgresServer], None]


def ensure_sandbox(
    home: Path | None = None, *, scale: float = DEFAULT_SCALE, on_start: OnStart | None = None
) -> SandboxInfo:
    """Start the sandbox if it is not running (seeding an empty database), and describe it.

    Safe to call from many processes at once: one starts the servers, the others wait on the
    lock and then reuse them. ``on_start(info, postgres)`` runs under the lock once the servers
    are up and seeded, only when this call started them (continuous archiving starts there); a
    failure of it is logged as a warning, the sandbox stays up.
    """
    home = Path(home).absolute() if home is not None else default_home()
    base = sandbox_dir(home)
    state = read_json_file(base / "state.json")
    if _state_alive(state):
        assert state is not None
        return _info(home, state)
    with _locked(base):
        state = read_json_file(base / "state.json")
        if _state_alive(state):
            assert state is not None
            return _info(home, state)
        return _start(home, base, scale, on_start)


def running_sandbox(home: Path | None = None) -> SandboxInfo | None:
    """The running sandbox, or None: never starts it."""
    home = Path(home).absolute() if home is not None else default_home()
    state = read_json_file(sandbox_dir(home) / "state.json")
    if _state_alive(state):
        assert state is not None
        return _info(home, state)
    return None


def sandbox_postgres(home: Path | None = None) -> PostgresServer | None:
    """The sandbox's running PostgreSQL server, or None."""
    home = Path(home).absolute() if home is not None else default_home()
    return PostgresServer.find(sandbox_dir(home) / "postgres")


def _start(home: Path, base: Path, scale: float, on_start: OnStart | None = None) -> SandboxInfo:
    t0 = time.monotonic()
    pg = PostgresServer.start(base / "postgres")
    try:
        redis_server = RedisServer.start(base / "redis", extra_config=REDIS_CONFIG)
    except BaseException:
        pg.stop()
        raise
    files_dir = base / "files"
    files_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "version": STATE_VERSION,
        "ready": False,
        "postgres_port": pg.port,
        "postgres_pid": pg.pid,
        "redis_port": redis_server.port,
        "redis_pid": redis_server.pid,
        "redis_version": redis_server.version,
    }
    info = _info(home, state)
    empty = prepare_database(pg)
    if empty:
        from twinme_ops.sandbox.seed import seed

        logger.info("sandbox database is empty: seeding demo data at scale %s", scale)
        seed(info.database_url, info.redis_url, files_dir, scale)
    if on_start is not None:
        try:
            on_start(info, pg)
        except Exception as exc:  # the sandbox itself is up: say what did not start, go on
            logger.warning("sandbox up, but its start hook failed: %s", exc)
        state["postgres_pid"] = pg.pid  # a hook may have restarted it (settings)
    state["ready"] = True
    write_json_atomic(base / "state.json", state)
    logger.info(
        "sandbox up in %.1f s: PostgreSQL on port %s, Redis %s on port %s",
        time.monotonic() - t0,
        pg.port,
        redis_server.version,
        redis_server.port,
    )
    return info


def schema_sql() -> str:
    """The TwinMe schema (idempotent DDL)."""
    return resources.files("twinme_ops.sandbox").joinpath("schema.sql").read_text()


def prepare_database(pg: PostgresServer) -> bool:
    """Create the ``twinme`` database, extensions and schema; True when it holds no users yet."""
    with pg.connect("postgres") as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)
        ).fetchone()
        if not exists:
            conn.execute(f"CREATE DATABASE {DATABASE}".encode())
    with pg.connect(DATABASE) as conn:
        conn.execute(schema_sql().encode())
        row = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM users)").fetchone()
    return bool(row and row[0])


def stop_sandbox(home: Path | None = None) -> bool:
    """Stop both servers (PostgreSQL fast shutdown, Redis saves its snapshot); True if any ran."""
    home = Path(home).absolute() if home is not None else default_home()
    base = sandbox_dir(home)
    if not base.exists():
        return False
    with _locked(base):
        stopped = _stop_companions(base)
        pg = PostgresServer.find(base / "postgres")
        if pg is not None:
            pg.stop("fast")
            stopped = True
        redis_server = RedisServer.find(base / "redis")
        if redis_server is not None:
            redis_server.stop()
            stopped = True
        state = read_json_file(base / "state.json")
        if state is not None:
            state["ready"] = False
            write_json_atomic(base / "state.json", state)
    if stopped:
        logger.info("sandbox stopped")
    return stopped


def register_companion(
    home: Path | None, name: str, pid_file: Path | str, process_hint: str
) -> None:
    """Have :func:`stop_sandbox` stop the process whose pid is in ``pid_file`` (and whose command
    line names ``process_hint``) before it stops the servers."""
    home = Path(home).absolute() if home is not None else default_home()
    path = sandbox_dir(home) / "companions.json"
    companions = read_json_file(path) or {}
    companions[name] = {"pid_file": str(pid_file), "process_hint": process_hint}
    write_json_atomic(path, companions)


def companions(home: Path | None = None) -> dict[str, dict[str, Any]]:
    """The registered companions: name -> pid file, process name, pid when alive."""
    home = Path(home).absolute() if home is not None else default_home()
    out: dict[str, dict[str, Any]] = {}
    for name, entry in (read_json_file(sandbox_dir(home) / "companions.json") or {}).items():
        pid = _companion_pid(entry)
        out[name] = {**entry, "running": pid is not None, "pid": pid}
    return out


def _companion_pid(entry: dict[str, Any]) -> int | None:
    try:
        pid_file = Path(entry["pid_file"])
    except (KeyError, TypeError):
        return None
    return pid_from_file(pid_file, entry.get("process_hint"))


def _stop_companions(base: Path, timeout_s: float = 30.0) -> bool:
    """SIGTERM each live companion, wait, SIGKILL the stubborn; whether any ran."""
    stopped = False
    for name, entry in (read_json_file(base / "companions.json") or {}).items():
        pid = _companion_pid(entry)
        if pid is None:
            continue
        stop_pid(pid, timeout_s)
        with contextlib.suppress(OSError):
            Path(entry["pid_file"]).unlink()
        logger.info("sandbox companion %s (pid %s) stopped", name, pid)
        stopped = True
    return stopped


def sandbox_status(home: Path | None = None) -> dict[str, Any]:
    """Running or not, ports, database size, Redis key count and file count."""
    home = Path(home).absolute() if home is not None else default_home()
    base = sandbox_dir(home)
    status: dict[str, Any] = {"home": str(home), "running": False}
    pg = PostgresServer.find(base / "postgres")
    redis_server = RedisServer.find(base / "redis")
    pg_status: dict[str, Any] = {"running": pg is not None}
    redis_status: dict[str, Any] = {"running": redis_server is not None}
    status["postgres"], status["redis"] = pg_status, redis_status
    if pg is not None:
        pg_status.update(port=pg.port, url=pg.url(DATABASE))
        try:
            with pg.connect(DATABASE) as conn:
                row = conn.execute(
                    "SELECT pg_database_size(current_database()), current_setting('server_version')"
                ).fetchone()
            if row:
                pg_status.update(database_size=int(row[0]), version=str(row[1]))
        except psycopg.Error as exc:
            pg_status["error"] = str(exc).splitlines()[0]
    if redis_server is not None:
        redis_status.update(
            port=redis_server.port, url=redis_server.url(), version=redis_server.version
        )
        client = redis_server.client(socket_timeout=5)
        try:
            redis_status["keys"] = int(client.dbsize())  # type: ignore[arg-type]
        except Exception as exc:  # a status report never fails on one component
            redis_status["error"] = str(exc)
        finally:
            client.close()
    files_dir = base / "files"
    files = symlinks = size = 0
    if files_dir.exists():
        for dirpath, _dirs, names in os.walk(files_dir):
            for name in names:
                path = Path(dirpath) / name
                if path.is_symlink():
                    symlinks += 1
                elif path.is_file():
                    files += 1
                    size += path.stat().st_size
    status["files"] = {"dir": str(files_dir), "files": files, "symlinks": symlinks, "bytes": size}
    status["companions"] = companions(home)
    status["running"] = pg is not None and redis_server is not None
    return status


__all__ = [
    "DATABASE",
    "DEFAULT_SCALE",
    "LocalServerError",
    "SandboxInfo",
    "default_home",
    "companions",
    "ensure_sandbox",
    "prepare_database",
    "register_companion",
    "running_sandbox",
    "sandbox_postgres",
    "sandbox_status",
    "stop_sandbox",
]
