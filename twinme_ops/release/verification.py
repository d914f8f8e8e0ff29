"""Post-deployment verification: probes, dependency checks and a locust load-test gate.

The ``deployment_verification`` check calls :func:`verify_deployment`: ``/health`` and ``/ready``
must answer 200 (:mod:`twinme_ops.release.probes`), the database (``SELECT 1``) and Redis
(``PING``) checks supplied by the caller must succeed, and a ``locust --headless`` run against the
new version (:mod:`twinme_ops.release.load_test`) must meet the specification's targets (p95 <
200 ms, error rate < 0.1%). Every failure is collected with its reason, so one alert says
everything that is wrong. No Dagster definitions live here; the check wraps this.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from twinme_ops.common.log import Log
from twinme_ops.common.redact import redact, redact_url
from twinme_ops.release.load_test import (
    LoadTestError,
    LoadTestResult,
    LoadTestSettings,
    parse_stats_csv,
    run_load_test,
)
from twinme_ops.release.probes import ProbeResult, probe

_fallback_log = logging.getLogger("twinme_ops.verification")


@dataclass(frozen=True)
class StepResult:
    """One verification step: ``ok``, ``failed`` (the deployment is bad), ``error`` (the check
    itself could not run, e.g. locust missing) or ``skipped``."""

    name: str
    outcome: str
    reason: str = ""
    duration_ms: float | None = None


@dataclass
class VerificationResult:
    """Every step of :func:`verify_deployment`, in order, with the probes and load-test numbers."""

    base_url: str  # redacted
    steps: list[StepResult] = field(default_factory=list)
    probes: dict[str, ProbeResult] = field(default_factory=dict)
    load_test: LoadTestResult | None = None

    @property
    def failures(self) -> list[StepResult]:
        """Steps that failed or could not run."""
        return [s for s in self.steps if s.outcome in ("failed", "error")]

    @property
    def passed(self) -> bool:
        """Whether every step that ran succeeded and the load test ran."""
        return not self.failures

    @property
    def tooling_error(self) -> bool:
        """True when only the verification tooling failed (not the deployment): a caller may
        prefer alerting over rolling back a release nobody has shown to be bad."""
        fails = self.failures
        return bool(fails) and all(s.outcome == "error" for s in fails)

    @property
    def reasons(self) -> list[str]:
        """``"<step>: <reason>"`` for each failure."""
        return [f"{s.name}: {s.reason}" for s in self.failures]

    def summary(self) -> str:
        """A few lines for a person: verdict, then one line per step."""
        head = f"deployment verification of {self.base_url}: " + (
            "passed" if self.passed else f"FAILED ({len(self.failures)} problem(s))"
        )
        lines = [head]
        for s in self.steps:
            took = "" if s.duration_ms is None else f" [{s.duration_ms:.0f} ms]"
            lines.append(f"- {s.name}: {s.outcome}{took}" + (f": {s.reason}" if s.reason else ""))
        return "\n".join(lines)

    def to_metadata(self) -> dict[str, float | int | str | bool]:
        """Numbers for the UI's plots plus the verdict and the failure reasons."""
        md: dict[str, float | int | str | bool] = {
            "passed": self.passed,
            "failure_count": len(self.failures),
        }
        for path, p in self.probes.items():
            key = path.strip("/").replace("/", "_") or "root"
            if p.status is not None:
                md[f"{key}_status"] = p.status
            if p.latency_ms is not None:
                md[f"{key}_latency_ms"] = round(p.latency_ms, 2)
        for s in self.steps:
            if s.name in ("database", "redis") and s.duration_ms is not None:
                md[f"{s.name}_check_ms"] = round(s.duration_ms, 2)
        if self.load_test is not None:
            md.update(self.load_test.to_metadata())
        if self.failures:
            md["failures"] = "\n".join(self.reasons)
        return md


def _run_callable(name: str, check: Callable[[], None] | None, what: str) -> StepResult:
    if check is None:
        return StepResult(name, "skipped", "not configured")
    start = time.perf_counter()
    try:
        check()
    except Exception as e:  # any driver error means the dependency is not usable
        took = (time.perf_counter() - start) * 1000
        return StepResult(name, "failed", f"{what} failed: {redact(e) or type(e).__name__}", took)
    return StepResult(name, "ok", "", (time.perf_counter() - start) * 1000)


def verify_deployment(
    base_url: str,
    *,
    settings: LoadTestSettings | None = None,
    check_db: Callable[[], None] | None = None,
    check_redis: Callable[[], None] | None = None,
    log: Log | None = None,
    probe_paths: Iterable[str] = ("/health", "/ready"),
    load_paths: Sequence[str] = ("/health",),
    probe_timeout_s: float = 5,
    probe_retries: int = 2,
    probe_retry_delay_s: float = 1.0,
) -> VerificationResult:
    """Verify a deployment end to end and collect every failure with its reason.

    Steps: each probe path must answer 200; ``check_db`` (``SELECT 1``) and ``check_redis``
    (``PING``) must not raise (``None``: skipped); then the locust load test must meet the gates.
    The load test is skipped only when the service does not answer HTTP at all, since 30 s of
    connection errors would say nothing more.
    """
    logger: Log = _fallback_log if log is None else log
    result = VerificationResult(base_url=redact_url(base_url))

    def record(step: StepResult) -> None:
        result.steps.append(step)
        _log_step(logger, step)

    for path in probe_paths:
        p = probe(
            base_url,
            path,
            timeout_s=probe_timeout_s,
            retries=probe_retries,
            retry_delay_s=probe_retry_delay_s,
        )
        result.probes[path] = p
        record(
            StepResult(path, "ok" if p.ok else "failed", "" if p.ok else p.reason(), p.latency_ms)
        )
    record(_run_callable("database", check_db, "SELECT 1"))
    record(_run_callable("redis", check_redis, "PING"))
    if result.probes and not any(p.reachable for p in result.probes.values()):
        record(StepResult("load test", "skipped", "the service does not answer HTTP"))
    else:
        record(
            _load_test_step(result, base_url, settings or LoadTestSettings(), load_paths, logger)
        )
    logger.info(result.summary())
    return result


def _load_test_step(
    result: VerificationResult,
    base_url: str,
    settings: LoadTestSettings,
    load_paths: Sequence[str],
    logger: Log,
) -> StepResult:
    """Run the load test; its numbers go into ``result``, its verdict into the step returned."""
    start = time.perf_counter()
    try:
        lt = run_load_test(base_url, settings, load_paths, logger)
    except LoadTestError as e:
        return StepResult("load test", "error", redact(e), (time.perf_counter() - start) * 1000)
    result.load_test = lt
    return StepResult(
        "load test", "ok" if lt.passed else "failed", "; ".join(lt.reasons), lt.duration_s * 1000
    )


def _log_step(logger: Log, step: StepResult) -> None:
    if step.outcome in ("failed", "error"):
        logger.warning(f"verification {step.name}: {step.outcome}: {step.reason}")
    else:
        logger.info(
            f"verification {step.name}: {step.outcome}"
            + (f" ({step.reason})" if step.reason else "")
        )


# the probes and the load test moved to modules of their own; their names stay importable here
__all__ = [
    "LoadTestError",
    "LoadTestResult",
    "LoadTestSettings",
    "ProbeResult",
    "StepResult",
    "VerificationResult",
    "parse_stats_csv",
    "probe",
    "run_load_test",
    "verify_deployment",
]
