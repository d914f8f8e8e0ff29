"""The control plane's own Python dependencies, audited with ``pip-audit`` against OSV.

``pip-audit -r <lock> --no-deps --disable-pip -s osv`` reads the hash-pinned lock
(``deploy/dagster/requirements.lock``, what the image installs) without resolving or installing
anything, and asks OSV's ``/v1/query`` for each pinned version. Its JSON names advisories and
fixed versions but no severity: each finding's severity is read from OSV's ``/v1/vulns/<id>``
(GitHub advisories carry it in ``database_specific.severity``), trying the id then its aliases.

pip-audit runs with a fresh cache directory each time: a cached answer must never stand in for a
database that did not answer.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twinme_ops.common.redact import redact, redact_url
from twinme_ops.security.findings import Finding, ScanError, ScanReport, normalize_severity

if TYPE_CHECKING:
    import requests

DEFAULT_OSV_URL = "https://api.osv.dev/v1/query"


def _osv_base(osv_url: str) -> str:
    url = osv_url.rstrip("/")
    return url[: -len("/v1/query")] if url.endswith("/v1/query") else url


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return redact(lines[-1]) if lines else "no output"


def _severity(session: requests.Session, base: str, ids: list[str], timeout_s: float) -> str:
    """The first severity OSV publishes for one of ``ids``; "unknown" if none has one."""
    import requests  # here: not loaded with the code location

    for vuln_id in ids:
        try:
            response = session.get(f"{base}/v1/vulns/{vuln_id}", timeout=timeout_s)
        except requests.RequestException as exc:
            raise ScanError(
                f"OSV at {redact_url(base)} stopped answering while reading {vuln_id}: "
                f"{redact(exc)}"
            ) from None
        if response.status_code == 404:
            continue
        if response.status_code != 200:
            raise ScanError(
                f"OSV at {redact_url(base)} answered HTTP {response.status_code} for {vuln_id}"
            )
        record: dict[str, Any] = response.json()
        found = normalize_severity((record.get("database_specific") or {}).get("severity"))
        if found != "unknown":
            return found
    return "unknown"


def audit_python_lock(
    lock: Path, osv_url: str = DEFAULT_OSV_URL, timeout_s: int = 30
) -> ScanReport:
    """Scan ``lock`` (pinned requirements) with pip-audit; raise :class:`ScanError` if OSV is not
    reached or pip-audit fails, never return an empty report instead."""
    if not lock.is_file():
        raise ScanError(
            f"Python lock file {lock} not found. Fix: set TWINME_AUDIT_PYTHON_LOCK to the "
            "image's requirements.lock (deploy/dagster/requirements.lock in the repository)."
        )
    with tempfile.TemporaryDirectory(prefix="pip-audit-cache-") as cache:
        cmd = [
            sys.executable,
            "-m",
            "pip_audit",
            "-r",
            str(lock),
            "--no-deps",
            "--disable-pip",
            "-s",
            "osv",
            "--osv-url",
            osv_url,
            "-f",
            "json",
            "--progress-spinner",
            "off",
            "--timeout",
            str(timeout_s),
            "--cache-dir",
            cache,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s * 20)
    try:
        report: dict[str, Any] = json.loads(proc.stdout)
        dependencies: list[dict[str, Any]] = report["dependencies"]
    except (ValueError, KeyError, TypeError):
        raise ScanError(
            f"pip-audit could not audit {lock.name} against OSV at {redact_url(osv_url)} "
            f"(exit {proc.returncode}): {_last_line(proc.stderr)}. Fix: check that the code "
            "location reaches the OSV API (TWINME_AUDIT_OSV_URL) and rerun; no result is "
            "reported without it."
        ) from None
    import requests  # here: not loaded with the code location

    base = _osv_base(osv_url)
    findings: list[Finding] = []
    with requests.Session() as session:
        for dep in dependencies:
            for vuln in dep.get("vulns", []):
                ids = [vuln["id"], *vuln.get("aliases", [])]
                fixes = vuln.get("fix_versions") or []
                findings.append(
                    Finding(
                        ecosystem="PyPI",
                        package=dep["name"],
                        version=dep.get("version", ""),
                        advisory_id=_preferred_id(ids),
                        severity=_severity(session, base, ids, timeout_s),
                        fixed_in=", ".join(fixes),
                        title=vuln.get("description", ""),
                        aliases=tuple(i for i in ids if i != _preferred_id(ids)),
                    )
                )
    skipped = [d["name"] for d in dependencies if "skip_reason" in d]
    if skipped:
        raise ScanError(
            f"pip-audit skipped {', '.join(skipped)} in {lock.name}: not audited. Fix: pin them "
            "to exact versions in the lock (regenerate it, see its header)."
        )
    return ScanReport(
        scanner=f"pip-audit {dist_version('pip-audit')}",
        target=str(lock),
        database=f"OSV {redact_url(osv_url)}",
        packages=len(dependencies),
        findings=findings,
    )


def _preferred_id(ids: list[str]) -> str:
    """The GitHub advisory id when there is one (what npm and most people quote), else the first."""
    return next((i for i in ids if i.startswith("GHSA-")), ids[0])
