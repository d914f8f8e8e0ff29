"""The recovery point objective, measured: how much time of commits the WAL archive could lose now.

Definition (docs/backups.md, "RPO, measured all the time"), from one :func:`.status.archive_status`
with the source's facts:

* **0** when the archive has flushed everything the server has written (``lag_bytes == 0``:
  the flushed position, ``pg_stat_replication.flush_lsn`` of the receiver or the slot's
  ``restart_lsn`` when it is away, equals ``pg_current_wal_lsn()``);
* otherwise, **now minus the time up to which the archive is known complete**: the newest
  heartbeat whose LSN (``pg_current_wal_lsn()`` just before its insert) is at or before the
  flushed position: every commit before that heartbeat is archived, any after it may not be.
  The heartbeat writer commits one every 5 s, so while the receiver streams this stays at 0
  (between beats nothing is written) or a few seconds (a beat in flight); when the receiver
  dies, it grows by one second per second from the moment of its last flush.
* Without heartbeats (none written yet, or none the archive holds), the age of the archive's
  newest write (the ``.partial`` segment, else the newest segment) stands in: the last moment
  the archive received anything.
* **unknown** (None) when the source cannot be reached or the slot does not exist.

The receiver's liveness and the slot's health (``wal_status``, ``safe_wal_size``) come with it:
an alert is due when the RPO exceeds the threshold *or* the receiver is dead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from twinme_ops.backups.pitr.heartbeat import SCHEMA, TABLE
from twinme_ops.backups.pitr.layout import ArchiveLayout, PitrError
from twinme_ops.backups.pitr.receiver import DEFAULT_SLOT, connect
from twinme_ops.backups.pitr.status import ArchiveStatus, archive_status
from twinme_ops.common.redact import redact


@dataclass
class RpoReading:
    """One measurement: the RPO, how it was measured, and the receiver's and slot's health."""

    status: ArchiveStatus
    rpo_s: float | None
    basis: str  # "caught up", "heartbeat", "archive write", or why it is unknown
    archived_up_to: str | None = None  # the time the archive is known complete up to

    @property
    def receiver_alive(self) -> bool:
        return self.status.receiver_alive

    @property
    def slot_healthy(self) -> bool:
        """The slot exists, is not lost, and (if it reports one) keeps a positive margin."""
        s = self.status
        if not s.slot_exists:
            return False
        if s.slot_wal_status == "lost":
            return False
        return s.slot_safe_wal_size is None or s.slot_safe_wal_size > 0

    def problems(self, threshold_s: float) -> list[str]:
        """What is wrong, in words (empty: healthy)."""
        out: list[str] = []
        if not self.receiver_alive:
            out.append("the WAL receiver is not running")
        if self.rpo_s is not None and self.rpo_s > threshold_s:
            out.append(f"the archive is {self.rpo_s:.0f} s behind (threshold {threshold_s:.0f} s)")
        if self.status.slot_exists is False:
            out.append(f"the replication slot {self.status.slot} does not exist")
        elif self.status.slot_wal_status == "lost":
            out.append(f"the replication slot {self.status.slot} lost WAL (wal_status lost)")
        return out

    def to_metadata(self) -> dict[str, Any]:
        return {
            "rpo_s": self.rpo_s,
            "rpo_basis": self.basis,
            "archived_up_to": self.archived_up_to,
            **self.status.to_metadata(),
        }


def _newest_heartbeat_at_or_before(url: str, flushed_lsn: str) -> datetime | None:
    with connect(url) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (f"{SCHEMA}.{TABLE}",)).fetchone()[0]
        if exists is None:
            return None
        row = conn.execute(
            f"SELECT at FROM {SCHEMA}.{TABLE} WHERE lsn <= %s::pg_lsn ORDER BY at DESC LIMIT 1",
            (flushed_lsn,),
        ).fetchone()
    return row[0] if row else None


def measure_rpo(layout: ArchiveLayout, url: str, *, slot: str = DEFAULT_SLOT) -> RpoReading:
    """Measure the RPO of the archive under ``layout`` for the source at ``url`` (see above)."""
    import psycopg

    status = archive_status(layout, url, slot=slot)
    if status.server_error:
        why = f"unknown: the source cannot be reached ({status.server_error})"
        return RpoReading(status, None, why)
    if not status.slot_exists or status.flushed_lsn is None:
        return RpoReading(status, None, f"unknown: no replication slot {slot} on the source")
    if status.lag_bytes == 0:
        return RpoReading(status, 0.0, "caught up", status.checked_at)
    now = time.time()
    try:
        at = _newest_heartbeat_at_or_before(url, status.flushed_lsn)
    except (PitrError, psycopg.Error, OSError) as exc:
        status.server_error = redact(str(exc))
        at = None
    if at is not None:
        rpo = round(max(0.0, now - at.timestamp()), 3)
        return RpoReading(status, rpo, "heartbeat", at.isoformat())
    ages = [a for a in (status.partial_age_s, status.newest_segment_age_s) if a is not None]
    if ages:
        age = min(ages)
        return RpoReading(status, age, "archive write")
    return RpoReading(status, None, "unknown: the archive holds no WAL yet")
