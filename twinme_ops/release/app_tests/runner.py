"""The application's own test commands, run in a checkout with their output streamed to a log.

The defaults are the specification's CI steps. ``npm audit`` asks the npm registry for
advisories, so it needs the network: environments without it (air-gapped CI, tests) pass
:data:`OFFLINE_COMMANDS` instead of :data:`DEFAULT_COMMANDS`.

The commands are the pushed commit's code: they never inherit this process's environment (which
holds DATABASE_URL, the AWS keys, the backup key, the Slack webhook, the git token...). They get
:func:`clean_env`: an allowlist (PATH, LANG/LC_ALL/TZ, CI=true, NODE_ENV=test, :data:`TEST_ENV`)
plus what the caller passes. Where and as whom they run is the runner's business:
:mod:`twinme_ops.release.app_tests.local` (network namespace, unprivileged user) and
:mod:`twinme_ops.release.app_tests.k8s` (a Job in the build namespace) build on :func:`run_command`
and :class:`AppTestsFailed`.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from twinme_ops.common.log import Log
from twinme_ops.common.output_lines import read_bursts
from twinme_ops.common.redact import redact

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

# the only variables of this process the commands see (when set): nothing secret
PASSED_THROUGH = ("LANG", "LC_ALL", "TZ")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def clean_env(extra: Mapping[str, str] | None = None, *, path: str | None = None) -> dict[str, str]:
    """The whole environment of an app command: an allowlist, then ``extra``.

    Nothing else of ``os.environ`` is inherited. ``path`` replaces this process's PATH.
    """
    env = {
        "PATH": path or os.environ.get("PATH") or DEFAULT_PATH,
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        "NODE_ENV": "test",
        **TEST_ENV,
    }
    env.update({name: os.environ[name] for name in PASSED_THROUGH if os.environ.get(name)})
    env.update(extra or {})
    return env


# how a command is started: ``subprocess.Popen``'s signature (a runner may start it elsewhere,
# e.g. from a thread in another network namespace)
Spawn = Callable[..., "subprocess.Popen[str]"]


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


class AppTestsUnavailable(RuntimeError):
    """The tests could not be run at all (no isolation here, cluster error); names the fix."""


class AppTestRunner(dg.ConfigurableResource):
    """Where the pushed commit's commands run: subclassed by the local and Kubernetes runners."""

    def run(
        self,
        checkout: Path,
        *,
        sha: str,
        commands: Sequence[str],
        log: Log,
        timeout_s: float = 900,
        run_id: str = "",
    ) -> list[CommandResult]:
        """Run ``commands`` on ``checkout`` (commit ``sha``); raise :class:`AppTestsFailed` at
        the first failure, :class:`AppTestsUnavailable` when they cannot run at all."""
        raise NotImplementedError


def combine(command: str, parts: Sequence[CommandResult]) -> CommandResult:
    """One command's result from the steps it was run as (e.g. ``npm ci`` in two phases)."""
    last = next((r for r in parts if not r.ok), parts[-1])
    duration = sum(r.duration_s for r in parts)
    return CommandResult(command, last.exit_code, duration, last.tail, last.timed_out)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill the command and everything it started (npm runs node, node may start servers)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_command(
    command: str,
    cwd: str | Path,
    env: Mapping[str, str] | None = None,
    log: Log | None = None,
    timeout: float = 900,
    *,
    full_env: Mapping[str, str] | None = None,
    prefix: Sequence[str] = (),
    spawn: Spawn | None = None,
) -> CommandResult:
    """Run one command (split like a shell would, no shell), streaming each line to ``log``.

    Its environment is :func:`clean_env` plus ``env``, or exactly ``full_env``. ``prefix`` is
    put before the command's arguments (a confinement wrapper); ``spawn`` starts the process
    (default ``subprocess.Popen``).
    """
    logger: Log = logging.getLogger("twinme_ops.app_tests") if log is None else log
    environment = dict(full_env) if full_env is not None else clean_env(env)
    tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    logger.info(f"$ {command}")
    start = time.monotonic()
    popen: Any = spawn or subprocess.Popen
    try:
        proc = popen(
            [*prefix, *shlex.split(command)],
            cwd=cwd,
            env=environment,
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
    log: Log | None = None,
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
