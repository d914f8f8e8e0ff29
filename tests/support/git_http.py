"""A Git smart-HTTP server on 127.0.0.1 that wants a token: git's own ``git http-backend`` (CGI)
behind HTTP basic authentication, serving the bare repositories under one folder.

A remote such as ``http://x-access-token:<token>@127.0.0.1:<port>/remote.git`` is then read by
the real git client the way GitHub's is, the token travelling in the URL.
"""

from __future__ import annotations

import base64
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

GIT_TOKEN = "ghp_audit-t0ken-Zq81x"  # a fake token: it must appear nowhere


class GitHttpServer:
    """Serves ``root``'s bare repositories to clients whose password is ``token``."""

    def __init__(self, root: Path, user: str = "x-access-token", token: str = GIT_TOKEN) -> None:
        self.root, self.user, self.token = root, user, token
        self.requests: list[str] = []  # "METHOD path status", what git asked
        backend = subprocess.run(
            ["git", "--exec-path"], capture_output=True, text=True, check=True
        ).stdout.strip()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def _serve(self) -> None:
                expected = base64.b64encode(f"{server.user}:{server.token}".encode()).decode()
                if self.headers.get("Authorization") != f"Basic {expected}":
                    server.requests.append(f"{self.command} {self.path} 401")
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                url = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                env = {
                    "PATH": "/usr/bin:/bin",
                    "GIT_PROJECT_ROOT": str(server.root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": url.path,
                    "QUERY_STRING": url.query,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "REMOTE_USER": server.user,
                    "REMOTE_ADDR": "127.0.0.1",
                    "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                    "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                }
                proc = subprocess.run(
                    [f"{backend}/git-http-backend"], input=body, env=env, capture_output=True
                )
                head, _, payload = proc.stdout.partition(b"\r\n\r\n")
                status = 200
                headers: list[tuple[str, str]] = []
                for line in head.decode("latin-1").split("\r\n"):
                    name, _, value = line.partition(":")
                    if name.lower() == "status":
                        status = int(value.strip().split()[0])
                    elif name:
                        headers.append((name, value.strip()))
                server.requests.append(f"{self.command} {self.path} {status}")
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = _serve
            do_POST = _serve

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, repo: str, *, with_token: bool = True) -> str:
        """The remote URL of ``root/<repo>``, carrying the token unless told otherwise."""
        auth = f"{self.user}:{self.token}@" if with_token else ""
        return f"http://{auth}127.0.0.1:{self.port}/{repo}"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def git_http_server(tmp_path: Path) -> Iterator[GitHttpServer]:
    """A token-protected Git HTTP server for the bare repositories under ``tmp_path``."""
    server = GitHttpServer(tmp_path)
    try:
        yield server
    finally:
        server.close()
