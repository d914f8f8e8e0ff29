"""What the weekly dependency audit says in Slack, over plain facts (no domain imported).

The asset (``defs/security/assets.py``) weighs the findings and passes them here as
:class:`AuditLine` rows: those at or above the paging severity, and those left unfixed past the
deadline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from twinme_ops.alerting.alert import Alert, Fact, Where

_MAX_LINES = 15  # a phone shows the worst ones; the run's metadata has the whole table


@dataclass(frozen=True)
class AuditLine:
    """One finding as the alert names it."""

    ecosystem: str
    package: str
    version: str
    advisory_id: str
    severity: str
    fixed_in: str
    first_seen: str

    def text(self) -> str:
        fix = f"fixed in {self.fixed_in}" if self.fixed_in else "no fix published yet"
        return (
            f"{self.severity} {self.advisory_id}: {self.ecosystem} {self.package} "
            f"{self.version} ({fix}; seen since {self.first_seen})"
        )


def _lines(rows: Sequence[AuditLine]) -> str:
    shown = [r.text() for r in rows[:_MAX_LINES]]
    if len(rows) > _MAX_LINES:
        shown.append(f"... and {len(rows) - _MAX_LINES} more (see the run's metadata)")
    return "\n".join(shown)


def dependency_audit_alert(
    where: Where,
    severe: Sequence[AuditLine],
    overdue: Sequence[AuditLine],
    threshold: str,
    deadline_days: int,
    counts: Mapping[str, int],
    reached: Sequence[str],
) -> Alert:
    """Findings at or above ``threshold``, or unfixed for more than ``deadline_days``."""
    parts = []
    if severe:
        parts.append(f"{len(severe)} at or above {threshold}")
    if overdue:
        parts.append(f"{len(overdue)} unfixed for more than {deadline_days} days")
    facts: list[Fact] = []
    if severe:
        facts.append(Fact(f"At or above {threshold}", _lines(severe)))
    if overdue:
        facts.append(Fact(f"Past the {deadline_days}-day deadline", _lines(overdue)))
    facts.append(
        Fact("All findings", ", ".join(f"{n} {name}" for name, n in counts.items() if n) or "none")
    )
    facts.append(Fact("Scanned", "; ".join(reached)))
    return Alert(
        headline="Vulnerable dependencies in TwinMe — " + ", ".join(parts),
        severity="failure" if severe else "warning",
        where=where,
        facts=facts,
        advice=(
            "upgrade each package to its fixed version (Python: pyproject.toml then regenerate "
            "deploy/dagster/requirements.lock; API: npm update in its repository), release, and "
            "check the next dependency_audit run (docs/security-scans.md)"
        ),
    )
