"""A real advisory database on 127.0.0.1 for the dependency audit tests.

Public OSV and npm advisory endpoints are unreachable from CI machines, so the scanners
(``pip-audit``, ``npm audit``) are pointed at this HTTP server, which speaks the parts of both
APIs they call:

- OSV (``pip-audit -s osv --osv-url``): ``POST /v1/query``, ``POST /v1/querybatch``,
  ``GET /v1/vulns/<id>``;
- npm (``npm audit --registry``): ``POST /-/npm/v1/security/advisories/bulk`` (gzip body, as npm
  sends it) and ``GET /<name>`` packuments (npm reads them to say whether a fix exists).

Advisories are plain dicts added by the tests; ``requests`` records every path asked.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest


@dataclass
class NpmAdvisory:
    """One npm advisory: affects ``versions`` of ``name`` (``range`` is what npm is told)."""

    id: int
    name: str
    versions: list[str]
    range: str
    severity: str
    title: str
    ghsa: str


@dataclass
class AdvisoryServer:
    """The server's data and address; see the module docstring."""

    osv: list[dict[str, Any]] = field(default_factory=list)
    npm: list[NpmAdvisory] = field(default_factory=list)
    # name -> every published version (for the packuments npm reads)
    npm_versions: dict[str, list[str]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    url: str = ""

    @property
    def osv_query_url(self) -> str:
        return f"{self.url}/v1/query"

    def osv_matches(self, name: str, version: str) -> list[dict[str, Any]]:
        found = []
        for vuln in self.osv:
            for affected in vuln["affected"]:
                package = affected["package"]
                if (
                    package["ecosystem"] == "PyPI"
                    and _norm(package["name"]) == _norm(name)
                    and version in affected.get("versions", [])
                ):
                    found.append(vuln)
                    break
        return found


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _handler(server: AdvisoryServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _json(self, status: int, payload: Any) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> Any:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                raw = gzip.decompress(raw)
            return json.loads(raw or b"{}")

        def do_POST(self) -> None:  # noqa: N802 (http.server API)
            server.requests.append(f"POST {self.path}")
            body = self._body()
            if self.path == "/v1/query":
                package = body["package"]
                vulns = server.osv_matches(package["name"], body["version"])
                self._json(200, {"vulns": vulns} if vulns else {})
            elif self.path == "/v1/querybatch":
                results: list[dict[str, Any]] = []
                for query in body["queries"]:
                    vulns = server.osv_matches(query["package"]["name"], query["version"])
                    found = [{"id": v["id"], "modified": v["modified"]} for v in vulns]
                    results.append({"vulns": found} if found else {})
                self._json(200, {"results": results})
            elif self.path.startswith("/-/npm/v1/security/advisories/bulk"):
                report: dict[str, list[dict[str, Any]]] = {}
                for name, versions in body.items():
                    for adv in server.npm:
                        if adv.name == name and set(versions) & set(adv.versions):
                            report.setdefault(name, []).append(
                                {
                                    "id": adv.id,
                                    "url": f"https://github.com/advisories/{adv.ghsa}",
                                    "title": adv.title,
                                    "severity": adv.severity,
                                    "vulnerable_versions": adv.range,
                                    "cwe": [],
                                    "cvss": {"score": 0, "vectorString": None},
                                }
                            )
                self._json(200, report)
            else:
                self._json(404, {"error": "not found"})

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            server.requests.append(f"GET {self.path}")
            if self.path.startswith("/v1/vulns/"):
                wanted = self.path.rsplit("/", 1)[1]
                for vuln in server.osv:
                    if vuln["id"] == wanted:
                        self._json(200, vuln)
                        return
                self._json(404, {"code": 5, "message": "Bug not found."})
                return
            name = unquote(self.path.lstrip("/").split("?", 1)[0])
            versions = server.npm_versions.get(name)
            if versions is None:
                self._json(404, {"error": "Not found"})
                return
            self._json(
                200,
                {
                    "name": name,
                    "dist-tags": {"latest": versions[-1]},
                    "versions": {
                        v: {
                            "name": name,
                            "version": v,
                            "dist": {"tarball": f"{server.url}/{name}/-/{name}-{v}.tgz"},
                        }
                        for v in versions
                    },
                },
            )

        def log_message(self, format: str, *args: object) -> None:
            return None

    return Handler


def serve(server: AdvisoryServer) -> ThreadingHTTPServer:
    """Start answering on a free loopback port (``server.url`` is set); stop with ``shutdown``."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def osv_vuln(
    vuln_id: str,
    name: str,
    versions: list[str],
    fixed: str,
    severity: str,
    aliases: tuple[str, ...] = (),
) -> dict[str, Any]:
    """An OSV record as osv.dev publishes GitHub advisories (severity in database_specific)."""
    return {
        "schema_version": "1.6.0",
        "id": vuln_id,
        "modified": "2026-01-01T00:00:00Z",
        "published": "2025-06-01T00:00:00Z",
        "aliases": list(aliases),
        "summary": f"{name} {versions[0]} test advisory",
        "affected": [
            {
                "package": {"ecosystem": "PyPI", "name": name},
                "ranges": [
                    {"type": "ECOSYSTEM", "events": [{"introduced": "0"}, {"fixed": fixed}]}
                ],
                "versions": versions,
            }
        ],
        "database_specific": {"severity": severity},
    }


@pytest.fixture
def advisory_server() -> Iterator[AdvisoryServer]:
    """An empty advisory database on 127.0.0.1; tests add the advisories they need."""
    server = AdvisoryServer()
    httpd = serve(server)
    yield server
    httpd.shutdown()
    httpd.server_close()


def npm_project(root: Path, packages: dict[str, str]) -> Path:
    """A package.json + package-lock.json (v3) pinning ``packages`` (name -> version) in
    ``root``: what ``npm audit`` and ``npm sbom`` read, nothing installed."""
    root.mkdir(parents=True, exist_ok=True)
    manifest = {"name": "twinme-api", "version": "0.1.0", "dependencies": dict(packages)}
    entries: dict[str, Any] = {"": dict(manifest)}
    for name, version in packages.items():
        digest = hashlib.sha512(f"{name}@{version}".encode()).digest()
        entries[f"node_modules/{name}"] = {
            "version": version,
            "resolved": f"https://registry.npmjs.org/{name}/-/{name}-{version}.tgz",
            "integrity": "sha512-" + base64.b64encode(digest).decode(),
        }
    lock = {**manifest, "lockfileVersion": 3, "requires": True, "packages": entries}
    lock.pop("dependencies")
    (root / "package.json").write_text(json.dumps(manifest, indent=2))
    (root / "package-lock.json").write_text(json.dumps(lock, indent=2))
    return root
