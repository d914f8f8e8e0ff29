"""The production nginx config (deploy/nginx/), run by the real nginx in front of a real upstream.

The files are rendered into a temporary directory with only the values marked ``# @test: <key>``
replaced (listen addresses, certificate paths, upstream address, pid / log / temp paths, user):
everything else is what production runs. nginx serves on free loopback ports with a self-signed
certificate made by ``openssl``, in front of a small HTTP app on a thread, and is stopped (with
every worker) by a finalizer.
"""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from twinme_ops.scratch.local import LOCALHOST, free_port

NGINX_SRC = Path(__file__).resolve().parents[2] / "deploy" / "nginx"
NGINX = "/usr/sbin/nginx"
SYSTEM_MIME_TYPES = Path("/etc/nginx/mime.types")
SERVER_NAME = "api.twinme.ai"
MARKER = "# @test:"
MARKED_LINE = re.compile(
    r"^(?P<indent>[ \t]*)(?P<directive>[a-z_0-9]+)[ \t]+(?P<value>[^\s;]+)"
    r"(?P<rest>[^#\n]*;)[ \t]*# @test: (?P<key>[a-z_0-9]+)[ \t]*$",
    re.MULTILINE,
)
SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000; includeSubDomains",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "Cross-Origin-Opener-Policy": "same-origin",
}
RATE_BURST = 20  # the spec's burst: 1 + 20 requests pass at once, then 10 r/s


# --------------------------------------------------------------------------------------------
# rendering


def render_text(text: str, overrides: Mapping[str, str | None], used: set[str]) -> str:
    """``text`` with each marked directive's first argument replaced by its override.

    An override of None drops the line (the IPv6 listens: loopback IPv6 may not exist here).
    A marked line that does not parse, or a key without an override, is an error.
    """

    def replace(match: re.Match[str]) -> str:
        key = match["key"]
        if key not in overrides:
            raise KeyError(f"no test override for '# @test: {key}'")
        used.add(key)
        value = overrides[key]
        if value is None:
            return ""
        return f"{match['indent']}{match['directive']} {value}{match['rest']}"

    rendered = MARKED_LINE.sub(replace, text)
    leftover = [
        line
        for line in rendered.splitlines()
        if MARKER in line and not line.lstrip().startswith("#")  # comments may name the marker
    ]
    assert not leftover, f"marked lines the renderer cannot parse: {leftover}"
    # Dropped lines leave an empty line behind; harmless for nginx.
    return rendered


def render_tree(dst: Path, overrides: Mapping[str, str | None]) -> Path:
    """Render every file of deploy/nginx/ into ``dst`` (same layout); returns nginx.conf there."""
    assert SYSTEM_MIME_TYPES.is_file(), (
        f"{SYSTEM_MIME_TYPES} is missing: install Debian's nginx (apt-get install nginx-light "
        "or nginx), which ships it"
    )
    used: set[str] = set()
    for src in sorted(NGINX_SRC.rglob("*.conf")):
        out = dst / src.relative_to(NGINX_SRC)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(render_text(src.read_text(), overrides, used))
    shutil.copy(SYSTEM_MIME_TYPES, dst / "mime.types")
    unused = set(overrides) - used
    assert not unused, f"overrides that match no '# @test:' line: {sorted(unused)}"
    return dst / "nginx.conf"


# --------------------------------------------------------------------------------------------
# the upstream: a stand-in for the API


@dataclass
class Seen:
    """One request the upstream received."""

    path: str
    headers: dict[str, str]


@dataclass
class Upstream:
    """The app behind nginx, with the requests it received."""

    server: ThreadingHTTPServer
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def requests_to(self, path: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.path == path]


BIG_JSON = json.dumps(
    {"twins": [{"id": i, "name": f"twin-{i}", "persona": "friendly assistant"} for i in range(200)]}
).encode()


def _start_upstream() -> Upstream:
    upstream: Upstream

    class Handler(BaseHTTPRequestHandler):
        # HTTP/1.1 so nginx can keep its upstream connections alive.
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            with upstream.lock:
                upstream.seen.append(Seen(self.path, dict(self.headers.items())))
            path = self.path.split("?", 1)[0]
            status, body = 200, b'{"status":"ok"}'
            if path == "/echo":
                body = json.dumps({"headers": dict(self.headers.items())}).encode()
            elif path == "/big.json":
                body = BIG_JSON
            elif path == "/boom":
                status, body = 500, b'{"error":"internal"}'
            elif path not in ("/health", "/ready", "/small.json"):
                status, body = 404, b'{"error":"not found"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            # What an Express app sends by default: nginx must not pass these on.
            self.send_header("X-Powered-By", "Express")
            self.send_header("X-Frame-Options", "SAMEORIGIN")
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer((LOCALHOST, 0), Handler)
    server.daemon_threads = True
    upstream = Upstream(server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return upstream


# --------------------------------------------------------------------------------------------
# nginx


@dataclass
class LiveNginx:
    """nginx running the rendered production config."""

    proc: subprocess.Popen[bytes]
    conf: Path
    root: Path
    https_port: int
    http_port: int
    cert: Path
    upstream: Upstream

    @property
    def access_log(self) -> Path:
        return self.root / "access.log"

    def client_context(self) -> ssl.SSLContext:
        """A client that verifies the test certificate and the host name, like a real client."""
        return ssl.create_default_context(cafile=str(self.cert))

    def https(
        self,
        path: str,
        headers: Mapping[str, str] | None = None,
        *,
        conn: http.client.HTTPSConnection | None = None,
    ) -> tuple[http.client.HTTPResponse, bytes]:
        """GET ``path`` over HTTPS (SNI and Host: api.twinme.ai), on ``conn`` when given."""
        own = conn is None
        conn = conn or self.connection()
        try:
            conn.request("GET", path, headers=dict(headers or {}))
            resp = conn.getresponse()
            return resp, resp.read()
        finally:
            if own:
                conn.close()

    def connection(self, source: str | None = None) -> http.client.HTTPSConnection:
        """A keep-alive HTTPS connection to nginx, optionally from another loopback address."""
        return _LoopbackHTTPS(self.https_port, self.client_context(), source)

    def http(self, path: str, host: str = SERVER_NAME) -> tuple[http.client.HTTPResponse, bytes]:
        conn = http.client.HTTPConnection(LOCALHOST, self.http_port, timeout=10)
        try:
            conn.request("GET", path, headers={"Host": host})
            resp = conn.getresponse()
            return resp, resp.read()
        finally:
            conn.close()


class _LoopbackHTTPS(http.client.HTTPSConnection):
    """HTTPS to api.twinme.ai (SNI, certificate check, Host header) reached on 127.0.0.1."""

    def __init__(self, port: int, context: ssl.SSLContext, source: str | None) -> None:
        super().__init__(
            SERVER_NAME,
            port,
            timeout=10,
            context=context,
            source_address=(source, 0) if source else None,
        )
        self.tls_context = context
        self.source = (source, 0) if source else None

    def connect(self) -> None:
        sock = socket.create_connection((LOCALHOST, self.port), self.timeout, self.source)
        self.sock = self.tls_context.wrap_socket(sock, server_hostname=SERVER_NAME)


def nginx_binary() -> str:
    # No skip: the CI installs Debian's nginx, and a silently skipped TLS test proves nothing.
    assert os.access(NGINX, os.X_OK), f"{NGINX} not found: apt-get install nginx"
    return NGINX


def make_certificate(root: Path) -> tuple[Path, Path]:
    """A self-signed certificate for api.twinme.ai (P-256), made by the openssl CLI."""
    cert, key = root / "twinme-api.crt", root / "twinme-api.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", f"/CN={SERVER_NAME}",
            "-addext", f"subjectAltName=DNS:{SERVER_NAME}",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def overrides_for(
    root: Path, https_port: int, http_port: int, cert: Path, key: Path, upstream_port: int
) -> dict[str, str | None]:
    """The test's values for every ``# @test:`` key of deploy/nginx/."""
    temp = {
        f"{name}_temp_path": str(root / "temp" / name)
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    }
    (root / "temp").mkdir(exist_ok=True)
    return {
        # Running as root (tests here do); nginx's workers would otherwise need a system user.
        "user": "root",
        "pid": str(root / "nginx.pid"),
        "error_log": str(root / "error.log"),
        "access_log": str(root / "access.log"),
        **temp,
        "https_listen": f"{LOCALHOST}:{https_port}",
        "https_listen_v6": None,
        "http_listen": f"{LOCALHOST}:{http_port}",
        "http_listen_v6": None,
        "ssl_certificate": str(cert),
        "ssl_certificate_key": str(key),
        "upstream_server": f"{LOCALHOST}:{upstream_port}",
    }


def nginx_test(conf: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [nginx_binary(), "-t", "-c", str(conf), "-p", str(conf.parent)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Graceful quit of the master (it stops its workers), then SIGKILL to the whole group."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGQUIT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(15)
    deadline = time.monotonic() + 10
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _group_alive(proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(10)


def _wait_ready(live: LiveNginx, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if live.proc.poll() is not None:
            return False
        with contextlib.suppress(OSError):
            resp, _ = live.http("/nginx-health")
            if resp.status == 200:
                return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def nginx(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveNginx]:
    """nginx on free loopback ports running the rendered production config."""
    upstream = _start_upstream()
    request.addfinalizer(upstream.server.server_close)
    request.addfinalizer(upstream.server.shutdown)
    for _attempt in range(3):
        root = tmp_path_factory.mktemp("nginx")
        cert, key = make_certificate(root)
        https_port, http_port = free_port(), free_port()
        overrides = overrides_for(root, https_port, http_port, cert, key, upstream.port)
        conf = render_tree(root / "etc", overrides)
        checked = nginx_test(conf)
        assert checked.returncode == 0, f"nginx -t failed:\n{checked.stderr}"
        proc = subprocess.Popen(
            [nginx_binary(), "-c", str(conf), "-p", str(conf.parent), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Own process group: the finalizer can reach the workers even if the master dies.
            start_new_session=True,
        )
        request.addfinalizer(lambda proc=proc: _stop(proc))
        live = LiveNginx(proc, conf, root, https_port, http_port, cert, upstream)
        if _wait_ready(live):
            yield live
            return
        _stop(proc)
        log = (root / "error.log").read_text(errors="replace")
        if "Address already in use" not in log:
            pytest.fail(f"nginx did not start from the rendered config:\n{log[-3000:]}")
    pytest.fail("no free ports for nginx after 3 attempts")


# --------------------------------------------------------------------------------------------
# the files themselves


def test_production_files_keep_production_values() -> None:
    conf = (NGINX_SRC / "nginx.conf").read_text()
    site = (NGINX_SRC / "conf.d" / "twinme-api.conf").read_text()
    assert re.search(r"^\s*ssl_protocols TLSv1\.3;", conf, re.M)
    directives = "\n".join(
        line.split("#", 1)[0]
        for f in NGINX_SRC.rglob("*.conf")
        for line in f.read_text().split("\n")
    )
    assert "TLSv1.2" not in directives and "TLSv1 " not in directives
    assert "listen 443 ssl http2;" in site and "listen 80 default_server;" in site
    assert "server twinme-api-service.twinme-prod.svc.cluster.local:80;" in site
    assert "ssl_certificate /etc/ssl/certs/twinme-api.crt;" in site
    assert "limit_req_zone $binary_remote_addr zone=api:10m rate=10r/s;" in conf
    assert f"limit_req zone=api burst={RATE_BURST} nodelay;" in site


def test_rendering_changes_only_the_marked_lines(tmp_path: Path) -> None:
    overrides = overrides_for(tmp_path, 8443, 8080, tmp_path / "c.crt", tmp_path / "c.key", 9000)
    render_tree(tmp_path / "etc", overrides)
    for src in NGINX_SRC.rglob("*.conf"):
        original = src.read_text().split("\n")
        rendered = (tmp_path / "etc" / src.relative_to(NGINX_SRC)).read_text().split("\n")
        assert len(original) == len(rendered)
        for before, after in zip(original, rendered, strict=True):
            if before != after:
                assert MARKER in before, f"{src.name}: unmarked line changed: {before!r}"


def test_rendering_refuses_a_marker_without_override() -> None:
    with pytest.raises(KeyError, match="no test override for '# @test: pid'"):
        render_text("pid /run/nginx.pid;  # @test: pid\n", {}, set())


def test_nginx_t_accepts_the_rendered_config_without_warnings(nginx: LiveNginx) -> None:
    checked = nginx_test(nginx.conf)
    assert checked.returncode == 0, checked.stderr
    assert "syntax is ok" in checked.stderr and "test is successful" in checked.stderr
    # Warnings (duplicate MIME types, redefined listen options...) are config bugs too.
    assert "[warn]" not in checked.stderr and "[emerg]" not in checked.stderr, checked.stderr


# --------------------------------------------------------------------------------------------
# TLS


def test_tls12_is_refused_and_tls13_served(nginx: LiveNginx) -> None:
    tls12 = nginx.client_context()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with (
        socket.create_connection((LOCALHOST, nginx.https_port), timeout=10) as sock,
        pytest.raises(ssl.SSLError),
    ):
        tls12.wrap_socket(sock, server_hostname=SERVER_NAME)

    tls13 = nginx.client_context()
    tls13.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection((LOCALHOST, nginx.https_port), timeout=10) as sock,
        tls13.wrap_socket(sock, server_hostname=SERVER_NAME) as tls,
    ):
        assert tls.version() == "TLSv1.3"
        assert tls.selected_alpn_protocol() == "h2"


@pytest.mark.parametrize(("flag", "accepted"), [("-tls1_2", False), ("-tls1_3", True)])
def test_openssl_s_client_agrees(nginx: LiveNginx, flag: str, accepted: bool) -> None:
    result = subprocess.run(
        [
            "openssl", "s_client", flag, "-connect", f"{LOCALHOST}:{nginx.https_port}",
            "-servername", SERVER_NAME, "-CAfile", str(nginx.cert), "-verify_return_error",
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )  # fmt: skip
    if accepted:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "TLSv1.3" in result.stdout and "Verify return code: 0 (ok)" in result.stdout
    else:
        assert result.returncode != 0, result.stdout
        assert "alert protocol version" in result.stderr, result.stderr


@pytest.mark.parametrize("server_name", [None, "other.example"])
def test_handshake_for_another_name_is_refused(nginx: LiveNginx, server_name: str | None) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((LOCALHOST, nginx.https_port), timeout=10) as sock,
        pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME|unrecognized name"),
    ):
        ctx.wrap_socket(sock, server_hostname=server_name)


# --------------------------------------------------------------------------------------------
# proxying and headers


def _assert_security_headers(resp: http.client.HTTPResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert resp.headers.get_all(name) == [value], f"{name}: {resp.headers.get_all(name)}"


def test_proxied_responses_carry_the_security_headers_once(nginx: LiveNginx) -> None:
    resp, body = nginx.https("/echo", {"X-Forwarded-For": "203.0.113.66"})
    assert resp.status == 200
    _assert_security_headers(resp)  # the app's X-Frame-Options: SAMEORIGIN is replaced
    assert resp.headers["X-Powered-By"] is None
    assert resp.headers["Server"] == "nginx"  # no version
    request_id = resp.headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)

    received = {k.lower(): v for k, v in json.loads(body)["headers"].items()}
    assert received["host"] == SERVER_NAME
    assert received["x-forwarded-proto"] == "https"
    assert received["x-forwarded-host"] == SERVER_NAME
    # The client's forged X-Forwarded-For is not passed on: the API sees the real peer.
    assert received["x-forwarded-for"] == LOCALHOST
    assert received["x-real-ip"] == LOCALHOST
    assert received["x-request-id"] == request_id


@pytest.mark.parametrize(("path", "status"), [("/boom", 500), ("/missing", 404)])
def test_error_responses_carry_the_security_headers(
    nginx: LiveNginx, path: str, status: int
) -> None:
    resp, _ = nginx.https(path)
    assert resp.status == status
    _assert_security_headers(resp)


def test_http_redirects_to_https_with_the_same_path(nginx: LiveNginx) -> None:
    resp, _ = nginx.http("/v1/twins/42?expand=memories&x=1")
    assert resp.status == 301
    assert resp.headers["Location"] == f"https://{SERVER_NAME}/v1/twins/42?expand=memories&x=1"
    # A forged Host header does not turn the redirect into an open redirect.
    resp, _ = nginx.http("/login", host="evil.example")
    assert resp.status == 301
    assert resp.headers["Location"] == f"https://{SERVER_NAME}/login"


def test_health_endpoints(nginx: LiveNginx) -> None:
    before = len(nginx.upstream.requests_to("/health"))
    resp, body = nginx.https("/health")
    assert (resp.status, json.loads(body)) == (200, {"status": "ok"})
    _assert_security_headers(resp)
    assert len(nginx.upstream.requests_to("/health")) == before + 1  # the API's own answer
    resp, _ = nginx.https("/ready")
    assert resp.status == 200
    # nginx's own liveness, over HTTPS and over plain HTTP (probes), without the API.
    before_all = len(nginx.upstream.seen)
    for resp, body in (nginx.https("/nginx-health"), nginx.http("/nginx-health", host="10.1.2.3")):
        assert (resp.status, body) == (200, b"ok\n")
    assert len(nginx.upstream.seen) == before_all


def test_access_log_is_json_and_skips_probes(nginx: LiveNginx) -> None:
    marker = f"/echo?probe-log-{time.monotonic_ns()}"
    nginx.https("/health")
    nginx.https("/ready")
    resp, _ = nginx.https(marker)
    # nginx writes the line after the response has gone out: the client can be faster.
    deadline = time.monotonic() + 5
    while True:
        entries = [json.loads(line) for line in nginx.access_log.read_text().splitlines()]
        mine = [e for e in entries if e["uri"] == marker]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(mine) == 1
    assert mine[0]["status"] == 200 and mine[0]["upstream_status"] == "200"
    assert mine[0]["ssl_protocol"] == "TLSv1.3"
    assert mine[0]["request_id"] == resp.headers["X-Request-ID"]
    assert not [e for e in entries if e["uri"] in ("/health", "/ready", "/nginx-health")]


# --------------------------------------------------------------------------------------------
# rate limit


def test_rate_limit_answers_429_past_the_burst_per_client(nginx: LiveNginx) -> None:
    # Each test client comes from its own loopback address: its own bucket, as in production.
    path = f"/echo?burst-{time.monotonic_ns()}"
    conn = nginx.connection(source="127.0.0.2")
    statuses: list[int] = []
    limited: tuple[http.client.HTTPResponse, bytes] | None = None
    started = time.monotonic()
    try:
        # Until the first 429, plus a few: bounded, in case a slow machine keeps up with 10 r/s.
        while len(statuses) < 15 * RATE_BURST:
            resp, body = nginx.https(path, conn=conn)
            statuses.append(resp.status)
            if resp.status == 429 and limited is None:
                limited = (resp, body)
            if limited is not None and len(statuses) >= statuses.index(429) + 5:
                break
    finally:
        conn.close()
    elapsed = time.monotonic() - started

    assert set(statuses) <= {200, 429}, statuses
    assert statuses[: RATE_BURST + 1] == [200] * (RATE_BURST + 1), statuses
    assert limited is not None, f"no 429 in {len(statuses)} requests in {elapsed:.2f} s"
    # 10 r/s refill: at most one more request per 100 ms elapsed passes.
    assert statuses.count(200) <= RATE_BURST + 1 + int(elapsed * 10) + 1, statuses
    # Rejected requests never reach the API.
    assert len(nginx.upstream.requests_to(path)) == statuses.count(200)

    resp, body = limited
    assert resp.headers["Content-Type"] == "application/json"
    assert json.loads(body)["error"] == "too_many_requests"
    assert resp.headers["Retry-After"] == "1"
    _assert_security_headers(resp)

    # The same client's probes have their own bucket; another client is not affected.
    other = nginx.connection(source="127.0.0.2")
    try:
        assert nginx.https("/health", conn=other)[0].status == 200
    finally:
        other.close()
    other = nginx.connection(source="127.0.0.3")
    try:
        assert nginx.https(path, conn=other)[0].status == 200
    finally:
        other.close()


# --------------------------------------------------------------------------------------------
# gzip


def test_gzip_compresses_json_for_clients_that_accept_it(nginx: LiveNginx) -> None:
    resp, body = nginx.https("/big.json", {"Accept-Encoding": "gzip"})
    assert resp.status == 200
    assert resp.headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in (resp.headers["Vary"] or "")
    assert gzip.decompress(body) == BIG_JSON
    assert len(body) < len(BIG_JSON) / 5

    # Through a CDN or proxy (Via header) too: gzip_proxied's default would skip those.
    resp, body = nginx.https("/big.json", {"Accept-Encoding": "gzip", "Via": "1.1 cdn"})
    assert resp.headers["Content-Encoding"] == "gzip"

    resp, body = nginx.https("/big.json")
    assert resp.headers["Content-Encoding"] is None and body == BIG_JSON
    # Below gzip_min_length, compression costs more than it saves.
    resp, body = nginx.https("/small.json", {"Accept-Encoding": "gzip"})
    assert resp.headers["Content-Encoding"] is None and body == b'{"status":"ok"}'
