"""What each nightly backup set says about the size of things, read from its manifest.

A manifest (``twinme_ops/backups/manifest.py``) records, per component, the source facts taken at
backup time (database size and rows, Redis keys and used memory, file count and bytes), what was
read and stored (``bytes_in``, ``bytes_out``) and how long it took (``durations_s``). This module
reads them from the manifest's JSON alone, so it needs no backup code and works on sets written
by older versions (a fact they lack is ``None``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any


@dataclass(frozen=True)
class SetSample:
    """The sizes one nightly set recorded (``None``: the set did not record it)."""

    day: date
    postgres_bytes: float | None
    postgres_rows: float | None
    redis_bytes: float | None
    redis_keys: float | None
    files_bytes: float | None
    files_count: float | None
    backup_bytes: float | None  # the set as stored (compressed, encrypted)
    read_bytes: float | None  # what the backup read from the sources (bytes_in)
    backup_s: float | None  # the components' durations, added up

    @property
    def throughput(self) -> float | None:
        """Bytes read per second of backup, or ``None``."""
        if self.read_bytes is None or not self.backup_s:
            return None
        return self.read_bytes / self.backup_s


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _source(manifest: Mapping[str, Any], component: str, key: str) -> float | None:
    artifact = (manifest.get("artifacts") or {}).get(component) or {}
    return _number((artifact.get("source") or {}).get(key))


def sample_from_manifest(set_id: str, manifest: Mapping[str, Any]) -> SetSample:
    """The sizes a set's manifest records. ``set_id`` is the set's date (YYYY-MM-DD)."""
    artifacts = manifest.get("artifacts") or {}
    read = [_number(a.get("bytes_in")) for a in artifacts.values() if isinstance(a, dict)]
    durations = [_number(v) for v in (manifest.get("durations_s") or {}).values()]
    return SetSample(
        day=date.fromisoformat(set_id),
        postgres_bytes=_source(manifest, "postgres", "database_size"),
        postgres_rows=_source(manifest, "postgres", "total_rows"),
        redis_bytes=_source(manifest, "redis", "used_memory"),
        redis_keys=_source(manifest, "redis", "total_keys"),
        files_bytes=_source(manifest, "files", "bytes"),
        files_count=_source(manifest, "files", "files"),
        backup_bytes=_number(manifest.get("total_bytes")),
        read_bytes=sum(r for r in read if r is not None) if read and None not in read else None,
        backup_s=sum(d for d in durations if d is not None)
        if durations and None not in durations
        else None,
    )


def series(samples: Iterable[SetSample], field: str) -> list[tuple[date, float]]:
    """``(day, value)`` of one field, oldest first, leaving out the sets that lack it."""
    points = [(s.day, getattr(s, field)) for s in samples]
    return sorted((day, value) for day, value in points if value is not None)


def measured_throughput(samples: Iterable[SetSample], last: int = 7) -> float | None:
    """Median bytes read per second over the ``last`` sets that recorded it (one slow night
    does not move it much)."""
    ordered = sorted(samples, key=lambda s: s.day)
    values = sorted(t for s in ordered[-last:] if (t := s.throughput) is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
