"""Does the WAL archive hold every segment a restore from a base backup needs?

A restore replays the backup's own WAL (``pg_basebackup -X stream`` put it in ``pg_wal``), then
every archived segment from the one holding the backup's end onward. A missing segment in that
run (the receiver was down and its slot was dropped or invalidated) silently ends recovery there:
"latest" would quietly be older than it says. This check names the first missing segment.
"""

from __future__ import annotations

from twinme_ops.backups.pitr.basebackup import BaseBackup
from twinme_ops.backups.pitr.layout import (
    DEFAULT_SEGMENT_SIZE,
    HISTORY_RE,
    ArchiveLayout,
    format_lsn,
    parse_lsn,
    segment_name,
    segment_start,
)


def segment_size(layout: ArchiveLayout) -> int:
    """The server's WAL segment size, as the archived files show it (pg_receivewal pads the
    ``.partial`` one to full size too)."""
    for path in [*layout.segment_files(), *layout.partial_files()]:
        size = path.stat().st_size
        if size > 0 and size & (size - 1) == 0:
            return size
    return DEFAULT_SEGMENT_SIZE


def wal_gap(layout: ArchiveLayout, backup: BaseBackup) -> tuple[str, str] | None:
    """``(first missing LSN, description)`` when the archive has a hole after ``backup``.

    None when the run is complete, or when the source changed timeline since (recovery follows
    the ``.history`` files then, and this simple check does not judge).
    """
    size = segment_size(layout)
    if any(HISTORY_RE.match(p.name) for p in layout.wal_dir.iterdir()):
        return None
    present: set[int] = set()
    for path in [*layout.segment_files(), *layout.partial_files()]:
        tli, start = segment_start(path.name, size)
        if tli != backup.timeline:
            return None
        present.add(start // size)
    first = parse_lsn(backup.end_lsn) // size
    later = [segno for segno in present if segno >= first]
    if not later:
        return (
            format_lsn(first * size),
            f"no segment from {segment_name(backup.timeline, first * size, size)} on: the "
            "receiver has archived nothing since the backup ended",
        )
    for segno in range(first, max(later) + 1):
        if segno not in present:
            name = segment_name(backup.timeline, segno * size, size)
            return format_lsn(segno * size), f"segment {name} is missing"
    return None
