"""How far behind the WAL archive is: the facts an RPO sensor reads.

From the archive's folder: the newest completed segment and its age, the ``.partial`` segment
being written, whether the receiver process lives. From the source server (when a URL is given):
its current WAL position, the position the receiver has flushed (``pg_stat_replication`` of the
sender holding the slot, or the slot's ``restart_lsn`` when the receiver is away), the lag in
bytes between them, and the slot's health (``wal_status``, ``safe_wal_size``: a slot whose
receiver is gone keeps WAL on the server until it fills its disk or ``max_slot_wal_keep_size``
invalidates the slot). A failure to reach the server is a fact too, never an exception.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twinme_ops.backups.pitr.layout import (
    ArchiveLayout,
    PitrError,
    format_lsn,
    parse_lsn,
    segment_start,
)
from twinme_ops.backups.pitr.receiver import (
    DEFAULT_SLOT,
    connect,
    receiver_pid,
    receiver_process,
    receiver_state,
)
from twinme_ops.common.redact import redact


@dataclass
class ArchiveStatus:
    """One look at the archive and (optionally) the source; ``to_metadata()`` for Dagster."""

    root: str
    checked_at: str
    receiver_alive: bool = False
    receiver_pid: int | None = None
    synchronous: bool | None = None
    receiver_log_tail: str = ""
    newest_segment: str | None = None
    newest_segment_mtime: str | None = None
    newest_segment_age_s: float | None = None
    partial_segment: str | None = None
    partial_start_lsn: str | None = None
    partial_age_s: float | None = None
    segments: int = 0
    # from the source server
    server_error: str = ""
    current_lsn: str | None = None
    flushed_lsn: str | None = None
    flush_source: str = ""
    lag_bytes: int | None = None
    reply_age_s: float | None = None
    slot: str = DEFAULT_SLOT
    slot_exists: bool | None = None
    slot_active: bool | None = None
    slot_restart_lsn: str | None = None
    slot_wal_status: str | None = None
    slot_safe_wal_size: int | None = None

    def to_metadata(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None and v != ""}


def _age(path: Path, now: float) -> tuple[str, float]:
    mtime = path.stat().st_mtime
    return datetime.fromtimestamp(mtime, UTC).isoformat(), round(max(0.0, now - mtime), 3)


def archive_status(
    layout: ArchiveLayout, url: str | None = None, *, slot: str = DEFAULT_SLOT
) -> ArchiveStatus:
    """The archive's facts, and the source's when ``url`` is given."""
    now = time.time()
    status = ArchiveStatus(str(layout.root), datetime.fromtimestamp(now, UTC).isoformat())
    status.slot = slot
    pid = receiver_pid(layout)
    status.receiver_alive = pid is not None
    status.receiver_pid = pid
    state = receiver_state(layout)
    if state is not None:
        status.synchronous = state.synchronous
    if pid is None:
        status.receiver_log_tail = redact(receiver_process(layout).log_tail(8))
    segments = layout.segment_files()
    status.segments = len(segments)
    if segments:
        newest = segments[-1]
        status.newest_segment = newest.name
        status.newest_segment_mtime, status.newest_segment_age_s = _age(newest, now)
    partials = layout.partial_files()
    if partials:
        partial = partials[-1]
        status.partial_segment = partial.name
        status.partial_start_lsn = format_lsn(segment_start(partial.name)[1])
        status.partial_age_s = _age(partial, now)[1]
    if url is not None:
        _server_facts(status, url, slot)
    return status


def _server_facts(status: ArchiveStatus, url: str, slot: str) -> None:
    import psycopg

    try:
        with connect(url) as conn:
            row = conn.execute(
                "SELECT pg_current_wal_lsn()::text, s.slot_name IS NOT NULL, s.active, "
                "s.restart_lsn::text, s.wal_status, s.safe_wal_size, r.flush_lsn::text, "
                "extract(epoch FROM clock_timestamp() - r.reply_time)::float8 "
                "FROM (SELECT 1) one "
                "LEFT JOIN pg_replication_slots s ON s.slot_name = %s "
                "LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid",
                (slot,),
            ).fetchone()
    except (PitrError, psycopg.Error, OSError) as exc:
        status.server_error = redact(str(exc))
        return
    current, exists, active, restart, wal_status, safe, flush, reply_age = row
    status.current_lsn = current
    status.slot_exists = bool(exists)
    status.slot_active = active
    status.slot_restart_lsn = restart
    status.slot_wal_status = wal_status
    status.slot_safe_wal_size = None if safe is None else int(safe)
    status.reply_age_s = None if reply_age is None else round(float(reply_age), 3)
    if flush:
        status.flushed_lsn, status.flush_source = flush, "pg_stat_replication"
    elif restart:
        status.flushed_lsn, status.flush_source = restart, "slot restart_lsn"
    if status.flushed_lsn:
        status.lag_bytes = max(0, parse_lsn(current) - parse_lsn(status.flushed_lsn))
