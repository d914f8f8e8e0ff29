"""Kernel isolation for running a pushed commit's code on this machine (Linux, as root).

Three pieces, used by :mod:`twinme_ops.release.app_tests.local`:

- :class:`NetworkNamespace`: one thread of this process moved into a **new network namespace**
  (``unshare(CLONE_NEWNET)`` affects only the calling thread), with only loopback up. Every
  process started from that thread is born in the namespace, and so is every socket it opens:
  the throwaway PostgreSQL and Redis listen on its 127.0.0.1, and the pushed code, started from
  there too, reaches them and nothing else. The sandbox database's address, the production
  database's and the internet do not exist in there, whatever address the code hardcodes. The
  namespace disappears with the thread and the last process in it.
- :func:`confinement_argv`: a prefix that runs a command in new **mount and PID namespaces**
  (``unshare``), hides the paths that hold this process's state and secrets under empty
  read-only tmpfs mounts (``$TWINME_HOME``, ``$DAGSTER_HOME``, the kubeconfig, the
  ServiceAccount token...), mounts a ``/proc`` that shows only the sandbox's own processes, then
  drops to an unprivileged user with ``setpriv`` (no groups, no capabilities, no new privileges:
  setuid binaries such as ``su`` or ``sudo`` cannot give root back). The dropped user cannot read
  ``/proc/<pid>/environ`` of twinme_ops even where /proc is visible, nor signal it.
- :func:`sandbox_user`: the system users that pushed code and its throwaway servers run as,
  created once like PostgreSQL's.

Nothing here falls back to running without isolation: :class:`IsolationUnavailable` names what
is missing and the fix.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import fcntl
import os
import queue
import shlex
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Self, TypeVar

from twinme_ops.release.app_tests.runner import AppTestsUnavailable
from twinme_ops.scratch.local import ensure_system_user

CLONE_NEWNET = 0x40000000
_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1
# pushed code (npm, node, the tests) and the throwaway servers it talks to
TESTS_USER = "twinme-app-tests"
SERVICES_USER = "twinme-app-services"
# mounted over every hidden directory: empty, read-only, nothing executable
_HIDE_OPTIONS = "ro,nosuid,nodev,noexec,size=4k,mode=0755"
_T = TypeVar("_T")


class IsolationUnavailable(AppTestsUnavailable):
    """Pushed code cannot be isolated here; the message names what is missing and the fix."""


def _fix(what: str) -> str:
    return (
        f"{what}. Fix: run twinme_ops as root on a Linux machine that allows namespaces (a VM or "
        "a container with CAP_SYS_ADMIN), or TWINME_APP_TESTS_RUNNER=kubernetes; on a developer "
        "laptop only, TWINME_APP_TESTS_ISOLATION=none runs the tests unisolated (with the "
        "network, as you)"
    )


def require_tools() -> dict[str, str]:
    """Absolute paths of ``unshare``, ``setpriv``, ``mount`` and ``/bin/sh``; raise if missing."""
    tools: dict[str, str] = {}
    for name in ("unshare", "setpriv", "mount"):
        path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
        if path is None:
            raise IsolationUnavailable(
                _fix(f"`{name}` is not installed (util-linux, mount); apt-get install util-linux")
            )
        tools[name] = path
    tools["sh"] = "/bin/sh"
    return tools


def sandbox_user(name: str) -> tuple[int, int]:
    """``(uid, gid)`` of the system user ``name``, created if needed (root only)."""
    if os.geteuid() != 0:
        raise IsolationUnavailable(_fix("isolating pushed code needs root (uid 0)"))
    entry = ensure_system_user(name)
    return entry.pw_uid, entry.pw_gid


def _loopback_up() -> None:
    """``ip link set lo up`` without iproute2: the interface flags through ioctl."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | _IFF_UP, b""))


def _interfaces() -> list[str]:
    return sorted(name for _, name in socket.if_nameindex())


class NetworkNamespace:
    """A worker thread in a new network namespace where only loopback exists and is up.

    :meth:`call` and :meth:`submit` run functions on that thread, one at a time: processes they
    start (``subprocess.Popen``) and sockets they open live in the namespace. Use as a context
    manager; the thread ends on exit, and the namespace with the last process in it.
    """

    def __init__(self) -> None:
        self._tasks: queue.Queue[Any] = queue.Queue()
        self._ready = threading.Event()
        self._failure = ""
        self.inode = ""
        self._thread = threading.Thread(target=self._run, name="app-tests-netns", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait(30)
        if self._failure or not self._ready.is_set():
            self.close()
            raise IsolationUnavailable(_fix(self._failure or "the namespace thread did not start"))
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the worker thread (after the calls already submitted)."""
        if self._thread.is_alive():
            self._tasks.put(None)
            self._thread.join(30)

    def submit(self, fn: Callable[[], _T]) -> concurrent.futures.Future[_T]:
        """Run ``fn`` on the namespace's thread; its result (or exception) in a future."""
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()
        self._tasks.put((fn, future))
        return future

    def call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn`` on the namespace's thread and return its result."""
        return self.submit(fn).result()

    def popen(self, *args: Any, **kwargs: Any) -> subprocess.Popen[str]:
        """``subprocess.Popen`` from inside the namespace (a ``Spawn`` for run_command)."""
        return self.call(lambda: subprocess.Popen(*args, **kwargs))

    def _run(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        host = os.readlink("/proc/self/ns/net")
        if libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            self._failure = (
                f"cannot create a network namespace: unshare(CLONE_NEWNET) failed: "
                f"{os.strerror(err)} (the process lacks CAP_SYS_ADMIN, or the kernel or a "
                "seccomp profile forbids it)"
            )
            self._ready.set()
            return
        try:
            self.inode = os.readlink(f"/proc/self/task/{threading.get_native_id()}/ns/net")
            if self.inode == host:
                raise OSError("the thread is still in the host's network namespace")
            _loopback_up()
            if _interfaces() != ["lo"]:
                raise OSError(f"unexpected interfaces in the new namespace: {_interfaces()}")
        except OSError as exc:
            self._failure = f"cannot set up the network namespace: {exc}"
            self._ready.set()
            return
        self._ready.set()
        while (task := self._tasks.get()) is not None:
            fn, future = task
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller through the future
                future.set_exception(exc)


def hidden_paths(candidates: Iterable[str | Path], keep: Iterable[str | Path]) -> list[Path]:
    """The existing ``candidates`` to hide, outermost first, minus any that would hide ``keep``.

    A candidate that is ``keep`` or one of its parents (the sandbox's work directory, node) is
    dropped; so is one inside another candidate (already hidden).
    """
    kept = [Path(k).resolve() for k in keep]
    chosen: list[Path] = []
    for raw in sorted({Path(c).resolve() for c in candidates if str(c).strip()}, key=str):
        if raw == Path("/") or not raw.exists():
            continue
        if any(k == raw or raw in k.parents for k in kept):
            continue
        if any(c in raw.parents for c in chosen):
            continue
        chosen.append(raw)
    return chosen


def confinement_argv(
    tools: dict[str, str],
    uid: int,
    gid: int,
    hide: Sequence[Path],
    *,
    pid_namespace: bool = True,
) -> list[str]:
    """The prefix that runs a command confined, as ``uid:gid``, the hidden paths gone.

    With ``pid_namespace`` the command is PID 1's child in a new PID namespace with its own
    ``/proc``: it sees only its own processes, and when it exits every process it left behind
    is killed by the kernel. Without it (long-lived servers whose pid the caller tracks), the
    command keeps the prefix's pid.
    """
    lines = ["set -e", "umask 077"]
    for path in hide:
        target = shlex.quote(str(path))
        if path.is_dir():
            lines.append(f"{tools['mount']} -t tmpfs -o {_HIDE_OPTIONS} twinme-hidden {target}")
        else:
            lines.append(f"{tools['mount']} --bind /dev/null {target}")
    lines.append(
        f"exec {tools['setpriv']} --reuid={uid} --regid={gid} --clear-groups --no-new-privs "
        '--inh-caps=-all --bounding-set=-all -- "$@"'
    )
    unshare = [tools["unshare"], "--mount", "--propagation", "private"]
    if pid_namespace:
        unshare += ["--pid", "--fork", "--kill-child", "--mount-proc"]
    return [*unshare, "--", tools["sh"], "-c", "\n".join(lines), "twinme-sandbox"]


def probe_confinement(tools: dict[str, str], uid: int, gid: int) -> None:
    """Run ``true`` confined once: a machine that cannot do it fails here with the reason."""
    argv = [*confinement_argv(tools, uid, gid, []), "/bin/true"]
    try:
        proc = subprocess.run(
            argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=30, cwd="/"
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise IsolationUnavailable(_fix(f"cannot run {tools['unshare']}: {exc}")) from None
    if proc.returncode != 0:
        detail = " ".join(proc.stderr.split())[:300]
        raise IsolationUnavailable(
            _fix(f"cannot create mount and PID namespaces for pushed code ({detail})")
        )


def give_tree(root: Path, uid: int, gid: int) -> None:
    """Make ``root`` and everything under it owned by ``uid:gid``, never following a symlink.

    The tree is a copy of a pushed commit: a symlink in it may point anywhere (``/etc/shadow``),
    so links themselves are re-owned (``lchown``), not what they point at.
    """
    os.lchown(root, uid, gid)
    for parent, dirs, files in os.walk(root):
        for name in (*dirs, *files):
            with contextlib.suppress(FileNotFoundError):
                os.lchown(os.path.join(parent, name), uid, gid)
