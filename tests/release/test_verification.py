"""Deployment verification against a real HTTP app on 127.0.0.1 whose latency and errors we set.

Each load test runs real ``locust --headless`` for a few seconds with few users, so the whole
module stays well under a minute on a 2-core machine.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest

from tests.support.api_app import ControlledApp
from twinme_ops.release.load_test import LoadTestError, LoadTestSettings, run_load_test
from twinme_ops.release.probes import probe
from twinme_ops.release.verification import verify_deployment

# short but long enough for locust to collect a few hundred requests
FAST = LoadTestSettings(users=3, spawn_rate=3, duration_s=3, wait_s=0.02, stop_timeout_s=2)


class _Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def log() -> Iterator[tuple[logging.Logger, _Recorder]]:
    """A logger whose messages the test can read."""
    logger = logging.getLogger("tests.verification")
    logger.setLevel(logging.INFO)
    rec = _Recorder()
    logger.addHandler(rec)
    yield logger, rec
    logger.removeHandler(rec)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_probe_reports_status_and_latency(app: ControlledApp) -> None:
    ok = probe(app.url, "/health", retries=0)
    assert ok.ok and ok.status == 200 and ok.latency_ms is not None and ok.attempts == 1
    app.ready_status = 503
    bad = probe(app.url, "/ready", retries=1, retry_delay_s=0.05)
    assert not bad.ok and bad.status == 503 and bad.attempts == 2
    assert "/ready answered HTTP 503" in bad.reason()


def test_probe_redacts_credentials(app: ControlledApp) -> None:
    url = app.url.replace("http://", "http://ops:hunter2secret@")
    result = probe(url + "/?token=abc123", "/nope", retries=0)
    assert "hunter2secret" not in result.url and "abc123" not in result.url
    assert "hunter2secret" not in result.reason()


def test_healthy_app_passes_with_numbers(
    app: ControlledApp, log: tuple[logging.Logger, _Recorder]
) -> None:
    logger, rec = log
    calls: list[str] = []
    result = verify_deployment(
        app.url,
        settings=FAST,
        check_db=lambda: calls.append("SELECT 1"),
        check_redis=lambda: calls.append("PING"),
        log=logger,
    )
    assert result.passed, result.summary()
    assert calls == ["SELECT 1", "PING"]
    lt = result.load_test
    assert lt is not None and lt.passed and lt.reasons == []
    assert lt.requests > 50 and lt.failures == 0
    assert lt.p95_ms is not None and 0 < lt.p95_ms < 200
    md = result.to_metadata()
    assert md["passed"] is True and md["failure_count"] == 0
    assert md["health_status"] == 200 and md["ready_status"] == 200
    for key in (
        "load_requests",
        "load_p95_ms",
        "load_median_ms",
        "load_rps",
        "load_error_rate_pct",
    ):
        assert isinstance(md[key], int | float), key
    assert md["load_requests"] == lt.requests and md["load_error_rate_pct"] == 0
    assert "passed" in result.summary()
    # locust's own output reached the log
    assert any(line.startswith("locust: ") for line in rec.lines)


def test_slow_app_fails_on_p95(app: ControlledApp) -> None:
    app.delay_s = 0.3
    settings = LoadTestSettings(users=2, spawn_rate=2, duration_s=3, wait_s=0.0, stop_timeout_s=2)
    result = run_load_test(app.url, settings)
    assert not result.passed
    assert result.p95_ms is not None and result.p95_ms >= 300
    assert any(r.startswith("p95 ") and r.endswith(">= 200 ms") for r in result.reasons), (
        result.reasons
    )
    assert result.failures == 0


def test_failing_app_fails_on_error_rate(app: ControlledApp) -> None:
    app.error_every_n = 10
    # /health probes are fine most of the time: retries absorb the odd 500
    result = verify_deployment(app.url, settings=FAST, probe_retry_delay_s=0.05)
    assert not result.passed
    lt = result.load_test
    assert lt is not None and lt.failures > 0
    assert 0.05 < lt.error_rate < 0.15
    reasons = " | ".join(result.reasons)
    assert "load test: error rate " in reasons and ">= 0.1%" in reasons, reasons
    assert not any(r.startswith("load test: p95") for r in result.reasons)


def test_ready_503_fails_naming_ready(app: ControlledApp) -> None:
    app.ready_status = 503
    result = verify_deployment(
        app.url,
        settings=FAST,
        check_redis=lambda: (_ for _ in ()).throw(ConnectionError("Connection refused")),
        probe_retries=1,
        probe_retry_delay_s=0.05,
    )
    assert not result.passed and not result.tooling_error
    names = [s.name for s in result.failures]
    # every failure is collected, not only the first; the load test of /health still passes
    assert names == ["/ready", "redis"], result.summary()
    assert "/ready answered HTTP 503" in result.reasons[0]
    assert "PING failed: Connection refused" in result.reasons[1]
    assert result.load_test is not None and result.load_test.passed
    assert "/ready" in result.summary() and "FAILED" in result.summary()
    assert result.to_metadata()["ready_status"] == 503


def test_unreachable_url_fails_clearly() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    started = time.monotonic()
    result = verify_deployment(
        url, settings=FAST, probe_timeout_s=1, probe_retries=1, probe_retry_delay_s=0.05
    )
    assert time.monotonic() - started < 5  # no 3 s load test against nothing
    assert not result.passed
    assert [s.name for s in result.failures] == ["/health", "/ready"]
    assert "/health unreachable at http://127.0.0.1:" in result.reasons[0]
    assert "refused" in result.reasons[0].lower()
    load = [s for s in result.steps if s.name == "load test"][0]
    assert load.outcome == "skipped" and "does not answer HTTP" in load.reason


def test_locust_missing_is_a_clear_error(app: ControlledApp) -> None:
    missing = LoadTestSettings(duration_s=1, locust_executable="/nonexistent/bin/locust")
    with pytest.raises(LoadTestError, match=r"cannot start locust \(/nonexistent/bin/locust\)"):
        run_load_test(app.url, missing)
    result = verify_deployment(app.url, settings=missing)
    assert not result.passed and result.tooling_error
    assert result.reasons == [
        "load test: cannot start locust (/nonexistent/bin/locust): No such file or directory"
    ]


def test_locust_crash_is_a_clear_error(app: ControlledApp, tmp_path) -> None:
    fake = tmp_path / "locust"
    fake.write_text("#!/bin/sh\necho 'boom: bad option' >&2\nexit 2\n")
    fake.chmod(0o755)
    with pytest.raises(LoadTestError, match=r"(?s)exited with code 2 without statistics.*boom"):
        run_load_test(app.url, LoadTestSettings(duration_s=1, locust_executable=str(fake)))
