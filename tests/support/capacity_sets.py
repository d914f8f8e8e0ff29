"""Nightly backup sets of simulated days, written into a real store the way a backup run
finishes one: artifacts, then a manifest built by ``build_manifest`` from their records.

The artifacts are small; the source facts (database size, Redis memory, file bytes) and the
bytes read and durations are what the test says, so weeks of growth take milliseconds."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, date, datetime, time

from twinme_ops.backups.manifest import (
    MANIFEST,
    ComponentRecord,
    artifact_name,
    build_manifest,
    manifest_bytes,
)
from twinme_ops.backups.store.base import BackupStore

GIB = 1024**3
MIB = 1024**2


def write_nightly_set(
    store: BackupStore,
    day: date,
    *,
    postgres_bytes: int,
    redis_bytes: int | None,
    files_bytes: int,
    read_bytes: int,
    duration_s: float,
) -> dict:
    """Write a complete set for ``day``; ``read_bytes`` and ``duration_s`` are split over the
    three components. ``redis_bytes`` None: a set from before used_memory was recorded."""
    set_id = day.isoformat()
    run_id = f"run{day:%Y%m%d}"
    sources = {
        "postgres": {"database_size": postgres_bytes, "total_rows": postgres_bytes // 1000},
        "redis": {"total_keys": 1000, "keys": {"db0": 1000}}
        | ({} if redis_bytes is None else {"used_memory": redis_bytes}),
        "files": {"files": files_bytes // 50_000, "bytes": files_bytes},
    }
    records = {}
    for component, source in sources.items():
        data = os.urandom(64)
        name = artifact_name(component, False, run_id)
        store.put_bytes(set_id, name, data)
        artifact = {
            "name": name,
            "bytes_in": read_bytes // 3,
            "bytes_out": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "compression": {"algorithm": "zstd", "level": 3},
            "encryption": None,
            "duration_s": duration_s / 3,
        }
        records[component] = ComponentRecord(component, artifact, source, {}, run_id=run_id)
    manifest = build_manifest(
        set_id,
        records,
        store.list_artifacts(set_id),
        environment="local",
        run_id=run_id,
        location=store.set_location(set_id),
        created_at=datetime.combine(day, time(1, 0), tzinfo=UTC),
    )
    store.create_bytes(set_id, MANIFEST, manifest_bytes(manifest))
    return manifest
