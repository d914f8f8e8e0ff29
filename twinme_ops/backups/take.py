"""Taking a backup set, without Dagster: used by the nightly assets and by recovery's safety
backup, so both write exactly the same artifacts, records and manifest.

Two runs of one set never write the same name (names carry the run id), and the manifest is
created only if none exists (unless the run was told to replace the set): a run that loses the
race is refused with :class:`SetCompleteError`, removes what it wrote, and the winner's set stays
byte for byte as its manifest says.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from twinme_ops.backups.artifacts import ArtifactResult, ProgressCallback, write_artifact
from twinme_ops.backups.keys import BackupKeys, as_keys
from twinme_ops.backups.manifest import (
    COMPONENT_LABELS,
    GLOBALS,
    MANIFEST,
    SET_PARTS,
    ComponentRecord,
    artifact_name,
    build_manifest,
    manifest_bytes,
    record_name,
)
from twinme_ops.backups.sets import read_set
from twinme_ops.backups.store.base import ArtifactExistsError, BackupStore, StoreError
from twinme_ops.common.log import DEFAULT_LOG, Log
from twinme_ops.common.pgtools import pg_tool_version
from twinme_ops.servers.files import FilesFacts, FileStorageResource, tar_stream
from twinme_ops.servers.postgres import DEFAULT_LOCK_WAIT_TIMEOUT_S, PostgresResource, snapshot_dump
from twinme_ops.servers.postgres_globals import globals_dump
from twinme_ops.servers.redis import RedisResource, rdb_snapshot


class SetCompleteError(Exception):
    """The set already has a manifest that this run may not replace; nothing of it was touched."""

    def __init__(self, message: str, set_id: str, verdict: str) -> None:
        super().__init__(message)
        self.set_id = set_id
        self.verdict = verdict


def complete_set_error(store: BackupStore, set_id: str, *, raced: bool) -> SetCompleteError:
    """Say that ``set_id`` is complete, who wrote it, its drill verdict, and how to replace it."""
    view = read_set(store, set_id)
    manifest = view.manifest or {}
    who = f" by run {manifest['run_id']}" if manifest.get("run_id") else ""
    when = f" at {manifest['created_at'][:19]}" if manifest.get("created_at") else ""
    lead = (
        f"backup set {set_id} was completed{who}{when} while this run was writing it"
        if raced
        else f"backup set {set_id} is already complete{who}{when}"
    )
    return SetCompleteError(
        f"{lead}; that set is untouched at {store.set_location(set_id)} "
        f"({view.verdict_line()}). Fix: nothing to do; to replace it, re-run with force: true "
        "in the run config (CLI: twinme-ops backup --force).",
        set_id,
        view.verdict,
    )


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
    component: str, sources: Sources, lock_wait_timeout_s: int, role_passwords: bool
) -> AbstractContextManager[tuple[Iterator[bytes], Any]]:
    if component == GLOBALS and sources.postgres:
        return globals_dump(sources.postgres, passwords=role_passwords)
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
    return None  # a tar's size is unknown before it ends; globals are a few kilobytes


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
            "table_grants": f.table_grants,
        }
        return source, {"pg_dump": pg_tool_version("pg_dump"), "format": "custom"}
    if component == GLOBALS:
        source = {
            "server_version": f.server_version,
            "roles": f.roles,
            "memberships": f.memberships,
            "passwords": f.passwords,
        }
        return source, {"pg_dumpall": pg_tool_version("pg_dumpall"), "options": f.options}
    if component == "redis":
        source = {
            "redis_version": f.redis_version,
            "keys": f.keys,
            "expires": f.expires,
            "total_keys": f.total_keys,
            # INFO memory's used_memory at snapshot time: what capacity_report projects
            "used_memory": f.used_memory,
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
    run_id: str,
    key: bytes | BackupKeys | None,
    replace: bool = False,
    level: int = 3,
    progress: ProgressCallback | None = None,
    progress_interval_s: float = 10.0,
    lock_wait_timeout_s: int = DEFAULT_LOCK_WAIT_TIMEOUT_S,
    role_passwords: bool = False,
) -> ComponentBackup:
    """Stream one component (or ``globals``) into the set under run ``run_id``'s names, then
    write its record.

    Any failure leaves neither artifact nor record behind (the store discards partial writes).
    ``key``: what encrypts (:class:`~twinme_ops.backups.keys.BackupKeys`, or AES key bytes).
    ``replace``: the run may replace a complete set (force); recorded for :func:`write_manifest`.
    ``lock_wait_timeout_s``: see :func:`~twinme_ops.servers.postgres.snapshot_dump`.
    ``role_passwords``: globals keep the roles' password hashes (sensitive; needs a superuser).
    """
    keys = as_keys(key)
    name = artifact_name(component, keys.name_suffix, run_id)
    with _open(component, sources, lock_wait_timeout_s, role_passwords) as (chunks, facts):
        result = write_artifact(
            store,
            set_id,
            name,
            chunks,
            level=level,
            key=keys,
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
        run_id=run_id,
        replace=replace,
    )
    store.put_bytes(set_id, record_name(component, run_id), record.to_json())
    return ComponentBackup(component, result, facts, record)


def backup_roles(
    store: BackupStore,
    set_id: str,
    sources: Sources,
    *,
    run_id: str,
    key: bytes | BackupKeys | None,
    replace: bool = False,
    level: int = 3,
    role_passwords: bool = False,
    log: Log = DEFAULT_LOG,
) -> ComponentBackup:
    """PostgreSQL's roles (the set's ``globals`` artifact), taken with the postgres component:
    its dump names them, and restores replay them first."""
    done = backup_component(
        GLOBALS,
        store,
        set_id,
        sources,
        run_id=run_id,
        key=key,
        replace=replace,
        level=level,
        role_passwords=role_passwords,
    )
    hashes = " with password hashes" if role_passwords else ""
    log.info(
        f"{COMPONENT_LABELS[GLOBALS]}: {len(done.facts.roles)} roles, "
        f"{done.facts.memberships} memberships{hashes} stored as {done.result.name}"
    )
    return done


def _run_records(
    store: BackupStore, set_id: str, runs: Sequence[str], names: dict[str, int]
) -> dict[str, ComponentRecord]:
    """Each component's record from the nearest run of ``runs`` (this run, then the runs it
    re-executes) that wrote one: a re-execution reuses the components its parent finished."""
    records: dict[str, ComponentRecord] = {}
    for component in SET_PARTS:
        for run in runs:
            if record_name(component, run) in names:
                data = store.get_bytes(set_id, record_name(component, run))
                records[component] = ComponentRecord.from_json(data)
                break
    return records


def _discard(store: BackupStore, set_id: str, records: dict[str, ComponentRecord]) -> None:
    for record in records.values():
        store.delete(set_id, record.artifact["name"])
        store.delete(set_id, record_name(record.component, record.run_id))


def write_manifest(
    store: BackupStore,
    set_id: str,
    *,
    environment: str,
    run_id: str,
    runs: Sequence[str] = (),
    log: Log = DEFAULT_LOG,
) -> dict:
    """Build the manifest from this run's component records and create it, last.

    ``runs``: the run ids whose records may be used, nearest first (default: ``run_id`` only).
    The manifest is created only if the set has none, unless every record used was written to
    replace the set (force), in which case it replaces the old manifest in one atomic write.
    When another run completed the set first, this run removes what it wrote and raises
    :class:`SetCompleteError`; the complete set is not touched. The records are folded into the
    manifest and then removed.
    """
    names = store.list_artifacts(set_id)
    records = _run_records(store, set_id, list(runs) or [run_id], names)
    manifest = build_manifest(
        set_id,
        records,
        names,
        environment=environment,
        run_id=run_id,
        location=store.set_location(set_id),
    )
    data = manifest_bytes(manifest)
    if all(r.replace for r in records.values()):
        if MANIFEST in names:
            log.info(f"force: replacing the manifest of set {set_id} (one atomic write)")
        store.put_bytes(set_id, MANIFEST, data)
    else:
        try:
            store.create_bytes(set_id, MANIFEST, data)
        except ArtifactExistsError:
            _discard(store, set_id, records)
            raise complete_set_error(store, set_id, raced=True) from None
    for record in records.values():
        try:
            store.delete(set_id, record_name(record.component, record.run_id))
        except StoreError as exc:  # a record left behind is a leftover, not a fault
            log.warning(f"could not remove record {record.component}.{record.run_id}.json: {exc}")
    return manifest


def backup_all(
    store: BackupStore,
    set_id: str,
    sources: Sources,
    *,
    key: bytes | BackupKeys | None,
    environment: str,
    run_id: str,
    log: Log,
) -> dict:
    """A complete set in one call (recovery's safety backup), PostgreSQL's roles first."""
    for component in SET_PARTS:
        done = backup_component(component, store, set_id, sources, run_id=run_id, key=key)
        log.info(f"{component}: {done.result.bytes_out:,} bytes stored in {set_id}")
    return write_manifest(store, set_id, environment=environment, run_id=run_id, log=log)
