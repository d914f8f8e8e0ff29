"""The API's Node packages, audited with ``npm audit`` from its package-lock.json.

``npm audit --json --package-lock-only`` reads the lock alone (no ``node_modules``, nothing
installed) and posts every package version to the registry's bulk advisory endpoint
(``/-/npm/v1/security/advisories/bulk``). When the registry cannot be reached npm still prints a
JSON document, with ``message``/``error`` and no ``vulnerabilities``: that is a failed scan here,
never "no findings".
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from twinme_ops.common.redact import redact, redact_url
from twinme_ops.security.findings import Finding, ScanError, ScanReport, normalize_severity

DEFAULT_NPM_REGISTRY = "https://registry.npmjs.org/"


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None:
        raise ScanError(
            "npm is not installed, so the API's packages cannot be audited. Fix: install "
            "Node and npm (.ci/deps; the code location image ships them)."
        )
    return npm


def _advisory_id(via: dict[str, Any]) -> str:
    url = str(via.get("url", ""))
    tail = url.rstrip("/").rsplit("/", 1)[-1]
    return tail if tail.startswith("GHSA-") else f"npm-{via.get('source', '?')}"


def _fixed_in(name: str, entry: dict[str, Any]) -> str:
    fix = entry.get("fixAvailable")
    if isinstance(fix, dict) and fix.get("name") == name:
        return str(fix.get("version", ""))
    if isinstance(fix, dict):  # fixed by upgrading the package that pulls it in
        return f"via {fix.get('name')} {fix.get('version')}"
    return ""


def _installed_versions(lock: dict[str, Any], name: str) -> str:
    versions = sorted(
        {
            str(meta.get("version", ""))
            for path, meta in (lock.get("packages") or {}).items()
            if path.split("node_modules/")[-1] == name and path
        }
    )
    return ", ".join(v for v in versions if v)


def audit_npm_lock(
    project: Path, registry: str = DEFAULT_NPM_REGISTRY, timeout_s: int = 60
) -> ScanReport:
    """Scan ``project``'s package-lock.json; raise :class:`ScanError` when the registry's
    advisory endpoint is not reached or npm fails."""
    lock_path = project / "package-lock.json"
    if not lock_path.is_file():
        raise ScanError(
            f"{lock_path} not found. Fix: set TWINME_AUDIT_NPM_PROJECT to the API's folder "
            "(the one holding package.json and package-lock.json)."
        )
    lock: dict[str, Any] = json.loads(lock_path.read_text())
    packages = sum(1 for path in (lock.get("packages") or {}) if path)
    with tempfile.TemporaryDirectory(prefix="npm-audit-cache-") as cache:
        cmd = [
            _npm(),
            "audit",
            "--json",
            "--package-lock-only",
            f"--registry={registry}",
            # npm keeps advisories it has seen (by package and advisory number) in its cache and
            # reuses their severity and title: a fresh cache reports what the database says now
            f"--cache={cache}",
            "--fetch-retries=1",
            f"--fetch-timeout={timeout_s * 1000}",
        ]
        proc = subprocess.run(
            cmd, cwd=project, capture_output=True, text=True, timeout=timeout_s * 5
        )
    try:
        report: dict[str, Any] = json.loads(proc.stdout)
    except ValueError:
        report = {}
    if "vulnerabilities" not in report:
        reason = report.get("message") or (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ScanError(
            f"npm audit could not reach the advisory database of {redact_url(registry)} "
            f"(exit {proc.returncode}): {redact(reason)}. Fix: check that the code location "
            "reaches the registry (TWINME_AUDIT_NPM_REGISTRY) and rerun; no result is "
            "reported without it."
        )
    findings: list[Finding] = []
    for name, entry in report["vulnerabilities"].items():
        for via in entry.get("via", []):
            if not isinstance(via, dict):  # a package only vulnerable through another one
                continue
            findings.append(
                Finding(
                    ecosystem="npm",
                    package=str(via.get("name", name)),
                    version=_installed_versions(lock, name) or str(entry.get("range", "")),
                    advisory_id=_advisory_id(via),
                    severity=normalize_severity(via.get("severity")),
                    fixed_in=_fixed_in(name, entry),
                    title=str(via.get("title", "")),
                )
            )
    return ScanReport(
        scanner=f"npm audit {_npm_version()}",
        target=str(lock_path),
        database=f"npm advisories {redact_url(registry)}",
        packages=packages,
        findings=findings,
    )


def _npm_version() -> str:
    proc = subprocess.run([_npm(), "--version"], capture_output=True, text=True, timeout=60)
    return proc.stdout.strip()
