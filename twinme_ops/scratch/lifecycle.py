"""The lifecycle the throwaway servers share: start on a free port, find, attach, forget on stop.

:class:`ScratchServer` is the base of :class:`~twinme_ops.scratch.postgres.PostgresServer` and
:class:`~twinme_ops.scratch.redis.RedisServer`. Each server says where its lock and state files
are, how to recognise the one running from a directory and how to launch its process on a given
port; the base serialises the starts of one directory with a lock file, retries on another free
port when the one it picked was taken in the meantime, records a started server in its state
file (what :meth:`find` reads back in another process), and removes that file on stop.

No Dagster in this module: it is plain library code.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Self

from twinme_ops.scratch.local import (
    PORT_ATTEMPTS,
    LocalServerError,
    dir_lock,
    free_port,
    write_json_atomic,
)


class ScratchServer(ABC):
    """A local server started from a directory of its own and found again from that directory.

    Subclasses are dataclasses; they provide :meth:`find`, the lock and state file locations and
    what the state file holds, and build their ``start`` on :meth:`_start_lock` and
    :meth:`_launch_on_port`.
    """

    # ``attach``'s error when nothing runs from the directory, formatted with ``dir``
    NOT_RUNNING: ClassVar[str]

    # ---- what each server provides

    @classmethod
    @abstractmethod
    def find(cls, dir: Path, /, *, password: str | None = None) -> Self | None:
        """The server running from ``dir``, or None (stale pid and state files are ignored)."""

    @classmethod
    @abstractmethod
    def _lock_file(cls, dir: Path) -> Path:
        """The file whose lock serialises the starts of the server of ``dir``."""

    @classmethod
    @abstractmethod
    def _state_file(cls, dir: Path) -> Path:
        """Where the server of ``dir`` is recorded while it runs."""

    @property
    @abstractmethod
    def _dir(self) -> Path:
        """The directory this server runs from."""

    @abstractmethod
    def _state(self) -> Mapping[str, Any]:
        """What the state file records about this running server."""

    # ---- the shared lifecycle

    @classmethod
    def attach(cls, dir: Path, /, *, password: str | None = None) -> Self:
        """The server running from ``dir``; raises if none is running."""
        server = cls.find(dir, password=password)
        if server is None:
            raise LocalServerError(cls.NOT_RUNNING.format(dir=dir))
        return server

    @classmethod
    @contextlib.contextmanager
    def _start_lock(cls, dir: Path) -> Iterator[Path]:
        """Hold the lock of ``dir``'s server (one process at a time starts it); yields ``dir``
        made absolute. Another process may have started the server while we waited: callers
        look for it with :meth:`find` first."""
        dir = Path(dir).absolute()
        lock = cls._lock_file(dir)
        lock.parent.mkdir(parents=True, exist_ok=True)
        with dir_lock(lock):
            yield dir

    @classmethod
    def _launch_on_port(
        cls, port: int | None, launch: Callable[[int], tuple[Self | None, str]], failure: str
    ) -> Self:
        """``launch(port)`` (the server once it answers, else None and the server's error), or
        ``launch`` on a free port, retried on another one when that port was taken between
        picking and binding (the server's error says "already in use").

        The launched server is recorded in its state file. When no attempt succeeds, the
        :class:`LocalServerError` is ``failure`` followed by the last attempt's error.
        """
        last_error = ""
        for _ in range(PORT_ATTEMPTS if port is None else 1):
            server, last_error = launch(port if port is not None else free_port())
            if server is not None:
                server._write_state()
                return server
            if "already in use" not in last_error:
                break
        raise LocalServerError(f"{failure}\n{last_error}")

    def _write_state(self) -> None:
        write_json_atomic(self._state_file(self._dir), self._state())

    def _forget_state(self) -> None:
        """Remove the state file (the server was stopped): :meth:`find` no longer sees it."""
        with contextlib.suppress(FileNotFoundError):
            self._state_file(self._dir).unlink()
