"""Taking a backup set, without Dagster: used by the nightly assets and by recovery's safety
backup, so both write exactly the same artifacts, records and manifest."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from twinme_ops.lib.artifacts import ArtifactResult, ProgressCallback, write_artifact
from twinme_ops.lib.files import FilesFacts, FileStorageResource, tar_stream
from twinme_ops.lib.manifest import (
    COMPONENTS,
    MANIFEST,
    ComponentRecord,
    artifact_name,
    build_manifest,
    manifest_bytes,
    record_name,
)
from twinme_ops.lib.pgtools import pg_tool_version
from twinme_ops.lib.postgres import DEFAULT_LOCK_WAIT_TIMEOUT_S, PostgresResource, snapshot_dump
from twinme_ops.lib.redis_snapshot import RedisResource, rdb_snapshot
from twinme_ops.lib.store import BackupStore


@dataclass
class Sources:
    """The servers a backup reads (only those of the components being backed up)."""

    postgres: PostgresResource | None = None
    redis: RedisResource | None = None
    file_storage: FileStorageResource | None = None


@dataclass
class ComponentBackup:
    """One component written to the store, with the facts read from its source."""

    component: str
    result: ArtifactResult
    facts: Any
    record: ComponentRecord


@contextmanager
def _files_source(storage: FileStorageResource) -> Iterator[tuple[Iterator[bytes], FilesFacts]]:
    root = storage.resolved_path()
    facts = FilesFacts(root=str(root))
    yield tar_stream(root, facts), facts


def _open(
    component: str, sources: Sources, lock_wait_timeout_s: int
) -> AbstractContextManager[tuple[Iterator[bytes], Any]]:
    if component == "postgres" and sources.postgres:
        return snapshot_dump(sources.postgres, lock_wait_timeout_s=lock_wait_timeout_s)
    if component == "redis" and sources.redis:
        return rdb_snapshot(sources.redis)
    if component == "files" and sources.file_storage:
        return _files_source(sources.file_storage)
    raise ValueError(f"no source configured for component {component!r}")


def _size_hint(component: str, facts: Any) -> int | None:
    """What the store sizes its upload parts from (a tar's size is unknown before it ends)."""
    if component == "postgres":
        return facts.database_size
    if component == "redis":
        return facts.used_memory
    return None


def _describe(component: str, f: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(source facts, tool versions)`` recorded for a component."""
    if component == "postgres":
        source = {
            "database": f.database,
            "server_version": f.server_version,
            "database_size": f.database_size,
            "tables": f.tables,
            "total_rows": f.total_rows,
            "policy_roles": f.policy_roles,
        }
        return source, {"pg_dump": pg_tool_version("pg_dump"), "format": "custom"}
    if component == "redis":
        source = {
            "redis_version": f.redis_version,
            "keys": f.keys,
            "expires": f.expires,
            "total_keys": f.total_keys,
        }
        return source, {"protocol": "SYNC (replication)", "redis_version": f.redis_version}
    source = {
        "root": f.root,
        "files": f.files,
        "bytes": f.bytes,
        "dirs": f.dirs,
        "symlinks": f.symlinks,
        "skipped": f.skipped,
    }
    return source, {"tar": "python tarfile, PAX format"}


def backup_component(
    component: str,
    store: BackupStore,
    set_id: str,
    sources: Sources,
    *,
    key: bytes | None,
    level: int = 3,
    progress: ProgressCallback | None = None,
    progress_interval_s: float = 10.0,
    lock_wait_timeout_s: int = DEFAULT_LOCK_WAIT_TIMEOUT_S,
) -> ComponentBackup:
    """Stream one component into the set, then write its record.

    Any failure leaves neither artifact nor record behind (the store discards partial writes).
    ``lock_wait_timeout_s``: see :func:`~twinme_ops.lib.postgres.snapshot_dump`.
    """
    name = artifact_name(component, key is not None)
    with _open(component, sources, lock_wait_timeout_s) as (chunks, facts):
        result = write_artifact(
            store,
            set_id,
            name,
            chunks,
            level=level,
            key=key,
            size_hint=_size_hint(component, facts),
            progress=progress,
            progress_interval_s=progress_interval_s,
        )
    source, tool = _describe(component, facts)
    record = ComponentRecord(
        component=component,
        artifact={**result.to_dict(), "created_at": datetime.now(UTC).isoformat()},
        source=source,
        tool=tool,
    )
    store.put_bytes(set_id, record_name(component), record.to_json())
    return ComponentBackup(component, result, facts, record)


def clear_component(store: BackupStore, set_id: str, component: str) -> None:
    """Remove a component's artifact (plain or encrypted) and record before it is rewritten."""
    for encrypted in (False, True):
        store.delete(set_id, artifact_name(component, encrypted))
    store.delete(set_id, record_name(component))


def write_manifest(store: BackupStore, set_id: str, *, environment: str, run_id: str) -> dict:
    """Build the manifest from the component records and write it last."""
    records = {
        c: ComponentRecord.from_json(store.get_bytes(set_id, record_name(c)))
        for c in COMPONENTS
        if store.exists(set_id, record_name(c))
    }
    manifest = build_manifest(
        set_id,
        records,
        store.list_artifacts(set_id),
        environment=environment,
        run_id=run_id,
        location=store.set_location(set_id),
    )
    store.put_bytes(set_id, MANIFEST, manifest_bytes(manifest))
    return manifest


def backup_all(
    store: BackupStore,
    set_id: str,
    sources: Sources,
    *,
    key: bytes | None,
    environment: str,
    run_id: str,
    log: Callable[[str], None],
) -> dict:
    """A complete set in one call (recovery's safety backup)."""
    for component in COMPONENTS:
        done = backup_component(component, store, set_id, sources, key=key)
        log(f"{component}: {done.result.bytes_out:,} bytes stored in {set_id}")
    return write_manifest(store, set_id, environment=environment, run_id=run_id)
