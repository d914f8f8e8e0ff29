"""A local HTTP app standing in for the TwinMe API: its latency, error rate and readiness are
set by the test, live. Verification and release tests deploy "against" it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class ControlledApp(ThreadingHTTPServer):
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
        assert isinstance(app, ControlledApp)
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
def app() -> Iterator[ControlledApp]:
    """A fresh app served from a thread; shut down after the test."""
    server = ControlledApp()
    thread = threading.Thread(target=server.serve_forever, name="verification-app", daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
