"""A real HTTP server on 127.0.0.1 that speaks the parts of Elasticsearch's REST API the log
shipper and its setup script use: ``POST /_bulk`` (NDJSON: an action line, then the document),
``PUT /_ilm/policy/<name>`` and ``PUT /_index_template/<name>``, and ``GET /`` (the version).

Neither Elasticsearch nor OpenSearch can be installed on these machines (docs/logging.md); this
receiver parses what a real server would receive and answers as Elasticsearch 8 does, so the
shipper's real process and configuration are what is tested.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class BulkDocument:
    """One document of a ``_bulk`` request: its operation, target index and body."""

    operation: str
    index: str
    body: dict[str, Any]


@dataclass
class ElasticsearchReceiver:
    """Records bulk documents and the objects PUT; ``auth`` holds each request's Basic user."""

    documents: list[BulkDocument] = field(default_factory=list)
    objects: dict[str, Any] = field(default_factory=dict)
    auth: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, status: int, payload: Any) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def _record_auth(self) -> None:
                header = self.headers.get("Authorization", "")
                if header.startswith("Basic "):
                    user = base64.b64decode(header[6:]).decode().split(":", 1)[0]
                    receiver.auth.append(user)

            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                self._record_auth()
                if self.path.startswith("/_cat/health"):
                    self._answer(200, [{"status": "green"}])
                    return
                self._answer(200, {"version": {"number": "8.15.0"}, "tagline": "test"})

            def do_HEAD(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_PUT(self) -> None:  # noqa: N802
                self._record_auth()
                body = self._body()
                with receiver.lock:
                    receiver.objects[self.path.split("?")[0]] = json.loads(body)
                self._answer(200, {"acknowledged": True})

            def do_POST(self) -> None:  # noqa: N802
                self._record_auth()
                body = self._body()
                if not self.path.split("?")[0].endswith("/_bulk"):
                    self._answer(404, {"error": f"no handler for {self.path}"})
                    return
                lines = [line for line in body.decode().split("\n") if line.strip()]
                items = []
                with receiver.lock:
                    for action_line, doc_line in zip(lines[::2], lines[1::2], strict=True):
                        ((operation, meta),) = json.loads(action_line).items()
                        receiver.documents.append(
                            BulkDocument(operation, meta.get("_index", ""), json.loads(doc_line))
                        )
                        items.append({operation: {"_index": meta.get("_index"), "status": 201}})
                self._answer(200, {"took": 1, "errors": False, "items": items})

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[BulkDocument]:
        """The documents received, once there are at least ``count`` (or the timeout passed)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.documents) >= count:
                    return list(self.documents)
            time.sleep(0.1)
        with self.lock:
            return list(self.documents)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def es_receiver() -> Iterator[ElasticsearchReceiver]:
    receiver = ElasticsearchReceiver()
    yield receiver
    receiver.close()
