"""The weekly dependency audit and the SBOMs of the images."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg

from twinme_ops.alerting.audit_messages import AuditLine, dependency_audit_alert
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.common.redact import redact
from twinme_ops.defs.alerts.hooks import step_where
from twinme_ops.defs.security.npm_lock import api_npm_lock
from twinme_ops.release.git import GitRepoResource
from twinme_ops.security.findings import (
    Finding,
    ScanError,
    ScanReport,
    counts_by_severity,
    markdown_table,
    normalize_severity,
)
from twinme_ops.security.npm_audit import audit_npm_lock
from twinme_ops.security.npm_source import NpmLock
from twinme_ops.security.policy import AuditPolicy, judge
from twinme_ops.security.python_audit import audit_python_lock
from twinme_ops.security.settings import DependencyAuditSettings


def _previous_first_seen(context: dg.AssetExecutionContext) -> dict[str, str]:
    """First-seen dates the last audit recorded (none before the first one)."""
    event = context.instance.get_latest_materialization_event(context.asset_key)
    materialization = event.asset_materialization if event else None
    value: Any = materialization.metadata.get("first_seen") if materialization else None
    data = getattr(value, "value", None)
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _lines(findings: list[Finding], first_seen: dict[str, str]) -> list[AuditLine]:
    return [
        AuditLine(
            f.ecosystem,
            f.package,
            f.version,
            f.advisory_id,
            normalize_severity(f.severity),
            f.fixed_in,
            first_seen.get(f.key, ""),
        )
        for f in findings
    ]


def _reached(report: ScanReport, sources: dict[str, NpmLock]) -> str:
    lock = Path(report.target).name
    source = sources.get(report.scanner)
    return (
        f"{report.scanner}: {report.packages} packages of {lock}"
        + (f" at {source.described}" if source and source.commit else "")
        + f" against {report.database}"
    )


def _scan_npm(
    settings: DependencyAuditSettings, git: GitRepoResource, sources: dict[str, NpmLock]
) -> ScanReport:
    """npm audit of the API's lock (its folder, else its branch head); records where it came
    from in ``sources`` (by scanner)."""
    with api_npm_lock(settings, git) as lock:
        report = audit_npm_lock(lock.project, settings.npm_registry, settings.timeout_s)
    sources[report.scanner] = lock
    return report


@dg.asset(
    group_name="security",
    kinds={"python", "npm"},
    description=(
        "Weekly audit of the locked dependencies: the code location image's Python packages "
        "(deploy/dagster/requirements.lock) with pip-audit against OSV, and the API's "
        "package-lock.json with npm audit (TWINME_AUDIT_NPM_PROJECT, else the head of "
        "TWINME_GIT_BRANCH on TWINME_GIT_REMOTE, recorded as npm_source). Findings as a "
        "table (package, version, advisory, severity, fixed in, first seen) and counts by "
        "severity; Slack when one reaches TWINME_AUDIT_FAIL_SEVERITY (default high) or "
        "stays unfixed past TWINME_AUDIT_DEADLINE_DAYS (default 30). Fails when an advisory "
        "database cannot be reached: never reports 'no findings' instead."
    ),
)
def dependency_audit(
    context: dg.AssetExecutionContext,
    dependency_audit_settings: DependencyAuditSettings,
    slack: SlackNotifier,
    git: GitRepoResource,
) -> dg.MaterializeResult:
    try:
        policy = AuditPolicy.from_env()
    except ValueError as exc:
        raise dg.Failure(description=redact(exc)) from None
    settings = dependency_audit_settings
    reports: list[ScanReport] = []
    errors: list[str] = []
    sources: dict[str, NpmLock] = {}
    scans = (
        (
            "Python",
            lambda: audit_python_lock(
                settings.python_lock_path(), settings.osv_url, settings.timeout_s
            ),
        ),
        (
            "npm",
            lambda: _scan_npm(settings, git, sources),
        ),
    )
    for label, scan in scans:
        try:
            report = scan()
        except ScanError as exc:
            errors.append(f"{label}: {redact(exc)}")
            continue
        context.log.info(f"{_reached(report, sources)}: {len(report.findings)} findings")
        reports.append(report)
    if errors:
        # first line: what failed (the line Slack shows); then each scanner's error and its fix
        failed = " and ".join(e.split(":", 1)[0] for e in errors)
        raise dg.Failure(
            description=f"dependency audit incomplete ({failed} scan failed), no result "
            "reported.\n" + "\n".join(errors),
            metadata={
                "reached": dg.MetadataValue.text("; ".join(_reached(r, sources) for r in reports))
            },
        )
    findings = [f for r in reports for f in r.findings]
    verdict = judge(findings, _previous_first_seen(context), policy, datetime.now(UTC).date())
    counts = counts_by_severity(findings)
    reached = [_reached(r, sources) for r in reports]
    if verdict.pages:
        alert = dependency_audit_alert(
            step_where(context),
            _lines(verdict.severe, verdict.first_seen),
            _lines(verdict.overdue, verdict.first_seen),
            policy.fail_severity,
            policy.deadline_days,
            counts,
            reached,
        )
        slack.send(alert, log=context.log)
    by_name = {r.scanner.split()[0]: r for r in reports}
    metadata: dict[str, Any] = {
        "findings": dg.MetadataValue.md(markdown_table(findings, verdict.first_seen)),
        "findings_total": dg.MetadataValue.int(len(findings)),
        **{f"findings_{name}": dg.MetadataValue.int(n) for name, n in counts.items()},
        "paging": dg.MetadataValue.int(len(verdict.severe) + len(verdict.overdue)),
        "fail_severity": policy.fail_severity,
        "deadline_days": dg.MetadataValue.int(policy.deadline_days),
        "python_packages": dg.MetadataValue.int(by_name["pip-audit"].packages),
        "npm_packages": dg.MetadataValue.int(by_name["npm"].packages),
        "npm_source": sources[by_name["npm"].scanner].source,
        "reached": dg.MetadataValue.md("\n".join(f"- {line}" for line in reached)),
        "first_seen": dg.MetadataValue.json(verdict.first_seen),
    }
    return dg.MaterializeResult(metadata=metadata)
