"""A real HTTP receiver on 127.0.0.1 that plays a Slack incoming webhook."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class SlackReceiver:
    """Records every message posted; can answer the next posts with error statuses.

    ``fail_next`` lists the statuses of the next answers (e.g. ``[429, 500, 500]``); a 429 carries
    ``Retry-After: retry_after``. ``messages`` holds the accepted texts, ``payloads`` the accepted
    JSON bodies (text and blocks), ``raw`` every body received, accepted or not.
    """

    def __init__(self) -> None:
        self.messages: list[str] = []
        self.payloads: list[dict] = []
        self.raw: list[bytes] = []
        self.fail_next: list[int] = []
        self.retry_after = "0"
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.raw.append(body)
                if receiver.fail_next:
                    status = receiver.fail_next.pop(0)
                    self.send_response(status)
                    if status == 429:
                        self.send_header("Retry-After", receiver.retry_after)
                    self.end_headers()
                    self.wfile.write(b"rate_limited" if status == 429 else b"error")
                    return
                payload = json.loads(body)
                receiver.payloads.append(payload)
                receiver.messages.append(payload.get("text", ""))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = (
            f"http://127.0.0.1:{self.server.server_address[1]}/services/T000/B000/secrettoken"
        )
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def slack_receiver() -> Iterator[SlackReceiver]:
    receiver = SlackReceiver()
    yield receiver
    receiver.close()
