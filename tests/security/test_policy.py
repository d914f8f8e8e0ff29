"""The audit's paging rules, as plain functions: threshold, deadline, first-seen dates."""

from __future__ import annotations

from datetime import date

import pytest

from twinme_ops.security.findings import Finding, counts_by_severity, markdown_table
from twinme_ops.security.policy import AuditPolicy, judge

TODAY = date(2026, 12, 7)


def _finding(package: str, severity: str, advisory: str = "GHSA-aaaa-bbbb-cccc") -> Finding:
    return Finding("PyPI", package, "1.0", advisory, severity, fixed_in="1.1")


def test_policy_defaults_and_bad_values() -> None:
    assert AuditPolicy.from_env({}) == AuditPolicy("high", 30)
    assert AuditPolicy.from_env({"TWINME_AUDIT_FAIL_SEVERITY": "Medium"}).fail_severity == (
        "moderate"
    )
    with pytest.raises(ValueError, match=r"TWINME_AUDIT_DEADLINE_DAYS='two weeks'.*Fix: set"):
        AuditPolicy.from_env({"TWINME_AUDIT_DEADLINE_DAYS": "two weeks"})
    with pytest.raises(ValueError, match=r"TWINME_AUDIT_DEADLINE_DAYS='0'"):
        AuditPolicy.from_env({"TWINME_AUDIT_DEADLINE_DAYS": "0"})


def test_unknown_severity_pages_as_high_and_low_waits_for_the_deadline() -> None:
    unknown, low = _finding("a", "unknown", "PYSEC-1"), _finding("b", "low")
    fresh = judge([unknown, low], {}, AuditPolicy(), TODAY)
    assert fresh.severe == [unknown] and fresh.overdue == []
    old = {low.key: "2026-10-01", unknown.key: "not a date"}
    later = judge([unknown, low], old, AuditPolicy(), TODAY)
    assert later.overdue == [low]
    # a malformed stored date restarts the clock instead of failing the audit
    assert later.first_seen == {low.key: "2026-10-01", unknown.key: TODAY.isoformat()}
    # a fixed finding drops out of the dates
    assert judge([], old, AuditPolicy(), TODAY).first_seen == {}


def test_table_and_counts() -> None:
    findings = [_finding("low-pkg", "low"), _finding("crit|pkg", "CRITICAL", "GHSA-x")]
    table = markdown_table(findings, {findings[1].key: "2026-11-01"})
    rows = table.splitlines()
    assert rows[2].startswith("| PyPI | crit\\|pkg | 1.0 | GHSA-x | critical | 1.1 | 2026-11-01 |")
    assert counts_by_severity(findings)["critical"] == 1
    assert markdown_table([]) == "No known vulnerability in the scanned packages."
