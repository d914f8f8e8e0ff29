"""The record of the newest point-in-time drill that passed, kept in the archive root.

The drill (``backups/pitr_drill.py``) writes ``<root>/drill-passed.json`` when it passes, through
a temporary file and a rename (a reader sees the previous record or the new one, never half of
one); a failed drill leaves the previous record in place. Retention
(:mod:`.retention`) reads it to keep the base backups and the WAL that drill restored from. A file
beside the archive, rather than the Dagster event log, is read the same way by the CLI, by a run
on another instance, and after the Dagster database is rebuilt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from twinme_ops.backups.pitr.layout import ArchiveLayout
from twinme_ops.scratch.local import read_json_file, write_json_atomic

DRILL_RECORD = "drill-passed.json"


@dataclass(frozen=True)
class DrillRecord:
    """What the newest passing drill restored: each restore's base backup and chain."""

    passed_at: str
    target: str  # the random target time of the first restore
    backup: str  # the base backup restored to the target
    chain: list[str]  # its chain, the full backup first
    reached_lsn: str  # where the replay to the target stopped
    latest_backup: str = ""  # the base backup of the restore to the latest point
    latest_chain: list[str] = field(default_factory=list)
    seed: int | None = None

    @property
    def protected(self) -> list[str]:
        """Every base backup either restore needed."""
        return list(dict.fromkeys([*self.chain, *self.latest_chain]))

    @property
    def passed(self) -> datetime:
        return datetime.fromisoformat(self.passed_at)


def write_drill_record(layout: ArchiveLayout, record: DrillRecord) -> None:
    """Replace the record atomically."""
    write_json_atomic(layout.root / DRILL_RECORD, asdict(record))


def read_drill_record(layout: ArchiveLayout) -> tuple[DrillRecord | None, str]:
    """The record, or None and why (missing, or unreadable: then retention does not trust it)."""
    path = layout.root / DRILL_RECORD
    data = read_json_file(path)
    if data is None:
        if path.exists():
            return None, f"{path} is unreadable"
        return None, f"no passing point-in-time drill recorded ({path} is missing)"
    try:
        record = DrillRecord(**_known(data))
        record.passed  # noqa: B018 -- a malformed time fails here
    except (TypeError, ValueError) as exc:
        return None, f"{path} is malformed ({exc})"
    if not record.chain or not isinstance(record.chain, list):
        return None, f"{path} names no base backup chain"
    return record, ""


def _known(data: dict[str, Any]) -> dict[str, Any]:
    names = DrillRecord.__dataclass_fields__
    return {k: v for k, v in data.items() if k in names}
