"""The application's own test commands, run in a checkout with their output streamed to a log.

The defaults are the specification's CI steps. ``npm audit`` asks the npm registry for
advisories, so it needs the network: environments without it (air-gapped CI, tests) pass
:data:`OFFLINE_COMMANDS` instead of :data:`DEFAULT_COMMANDS`.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from twinme_ops.lib.output_lines import read_bursts
from twinme_ops.lib.redact import redact

OFFLINE_COMMANDS: tuple[str, ...] = ("npm ci", "npm run test:ci", "npm run test:integration")
DEFAULT_COMMANDS: tuple[str, ...] = (*OFFLINE_COMMANDS, "npm audit --audit-level moderate")

# Non-interactive, uncoloured output; npm ci must not call the registry for audit or funding
# messages (npm audit, when listed, still does)
TEST_ENV: dict[str, str] = {
    "CI": "true",
    "FORCE_COLOR": "0",
    "NO_COLOR": "1",
    "npm_config_audit": "false",
    "npm_config_fund": "false",
    "npm_config_update_notifier": "false",
}

TAIL_LINES = 20


class LineLogger(Protocol):
    """What :func:`run_commands` needs from a logger (``logging.Logger``, Dagster's log)."""

    def info(self, msg: str) -> object: ...


@dataclass(frozen=True)
class CommandResult:
    """One command's outcome."""

    command: str
    exit_code: int
    duration_s: float
    tail: tuple[str, ...] = field(default=())
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        """Whether the command succeeded."""
        return self.exit_code == 0 and not self.timed_out


class AppTestsFailed(Exception):
    """A test command failed: names the command, its exit code and its last output lines."""

    def __init__(self, failed: CommandResult, results: Sequence[CommandResult]) -> None:
        self.failed = failed
        self.results = list(results)
        if failed.timed_out:
            why = f"timed out after {failed.duration_s:.0f} s"
        else:
            why = f"exited with code {failed.exit_code} after {failed.duration_s:.1f} s"
        tail = "\n".join(failed.tail) or "(no output)"
        super().__init__(f"app tests failed: `{failed.command}` {why}. Last lines:\n{tail}")


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill the command and everything it started (npm runs node, node may start servers)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_command(
    command: str,
    cwd: str | Path,
    env: Mapping[str, str] | None = None,
    log: LineLogger | None = None,
    timeout: float = 900,
) -> CommandResult:
    """Run one command (split like a shell would, no shell), streaming each line to ``log``."""
    logger: LineLogger = log or logging.getLogger("twinme_ops.app_tests")
    full_env = {**os.environ, **TEST_ENV, **(env or {})}
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    logger.info(f"$ {command}")
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            shlex.split(command),
            cwd=cwd,
            env=full_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,  # its own process group, so a timeout kills the whole tree
        )
    except (FileNotFoundError, PermissionError) as exc:
        line = redact(f"cannot start `{command}`: {exc}")
        logger.info(line)
        return CommandResult(command, 127, time.monotonic() - start, (line,))
    timed_out = threading.Event()

    def on_timeout() -> None:
        timed_out.set()
        _kill_group(proc)

    watchdog = threading.Timer(timeout, on_timeout)
    watchdog.daemon = True
    watchdog.start()
    try:
        assert proc.stdout is not None
        for burst in read_bursts(proc.stdout):
            lines = [redact(raw) for raw in burst]
            tail.extend(lines)
            # the lines printed together make one message: one event of the run's log
            logger.info("\n".join(lines))
        exit_code = proc.wait()
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            _kill_group(proc)
            proc.wait()
    # a test server left running in the group would keep ports busy for the next command
    _kill_group(proc)
    duration = time.monotonic() - start
    result = CommandResult(command, exit_code, duration, tuple(tail), timed_out.is_set())
    logger.info(
        f"`{command}`: {'ok' if result.ok else 'FAILED'} (exit {exit_code}, {duration:.1f} s)"
    )
    return result


def run_commands(
    commands: Sequence[str],
    cwd: str | Path,
    env: Mapping[str, str] | None = None,
    log: LineLogger | None = None,
    timeout: float = 900,
) -> list[CommandResult]:
    """Run ``commands`` in order in ``cwd``; each has ``timeout`` seconds.

    Every output line goes to ``log`` as it is printed. The first failing command stops the
    sequence with :class:`AppTestsFailed`; on success the results of all commands are returned.
    """
    results: list[CommandResult] = []
    for command in commands:
        result = run_command(command, cwd, env=env, log=log, timeout=timeout)
        results.append(result)
        if not result.ok:
            raise AppTestsFailed(result, results)
    return results
