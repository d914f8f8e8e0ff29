"""Run a function as an unprivileged user, so that permission checks are the kernel's own.

As root, a forked child drops to ``nobody`` and runs the function with the interpreter that is
already loaded. The modules it needs are imported before dropping privileges: the Python here
may live under a directory that other users cannot read (e.g. pyenv under /root).
"""

from __future__ import annotations

import encodings.ascii  # noqa: F401
import encodings.idna  # noqa: F401
import encodings.latin_1  # noqa: F401
import importlib.readers  # noqa: F401
import importlib.resources  # noqa: F401
import os
import secrets  # noqa: F401
import traceback
from collections.abc import Callable

import redis.connection  # noqa: F401

NOBODY = 65534


def run_unprivileged(fn: Callable[[], str]) -> str:
    """``fn()``'s result, or ``"<ExceptionName>: message"``, run as uid/gid 65534 when root."""
    if os.geteuid() != 0:
        try:
            return fn()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop root, run, report through the pipe, never return to pytest
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            result = fn()
        except BaseException as exc:
            result = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
        finally:
            os.write(write_end, result.encode())  # type: ignore[possibly-undefined]
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        output = pipe.read().decode()
    os.waitpid(pid, 0)
    return output
