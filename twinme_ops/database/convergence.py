"""Declared state vs live state: what every tuning step returns.

A converge function changes only what differs and returns a :class:`ConvergeReport` listing each
change as the statement it ran (never a secret). A drift function changes nothing and returns
the differences as sentences. Run twice, a converge function reports no change the second time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twinme_ops.common.log import Log


@dataclass
class Change:
    """One change applied to a server: what, and the exact statement (secret-free)."""

    target: str
    statement: str
    detail: str = ""


@dataclass
class ConvergeReport:
    """What a converge step did; ``pending_restart`` lists settings that only a restart applies."""

    changes: list[Change] = field(default_factory=list)
    pending_restart: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.changes)

    def statements(self) -> list[str]:
        return [c.statement for c in self.changes]

    def add(self, target: str, statement: str, log: Log | None = None, detail: str = "") -> None:
        """Record a change (call it after the statement succeeded) and log the statement."""
        self.changes.append(Change(target, statement, detail))
        if log is not None:
            log.info(f"{target}: {statement}")
