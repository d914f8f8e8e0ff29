"""Heartbeats: small commits at known times that prove where a restore stopped.

The source gets ``twinme_ops.heartbeat(at timestamptz primary key, lsn pg_lsn)``; each
:func:`write_heartbeat` commits one row (its own transaction: ``at`` is the statement's time,
the commit follows within a millisecond). After a restore to a target time, every heartbeat
at or before the target must be there and none after it: :func:`verify_heartbeats` checks that
against the list read from the source before the restore, and returns the drill's facts.

A heartbeat whose ``at`` lies within ``commit_slack_s`` before the target may have committed just
after it (recovery compares *commit* times): it is counted as ambiguous, not as a failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

SCHEMA = "twinme_ops"
TABLE = "heartbeat"
DDL = (
    f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}",
    f"CREATE TABLE IF NOT EXISTS {SCHEMA}.{TABLE} "
    "(at timestamptz PRIMARY KEY, lsn pg_lsn NOT NULL)",
)


@dataclass(frozen=True)
class Heartbeat:
    """One committed heartbeat: when, and the WAL position just before its insert."""

    at: datetime
    lsn: str


@dataclass
class HeartbeatCheck:
    """What a restored server holds of the heartbeats known before the restore."""

    target: str | None
    expected: int  # heartbeats at or before the target (all of them for latest)
    present: int  # of those, how many the restored server has
    first_missing: str | None
    newest_present: str | None
    unexpected: int  # heartbeats after the target that came back anyway
    first_unexpected: str | None
    ambiguous: int  # within commit_slack_s before the target: either answer is right

    @property
    def ok(self) -> bool:
        return self.present == self.expected and self.unexpected == 0

    def to_metadata(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def ensure_heartbeat_table(conn: Any) -> None:
    """Create the schema and table if missing (``conn`` in autocommit).

    Each statement runs only when its object is missing: PostgreSQL checks the privilege to
    create before ``IF NOT EXISTS``, and a role given a ready schema or table needs no more.
    """
    schema, table = conn.execute(
        "SELECT to_regnamespace(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL",
        (SCHEMA, f"{SCHEMA}.{TABLE}"),
    ).fetchone()
    for exists, statement in zip((schema, table), DDL, strict=True):
        if not exists:
            conn.execute(statement)


def write_heartbeat(conn: Any) -> Heartbeat:
    """Commit one heartbeat now; the row as written (``conn`` in autocommit)."""
    row = conn.execute(
        f"INSERT INTO {SCHEMA}.{TABLE} (at, lsn) "
        "VALUES (clock_timestamp(), pg_current_wal_lsn()) RETURNING at, lsn::text"
    ).fetchone()
    if not conn.autocommit:
        conn.commit()
    return Heartbeat(row[0], row[1])


def read_heartbeats(conn: Any) -> list[Heartbeat]:
    """Every heartbeat on the server, oldest first ([] when the table does not exist)."""
    exists = conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.{TABLE}",)).fetchone()[0]
    if exists is None:
        return []
    rows = conn.execute(f"SELECT at, lsn::text FROM {SCHEMA}.{TABLE} ORDER BY at").fetchall()
    return [Heartbeat(at, lsn) for at, lsn in rows]


def verify_heartbeats(
    conn: Any,
    known: Sequence[Heartbeat],
    target: datetime | None,
    *,
    commit_slack_s: float = 0.05,
) -> HeartbeatCheck:
    """Compare the restored server's heartbeats with ``known`` (read from the source before the
    restore) for a restore to ``target`` (None: latest, every known heartbeat must be there)."""
    restored = {hb.at for hb in read_heartbeats(conn)}
    slack = timedelta(seconds=commit_slack_s)
    expected: list[Heartbeat] = []
    after: list[Heartbeat] = []
    ambiguous = 0
    for hb in sorted(known, key=lambda h: h.at):
        if target is None or hb.at <= target - slack:
            expected.append(hb)
        elif hb.at <= target:
            ambiguous += 1
        else:
            after.append(hb)
    present = [hb for hb in expected if hb.at in restored]
    missing = [hb for hb in expected if hb.at not in restored]
    unexpected = [hb for hb in after if hb.at in restored]
    return HeartbeatCheck(
        target=target.isoformat() if target else None,
        expected=len(expected),
        present=len(present),
        first_missing=missing[0].at.isoformat() if missing else None,
        newest_present=max(restored).isoformat() if restored else None,
        unexpected=len(unexpected),
        first_unexpected=unexpected[0].at.isoformat() if unexpected else None,
        ambiguous=ambiguous,
    )
