"""Deterministic TwinMe demo data for PostgreSQL, Redis and file storage.

The same ``scale`` and ``anchor`` give the same rows, keys and files, byte for byte. PostgreSQL
rows are generated server-side (``generate_series``, ``md5`` of integers, ``sin`` for embedding
components), so scale 1 (about 100 MB) takes seconds, not minutes.

Seeding replaces what it owns: every TwinMe table is truncated, Redis keys are deleted by prefix
with ``SCAN`` (never ``FLUSHALL``: production renames it away and other data may share the
server), and only the top-level entries the seed creates are removed from the files directory.

:func:`seed` writes the three stores; each store's part is a module of its own (postgres.py,
redis.py, files.py), and what they share (the counts of a scale, the report, the corpus) is in
data.py. Every public name is importable from here.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path

from twinme_ops.sandbox.seed.data import SeedCounts, SeedReport
from twinme_ops.sandbox.seed.files import FILE_ROOTS, FILES_MTIME, seed_files
from twinme_ops.sandbox.seed.postgres import (
    EMBEDDING_DIM,
    TABLES,
    YEAR_S,
    ensure_event_partitions,
    seed_postgres,
)
from twinme_ops.sandbox.seed.redis import REDIS_PREFIXES, delete_owned_keys, seed_redis

__all__ = [
    "EMBEDDING_DIM",
    "FILES_MTIME",
    "FILE_ROOTS",
    "REDIS_PREFIXES",
    "TABLES",
    "YEAR_S",
    "SeedCounts",
    "SeedReport",
    "default_anchor",
    "delete_owned_keys",
    "ensure_event_partitions",
    "seed",
    "seed_files",
    "seed_postgres",
    "seed_redis",
]

logger = logging.getLogger(__name__)


def default_anchor() -> dt.datetime:
    """First instant of the current UTC month: seeds within a month are identical."""
    now = dt.datetime.now(dt.UTC)
    return dt.datetime(now.year, now.month, 1, tzinfo=dt.UTC)


def seed(
    database_url: str,
    redis_url: str,
    files_dir: Path,
    scale: float,
    *,
    anchor: dt.datetime | None = None,
) -> SeedReport:
    """Replace the TwinMe demo data in the three stores with deterministic data at ``scale``.

    ``anchor`` (default: start of the current UTC month) is the "now" of the data: rows span the
    12 months before it, the months that the schema's ``session_events`` partitions cover.
    """
    anchor = anchor or default_anchor()
    counts = SeedCounts.for_scale(scale)
    report = SeedReport(scale=scale, anchor=anchor.isoformat())
    started = time.monotonic()
    logger.info("seeding TwinMe demo data at scale %s (anchor %s)", scale, anchor.date())
    seed_postgres(database_url, counts, anchor, report)
    seed_redis(redis_url, counts, report)
    seed_files(Path(files_dir), counts, report)
    report.seconds = time.monotonic() - started
    logger.info(
        "seed done in %.1f s: %s rows, %s MB database, %s Redis keys, %s files (%.1f MB)",
        report.seconds,
        sum(report.rows.values()),
        report.database_size // 1_000_000,
        report.redis_keys,
        report.files,
        report.file_bytes / 1e6,
    )
    return report
