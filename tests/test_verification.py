"""Deployment verification against a real HTTP app on 127.0.0.1 whose latency and errors we set.

Each load test runs real ``locust --headless`` for a few seconds with few users, so the whole
module stays well under a minute on a 2-core machine.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from twinme_ops.lib.verification import (
    LoadTestError,
    LoadTestSettings,
    probe,
    run_load_test,
    verify_deployment,
)

# short but long enough for locust to collect a few hundred requests
FAST = LoadTestSettings(users=3, spawn_rate=3, duration_s=3, wait_s=0.02, stop_timeout_s=2)


class _App(ThreadingHTTPServer):
    """The app under test: every knob is read per request, so a test can change it live."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.delay_s = 0.0
        self.error_every_n = 0  # 0: never; n: every n-th request of the load paths answers 500
        self.ready_status = 200
        self._count = 0
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """Base URL of the app."""
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def next_is_error(self) -> bool:
        """Whether this request should fail, counting requests across threads."""
        with self._lock:
            self._count += 1
            return bool(self.error_every_n) and self._count % self.error_every_n == 0


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        app = self.server
        assert isinstance(app, _App)
        if app.delay_s:
            time.sleep(app.delay_s)
        if self.path == "/ready":
            status = app.ready_status
        elif self.path == "/health":
            status = 500 if app.next_is_error() else 200
        else:
            status = 404
        body = b'{"status":"ok"}' if status == 200 else b'{"status":"error"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # keep pytest output readable


@pytest.fixture
def app() -> Iterator[_App]:
    """A fresh app served from a thread; shut down after the test."""
    server = _App()
    thread = threading.Thread(target=server.serve_forever, name="verification-app", daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


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


def test_probe_reports_status_and_latency(app: _App) -> None:
    ok = probe(app.url, "/health", retries=0)
    assert ok.ok and ok.status == 200 and ok.latency_ms is not None and ok.attempts == 1
    app.ready_status = 503
    bad = probe(app.url, "/ready", retries=1, retry_delay_s=0.05)
    assert not bad.ok and bad.status == 503 and bad.attempts == 2
    assert "/ready answered HTTP 503" in bad.reason()


def test_probe_redacts_credentials(app: _App) -> None:
    url = app.url.replace("http://", "http://ops:hunter2secret@")
    result = probe(url + "/?token=abc123", "/nope", retries=0)
    assert "hunter2secret" not in result.url and "abc123" not in result.url
    assert "hunter2secret" not in result.reason()


def test_healthy_app_passes_with_numbers(app: _App, log: tuple[logging.Logger, _Recorder]) -> None:
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


def test_slow_app_fails_on_p95(app: _App) -> None:
    app.delay_s = 0.3
    settings = LoadTestSettings(users=2, spawn_rate=2, duration_s=3, wait_s=0.0, stop_timeout_s=2)
    result = run_load_test(app.url, settings)
    assert not result.passed
    assert result.p95_ms is not None and result.p95_ms >= 300
    assert any(r.startswith("p95 ") and r.endswith(">= 200 ms") for r in result.reasons), (
        result.reasons
    )
    assert result.failures == 0


def test_failing_app_fails_on_error_rate(app: _App) -> None:
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


def test_ready_503_fails_naming_ready(app: _App) -> None:
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


def test_locust_missing_is_a_clear_error(app: _App) -> None:
    missing = LoadTestSettings(duration_s=1, locust_executable="/nonexistent/bin/locust")
    with pytest.raises(LoadTestError, match=r"cannot start locust \(/nonexistent/bin/locust\)"):
        run_load_test(app.url, missing)
    result = verify_deployment(app.url, settings=missing)
    assert not result.passed and result.tooling_error
    assert result.reasons == [
        "load test: cannot start locust (/nonexistent/bin/locust): No such file or directory"
    ]


def test_locust_crash_is_a_clear_error(app: _App, tmp_path) -> None:
    fake = tmp_path / "locust"
    fake.write_text("#!/bin/sh\necho 'boom: bad option' >&2\nexit 2\n")
    fake.chmod(0o755)
    with pytest.raises(LoadTestError, match=r"(?s)exited with code 2 without statistics.*boom"):
        run_load_test(app.url, LoadTestSettings(duration_s=1, locust_executable=str(fake)))
