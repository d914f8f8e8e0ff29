"""The load-test gate of a deployment: ``locust --headless`` against the new version.

:func:`run_load_test` runs locust as a subprocess (its gevent monkey-patching must not touch this
process) with the locustfile shipped in ``twinme_ops/release/locust/``, streams its output into
the caller's log, and reads its aggregated statistics back; :class:`LoadTestResult` judges them
against the specification's gates (p95 < 200 ms, error rate < 0.1%). A run with failed requests
is a result, not an error; :class:`LoadTestError` means the load test itself could not run.
"""

from __future__ import annotations

import csv
import importlib.resources
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from twinme_ops.common.log import Log
from twinme_ops.common.output_lines import read_bursts
from twinme_ops.common.redact import redact, redact_url

_fallback_log = logging.getLogger("twinme_ops.verification")

# the locustfile, shipped as package data (pyproject.toml), not imported
_LOCUSTFILE = "locust/locustfile.py"
# written by the locustfile when locust quits (the periodic CSV misses the last second)
_FINAL_CSV_NAME = "final_stats.csv"
_CSV_PREFIX = "locust"


class LoadTestError(RuntimeError):
    """The load test could not be run or produced no results (locust missing or crashed)."""


@dataclass(frozen=True)
class LoadTestSettings:
    """Load-test shape and gates. Defaults are the specification's: 10 users, 30 s, p95 < 200 ms,
    error rate < 0.1%."""

    users: int = 10
    spawn_rate: float = 10
    duration_s: int = 30
    p95_ms: float = 200
    max_error_rate: float = 0.001
    # pause of each simulated user between two rounds of requests
    wait_s: float = 0.1
    # in-flight requests get this long to finish when the run time is over
    stop_timeout_s: int = 5
    # None: the ``locust`` next to this interpreter, else the one on PATH
    locust_executable: str | None = None


@dataclass(frozen=True)
class LoadTestResult:
    """Aggregated locust statistics and the verdict against the settings' gates."""

    requests: int
    failures: int
    p95_ms: float | None
    median_ms: float | None
    average_ms: float | None
    max_ms: float | None
    rps: float
    duration_s: float
    settings: LoadTestSettings
    exit_code: int = 0

    @property
    def error_rate(self) -> float:
        """Failures over requests; 1.0 when no request completed."""
        return self.failures / self.requests if self.requests else 1.0

    @property
    def reasons(self) -> list[str]:
        """Why the run fails its gates (empty when it passes)."""
        s = self.settings
        out: list[str] = []
        if self.requests == 0:
            return ["no request completed during the load test"]
        if self.p95_ms is None or self.p95_ms >= s.p95_ms:
            shown = "n/a" if self.p95_ms is None else f"{self.p95_ms:g}"
            out.append(f"p95 {shown} ms >= {s.p95_ms:g} ms")
        if self.error_rate >= s.max_error_rate:
            out.append(
                f"error rate {_pct(self.error_rate)} >= {_pct(s.max_error_rate)} "
                f"({self.failures} of {self.requests} requests failed)"
            )
        return out

    @property
    def passed(self) -> bool:
        """Whether every gate is met."""
        return not self.reasons

    def to_metadata(self) -> dict[str, float | int]:
        """Numbers worth plotting over time (latencies in ms)."""
        md: dict[str, float | int] = {
            "load_requests": self.requests,
            "load_failures": self.failures,
            "load_error_rate_pct": round(self.error_rate * 100, 4),
            "load_rps": round(self.rps, 2),
            "load_users": self.settings.users,
            "load_duration_s": round(self.duration_s, 2),
            "load_p95_gate_ms": self.settings.p95_ms,
        }
        for key, value in (
            ("load_p95_ms", self.p95_ms),
            ("load_median_ms", self.median_ms),
            ("load_average_ms", self.average_ms),
            ("load_max_ms", self.max_ms),
        ):
            if value is not None:
                md[key] = round(value, 2)
        return md

    def summary(self) -> str:
        """One line for the run's log: counts, p95, throughput and the verdict."""
        p95 = "n/a" if self.p95_ms is None else f"{self.p95_ms:g} ms"
        return (
            f"load test: {self.requests} requests, {self.failures} failures "
            f"({_pct(self.error_rate)}), p95 {p95}, {self.rps:.1f} req/s: "
            + ("passed" if self.passed else "FAILED: " + "; ".join(self.reasons))
        )


def _pct(rate: float) -> str:
    return f"{rate * 100:.3g}%"


def _locust_command(settings: LoadTestSettings) -> str:
    if settings.locust_executable:
        return settings.locust_executable
    beside = Path(sys.executable).parent / "locust"
    if beside.exists():
        return str(beside)
    found = shutil.which("locust")
    if not found:
        raise LoadTestError(
            "locust is not installed (no `locust` next to the Python interpreter or on PATH); "
            "install it with `pip install locust`"
        )
    return found


def _number(value: str | None) -> float | None:
    if value is None or value.strip() in ("", "N/A"):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def parse_stats_csv(path: Path) -> dict[str, float | None]:
    """The ``Aggregated`` row of a locust ``*_stats.csv`` as numbers.

    Keys: ``requests``, ``failures``, ``median_ms``, ``average_ms``, ``max_ms``, ``p95_ms``,
    ``rps``.
    Raises :class:`LoadTestError` when the file has no ``Aggregated`` row.
    """
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get("Name") == "Aggregated":
                return {
                    "requests": _number(row.get("Request Count")),
                    "failures": _number(row.get("Failure Count")),
                    "median_ms": _number(row.get("Median Response Time")),
                    "average_ms": _number(row.get("Average Response Time")),
                    "max_ms": _number(row.get("Max Response Time")),
                    "p95_ms": _number(row.get("95%")),
                    "rps": _number(row.get("Requests/s")),
                }
    raise LoadTestError(f"no Aggregated row in locust's stats file {path.name}")


def run_load_test(
    base_url: str,
    settings: LoadTestSettings | None = None,
    paths: Sequence[str] = ("/health",),
    log: Log | None = None,
) -> LoadTestResult:
    """Run ``locust --headless`` against ``base_url`` and return its aggregated statistics.

    locust runs as a subprocess (its gevent monkey-patching must not touch this process) with the
    shipped locustfile copied into a temporary directory; its output is streamed into ``log``. A
    run with failed requests is a result, not an error (locust exits 1 then). Raises
    :class:`LoadTestError` when locust is missing, hangs, or leaves no statistics.
    """
    settings = settings or LoadTestSettings()
    logger: Log = _fallback_log if log is None else log
    command = _locust_command(settings)
    with tempfile.TemporaryDirectory(prefix="twinme-locust-") as tmp:
        work = Path(tmp)
        locustfile = work / "locustfile.py"
        locustfile.write_text(
            importlib.resources.files("twinme_ops.release").joinpath(_LOCUSTFILE).read_text()
        )
        logger.info(
            f"load test: {settings.users} users (spawn rate {settings.spawn_rate:g}/s) for "
            f"{settings.duration_s} s against {redact_url(base_url)} paths {', '.join(paths)}"
        )
        started = time.monotonic()
        exit_code, tail = _run_locust(
            [command, "-f", str(locustfile), *_locust_options(base_url, settings, work)],
            _locust_env(paths, settings, work),
            work,
            logger,
            # gevent shutdown plus interpreter start: a bound so a wedged locust cannot hang the run
            hard_timeout_s=settings.duration_s + settings.stop_timeout_s + 60,
        )
        elapsed = time.monotonic() - started
        stats = parse_stats_csv(_stats_file(work, exit_code, tail))
    result = LoadTestResult(
        requests=int(stats["requests"] or 0),
        failures=int(stats["failures"] or 0),
        p95_ms=stats["p95_ms"],
        median_ms=stats["median_ms"],
        average_ms=stats["average_ms"],
        max_ms=stats["max_ms"],
        rps=stats["rps"] or 0.0,
        duration_s=elapsed,
        settings=settings,
        exit_code=exit_code,
    )
    logger.info(result.summary())
    return result


def _locust_options(base_url: str, settings: LoadTestSettings, work: Path) -> list[str]:
    """locust's command-line options: headless, the settings' shape, CSV statistics in ``work``."""
    return [
        "--headless",
        "--host",
        base_url.rstrip("/"),
        "--users",
        str(settings.users),
        "--spawn-rate",
        f"{settings.spawn_rate:g}",
        "--run-time",
        f"{settings.duration_s}s",
        "--stop-timeout",
        f"{settings.stop_timeout_s}s",
        "--csv",
        str(work / _CSV_PREFIX),
        "--only-summary",
    ]


def _locust_env(paths: Sequence[str], settings: LoadTestSettings, work: Path) -> dict[str, str]:
    """This process's environment plus the locustfile's settings."""
    env = dict(os.environ)
    env.update(
        TWINME_LOCUST_PATHS=json.dumps(list(paths)),
        TWINME_LOCUST_WAIT_S=str(settings.wait_s),
        TWINME_LOCUST_FINAL_CSV=str(work / _FINAL_CSV_NAME),
    )
    return env


def _run_locust(
    argv: list[str], env: dict[str, str], work: Path, logger: Log, *, hard_timeout_s: float
) -> tuple[int, list[str]]:
    """Run locust to its end in ``work``: its exit code and its last output lines."""
    try:
        # cwd: keep locust from reading a locust.conf or pyproject.toml of the caller's cwd
        proc = subprocess.Popen(
            argv,
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    except OSError as e:
        raise LoadTestError(f"cannot start locust ({argv[0]}): {e.strerror or e}") from e
    tail: list[str] = []
    reader = threading.Thread(
        target=_pump, args=(proc, logger, tail), name="locust-output", daemon=True
    )
    reader.start()
    try:
        return proc.wait(timeout=hard_timeout_s), tail
    except subprocess.TimeoutExpired as e:
        _kill_group(proc)
        raise LoadTestError(f"locust did not finish within {hard_timeout_s} s; killed") from e
    finally:
        reader.join(timeout=5)


def _stats_file(work: Path, exit_code: int, tail: list[str]) -> Path:
    """The statistics locust left: the final ones, else its periodic CSV."""
    for stats_file in (work / _FINAL_CSV_NAME, work / f"{_CSV_PREFIX}_stats.csv"):
        if stats_file.exists():
            return stats_file
    raise LoadTestError(
        f"locust exited with code {exit_code} without statistics; last output:\n"
        + "\n".join(tail[-15:])
    )


def _pump(proc: subprocess.Popen[str], logger: Log, tail: list[str]) -> None:
    """Forward locust's output lines (redacted) to ``logger``, keeping the last ones for errors."""
    assert proc.stdout is not None
    for burst in read_bursts(proc.stdout):
        lines = [line for line in (redact(raw.rstrip()) for raw in burst) if line]
        if not lines:
            continue
        # the lines printed together (its statistics table) make one message of the run's log
        logger.info("\n".join(f"locust: {line}" for line in lines))
        tail.extend(lines)
        if len(tail) > 50:
            del tail[:-50]


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill locust and anything it started (it runs in its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait(timeout=10)
