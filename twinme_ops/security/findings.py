"""What a dependency scan found, in one shape for every scanner, and how it is weighed.

``pip-audit`` (Python) and ``npm audit`` (the API's Node packages) report in their own formats;
both become :class:`Finding` rows in a :class:`ScanReport` that also says what the scan reached
(which advisory database, how many packages). Severities follow GitHub's advisory scale, which
npm uses as is and OSV carries for GitHub advisories: ``low < moderate < high < critical``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

SEVERITIES = ("info", "low", "moderate", "high", "critical")
# an advisory the database publishes without a severity: weighed as high, since what cannot
# be weighed must not be silently ignored (docs/security-scans.md)
UNKNOWN = "unknown"
_RANK = {name: i for i, name in enumerate(SEVERITIES)} | {UNKNOWN: SEVERITIES.index("high")}
_ALIASES = {"medium": "moderate", "important": "high", "none": "info"}


class ScanError(RuntimeError):
    """A scan that could not be completed (scanner missing, advisory database unreachable).

    Never turned into "no findings": the asset fails with this message.
    """


def normalize_severity(value: str | None) -> str:
    """A severity as this module names it (``MODERATE`` and ``medium`` -> ``moderate``)."""
    text = (value or "").strip().lower()
    text = _ALIASES.get(text, text)
    return text if text in SEVERITIES else UNKNOWN


def parse_threshold(value: str, variable: str = "TWINME_AUDIT_FAIL_SEVERITY") -> str:
    """The paging threshold, validated: a clear error with the fix otherwise."""
    text = (value or "").strip().lower()
    text = _ALIASES.get(text, text)
    if text not in SEVERITIES:
        raise ValueError(
            f"{variable}={value!r} is not a severity. Fix: set it to one of "
            f"{', '.join(SEVERITIES)} (default high)."
        )
    return text


def at_or_above(severity: str, threshold: str) -> bool:
    """Whether ``severity`` reaches ``threshold`` (an unknown severity counts as high)."""
    return _RANK[normalize_severity(severity)] >= _RANK[threshold]


@dataclass(frozen=True)
class Finding:
    """One advisory affecting one package at one version."""

    ecosystem: str  # "PyPI" or "npm"
    package: str
    version: str
    advisory_id: str
    severity: str
    fixed_in: str = ""  # "" = no fixed version published
    title: str = ""
    aliases: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """Stable across scans while the advisory applies (kept when the version changes)."""
        return f"{self.ecosystem}:{self.package.lower()}:{self.advisory_id}"


@dataclass
class ScanReport:
    """One scanner's result and what it reached."""

    scanner: str  # "pip-audit 2.10.1"
    target: str  # the lock file scanned
    database: str  # the advisory endpoint asked (redacted)
    packages: int
    findings: list[Finding] = field(default_factory=list)


def counts_by_severity(findings: Iterable[Finding]) -> dict[str, int]:
    """Every severity (unknown included) with its number of findings, zeros kept."""
    counts = Counter(normalize_severity(f.severity) for f in findings)
    return {name: counts.get(name, 0) for name in (*SEVERITIES, UNKNOWN)}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "-"


def markdown_table(findings: Sequence[Finding], first_seen: dict[str, str] | None = None) -> str:
    """The findings as the Markdown table the UI shows, most severe first."""
    if not findings:
        return "No known vulnerability in the scanned packages."
    seen = first_seen or {}
    rows = sorted(findings, key=lambda f: (-_RANK[normalize_severity(f.severity)], f.package))
    lines = [
        "| ecosystem | package | version | advisory | severity | fixed in | first seen |",
        "|---|---|---|---|---|---|---|",
    ]
    for f in rows:
        cells = (
            f.ecosystem,
            f.package,
            f.version,
            f.advisory_id,
            normalize_severity(f.severity),
            f.fixed_in or "no fix yet",
            seen.get(f.key, ""),
        )
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)
