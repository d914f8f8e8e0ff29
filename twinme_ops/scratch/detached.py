"""A detached local process: started in a session of its own, found again from its pid file.

The WAL archive's receiver and heartbeat writer (:mod:`twinme_ops.backups.pitr.receiver`,
:mod:`~twinme_ops.backups.pitr.heartbeat_writer`) run this way: each outlives the step or command
that started it and keeps, in a directory of its own, a pid file, a JSON state file (what runs,
written when it starts) and a log. :class:`DetachedProcess` is that bookkeeping: whether it runs
(the pid file names a live process whose command line has the expected word, so a recycled pid
does not pass for it), its recorded state, starting it under the directory's lock, and stopping
it (SIGTERM, then SIGKILL after a timeout). :func:`pid_from_file` and :func:`stop_pid` are the
same checks for a process known only by its pid file (the sandbox's companions).

No Dagster in this module: it is plain library code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from twinme_ops.scratch.local import (
    CHILDREN,
    dir_lock,
    pid_alive,
    read_json_file,
    wait_pid_gone,
    write_json_atomic,
)


class _State(Protocol):
    pid: int


S = TypeVar("S", bound=_State)


def pid_from_file(pid_file: Path, hint: str | None) -> int | None:
    """The pid written in ``pid_file`` if that process is alive and its command line has
    ``hint``; None otherwise (no file, garbage, a dead or recycled pid)."""
    try:
        pid = int(Path(pid_file).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid, hint) else None


def stop_pid(pid: int, timeout_s: float) -> None:
    """SIGTERM ``pid``, SIGKILL it if it still runs after ``timeout_s``; a child of this process
    is reaped."""
    proc = CHILDREN.pop(pid, None)

    def gone(timeout: float) -> bool:
        if proc is None:
            return wait_pid_gone(pid, timeout)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGTERM)
    if not gone(timeout_s):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        gone(5.0)


@dataclass(frozen=True)
class DetachedProcess:
    """One detached process and its files in ``dir``: pid file, JSON state file and log."""

    dir: Path
    pid_name: str
    state_name: str
    log_name: str
    # a word of its command line, checked in /proc: a recycled pid does not pass for it
    hint: str

    @property
    def pid_file(self) -> Path:
        return self.dir / self.pid_name

    @property
    def state_file(self) -> Path:
        return self.dir / self.state_name

    @property
    def log_file(self) -> Path:
        return self.dir / self.log_name

    def pid(self) -> int | None:
        """The pid of the live process, or None."""
        return pid_from_file(self.pid_file, self.hint)

    def alive(self, pid: int) -> bool:
        """Whether ``pid`` is (still) this process."""
        return pid_alive(pid, self.hint)

    def state(self, cls: type[S]) -> S | None:
        """The recorded state as ``cls``, or None if it was never started here (or the file is
        not a ``cls``)."""
        data = read_json_file(self.state_file)
        if not data:
            return None
        with contextlib.suppress(TypeError):
            return cls(**data)
        return None

    def running(self, cls: type[S]) -> S | None:
        """The recorded state when the process it records is the one that runs, else None."""
        pid, state = self.pid(), self.state(cls)
        return state if pid is not None and state is not None and state.pid == pid else None

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the directory's lock: one process at a time starts this one."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with dir_lock(self.dir / ".lock"):
            yield

    def launch(
        self,
        argv: Sequence[str],
        *,
        what: str,
        env: Mapping[str, str],
        user: int | None = None,
        group: int | None = None,
        extra_groups: Sequence[int] | None = None,
    ) -> int:
        """Start ``argv`` in a session of its own (it outlives this process), its output
        appended to the log after a dated line naming ``what``; write the pid file. The pid."""
        with open(self.log_file, "ab") as log:
            log.write(f"--- {datetime.now(UTC).isoformat()} starting {what}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                env=dict(env),
                start_new_session=True,
                user=user,
                group=group,
                extra_groups=extra_groups,
            )
        # reaped by pid_alive or stop, never garbage-collected (a ResourceWarning) while it runs
        CHILDREN[proc.pid] = proc
        self.pid_file.write_text(f"{proc.pid}\n")
        return proc.pid

    def record(self, state: Any) -> None:
        """Write ``state`` (a dataclass) to the state file, atomically."""
        write_json_atomic(self.state_file, dataclasses.asdict(state))

    def log_tail(self, lines: int) -> str:
        """The log's last ``lines`` lines ("" if unreadable)."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def stop(self, timeout_s: float) -> bool:
        """Stop the process (SIGTERM; SIGKILL after ``timeout_s``); whether one was running.

        The pid file goes first, so nothing takes a process being stopped for a live one.
        """
        pid = self.pid()
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        if pid is None:
            return False
        stop_pid(pid, timeout_s)
        return True
