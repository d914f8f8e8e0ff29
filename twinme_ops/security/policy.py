"""When a dependency audit pages: severity threshold, fix deadline, first-seen dates.

A finding pages when its severity reaches the threshold (``TWINME_AUDIT_FAIL_SEVERITY``, default
high), or when it stays in the scans past the deadline (``TWINME_AUDIT_DEADLINE_DAYS``, default
30) whatever its severity. First-seen dates are carried from one audit to the next (the asset
keeps them in its materialization metadata), keyed by ecosystem, package and advisory: upgrading
to another vulnerable version does not reset the clock.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date

from twinme_ops.security.findings import Finding, at_or_above, parse_threshold

SEVERITY_ENV = "TWINME_AUDIT_FAIL_SEVERITY"
DEADLINE_ENV = "TWINME_AUDIT_DEADLINE_DAYS"
DEFAULT_SEVERITY = "high"
DEFAULT_DEADLINE_DAYS = 30


@dataclass(frozen=True)
class AuditPolicy:
    """The paging threshold and the fix deadline."""

    fail_severity: str = DEFAULT_SEVERITY
    deadline_days: int = DEFAULT_DEADLINE_DAYS

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AuditPolicy:
        """Read and validate the two variables (clear error with the fix when wrong)."""
        values = os.environ if env is None else env
        severity = parse_threshold(values.get(SEVERITY_ENV, "") or DEFAULT_SEVERITY, SEVERITY_ENV)
        raw = (values.get(DEADLINE_ENV, "") or str(DEFAULT_DEADLINE_DAYS)).strip()
        try:
            days = int(raw)
        except ValueError:
            days = -1
        if days < 1:
            raise ValueError(
                f"{DEADLINE_ENV}={raw!r} is not a number of days. Fix: set it to a whole "
                f"number of days >= 1 (default {DEFAULT_DEADLINE_DAYS}), or unset it."
            )
        return cls(fail_severity=severity, deadline_days=days)


@dataclass
class Verdict:
    """What this audit pages for, and the first-seen dates to keep for the next one."""

    first_seen: dict[str, str]
    severe: list[Finding] = field(default_factory=list)
    overdue: list[Finding] = field(default_factory=list)

    @property
    def pages(self) -> bool:
        return bool(self.severe or self.overdue)


def judge(
    findings: Sequence[Finding],
    previous_first_seen: Mapping[str, str],
    policy: AuditPolicy,
    today: date,
) -> Verdict:
    """Weigh ``findings`` against ``policy``; fixed findings drop out of the first-seen dates."""
    first_seen: dict[str, str] = {}
    for f in findings:
        first_seen[f.key] = (
            first_seen.get(f.key) or _valid(previous_first_seen.get(f.key)) or (today.isoformat())
        )
    verdict = Verdict(first_seen=first_seen)
    for f in findings:
        if at_or_above(f.severity, policy.fail_severity):
            verdict.severe.append(f)
        elif (today - date.fromisoformat(first_seen[f.key])).days > policy.deadline_days:
            verdict.overdue.append(f)
    return verdict


def _valid(value: object) -> str:
    """A stored ISO date, or "" when it is missing or not a date (the clock then starts today)."""
    try:
        return date.fromisoformat(str(value)).isoformat() if value else ""
    except ValueError:
        return ""
