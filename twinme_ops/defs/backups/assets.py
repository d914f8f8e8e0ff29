"""Nightly backup assets: one artifact per component (the set's manifest: ``backup_set.py``)."""

from collections.abc import Callable
from typing import Any

import dagster as dg
from pydantic import Field

from twinme_ops.backups.artifacts import ArtifactResult
from twinme_ops.backups.crypto import BackupEncryption
from twinme_ops.backups.manifest import (
    COMPONENT_LABELS,
    MANIFEST,
    ManifestError,
    set_id_for_partition,
)
from twinme_ops.backups.store.base import BackupStore, StoreError
from twinme_ops.backups.take import (
    SetCompleteError,
    Sources,
    backup_component,
    backup_roles,
    complete_set_error,
)
from twinme_ops.common.redact import redact
from twinme_ops.servers.files import FilesBackupError
from twinme_ops.servers.postgres import DEFAULT_LOCK_WAIT_TIMEOUT_S, PostgresError
from twinme_ops.servers.redis import RedisSnapshotError

MIB = 1024 * 1024

backup_partitions = dg.DailyPartitionsDefinition(
    start_date="2026-01-01", timezone="Europe/Paris", end_offset=1
)

# Errors whose message already names the component, the cause and the fix
EXPECTED_ERRORS = (PostgresError, RedisSnapshotError, FilesBackupError, StoreError, ManifestError)


class BackupConfig(dg.Config):
    """Run config shared by the backup components."""

    force: bool = Field(
        default=False,
        description="Replace this partition's set even if it is complete (has a manifest): the "
        "old set stays whole until the new manifest replaces it in one atomic write.",
    )
    zstd_level: int = Field(default=3, ge=1, le=19, description="zstd compression level.")
    progress_interval_s: float = Field(
        default=10.0, gt=0, description="Seconds between progress lines in the run's logs."
    )
    lock_wait_timeout_s: int = Field(
        default=DEFAULT_LOCK_WAIT_TIMEOUT_S,
        ge=0,
        description="Seconds the PostgreSQL dump waits for a table another session holds "
        "exclusively (ALTER TABLE, VACUUM FULL) before failing with the table's name; 0 waits "
        "until the job's max runtime.",
    )
    role_passwords: bool = Field(
        default=False,
        description="Keep the roles' password hashes in the set's PostgreSQL roles artifact "
        "(pg_dumpall without --no-role-passwords). Sensitive: the set then holds every role's "
        "SCRAM verifier; needs a superuser and client-side encryption (age or AES).",
    )


def run_lineage(context: dg.AssetExecutionContext) -> list[str]:
    """This run's id, then the ids of the runs it re-executes, nearest first."""
    runs = [context.run.run_id]
    parent = context.run.parent_run_id
    while parent and parent not in runs and len(runs) < 100:
        runs.append(parent)
        run = context.instance.get_run_by_id(parent)
        parent = run.parent_run_id if run is not None else None
    return runs


def run_status(instance: dg.DagsterInstance) -> Callable[[str], str | None]:
    """A run's status in this instance (None for a run another instance launched)."""

    def status(run_id: str) -> str | None:
        try:
            run = instance.get_run_by_id(run_id)
        except Exception:  # not a run id this instance can look up
            return None
        return run.status.value if run is not None else None

    return status


def complete_set_failure(exc: SetCompleteError) -> dg.Failure:
    """The refusal to overwrite a complete set; alerts read ``set_complete`` in its metadata and
    never describe that set as missing."""
    return dg.Failure(
        description=str(exc),
        metadata={
            "set_id": exc.set_id,
            "set_complete": True,
            "drill": exc.verdict,
        },
    )


def _prepare_set(
    context: dg.AssetExecutionContext, store: BackupStore, component: str, force: bool
) -> str:
    """Refuse to start on a complete set unless forced (nothing is removed: the run writes under
    its own names, and a forced run's manifest replaces the old one only at the end)."""
    set_id = set_id_for_partition(context.partition_key)
    store.check_writable()
    if store.exists(set_id, MANIFEST):
        if not force:
            raise complete_set_failure(complete_set_error(store, set_id, raced=False))
        context.log.warning(
            f"force: set {set_id} is complete; it stays whole until this run's manifest replaces it"
        )
    return set_id


def _progress(
    context: dg.AssetExecutionContext, component: str
) -> Callable[[int, int, float], None]:
    def report(bytes_in: int, bytes_out: int, elapsed: float) -> None:
        rate = bytes_in / MIB / elapsed if elapsed > 0 else 0.0
        context.log.info(
            f"{component}: {bytes_in / MIB:,.1f} MiB read, {bytes_out / MIB:,.1f} MiB stored, "
            f"{rate:,.1f} MiB/s, {elapsed:,.0f} s"
        )

    return report


def _artifact_metadata(set_id: str, store: BackupStore, res: ArtifactResult) -> dict[str, Any]:
    throughput = res.bytes_in / MIB / res.duration_s if res.duration_s > 0 else 0.0
    return {
        "set_id": set_id,
        "location": dg.MetadataValue.text(store.set_location(set_id)),
        "artifact": res.name,
        "bytes_in": dg.MetadataValue.int(res.bytes_in),
        "bytes_out": dg.MetadataValue.int(res.bytes_out),
        "size_mb": dg.MetadataValue.float(round(res.bytes_out / MIB, 3)),
        "compression_ratio": dg.MetadataValue.float(round(res.ratio, 3)),
        "duration_s": dg.MetadataValue.float(round(res.duration_s, 3)),
        "throughput_mb_s": dg.MetadataValue.float(round(throughput, 2)),
        "sha256": res.sha256,
        "encrypted": dg.MetadataValue.bool(res.encryption is not None),
        "encryption": res.encryption["algorithm"] if res.encryption else "none",
    }


def _backup_component(
    context: dg.AssetExecutionContext,
    component: str,
    config: BackupConfig,
    store: BackupStore,
    encryption: BackupEncryption,
    sources: Sources,
) -> tuple[str, ArtifactResult, Any, dict[str, Any]]:
    """Run one component of the set, turning expected errors into a Failure with the fix.
    The last item is metadata of what came with it (the postgres component's roles artifact)."""
    from twinme_ops.backups.window import refuse_unless_present  # issue 11, defect 4

    refuse_unless_present(context)  # a backup is a copy of the present: no past partitions
    label = COMPONENT_LABELS[component]
    keys = encryption.get_keys()
    if config.role_passwords and keys.write_scheme is None:
        raise dg.Failure(
            description="role_passwords: true would store every role's password hash "
            "unencrypted. Fix: set TWINME_BACKUP_AGE_RECIPIENTS (or "
            "TWINME_BACKUP_ENCRYPTION_KEY), or leave role_passwords false (the default)."
        )
    extra: dict[str, Any] = {}
    try:
        set_id = _prepare_set(context, store, component, config.force)
        context.log.info(f"{label}: backing up into {store.set_location(set_id)}")
        if component == "postgres":  # the roles its dump names, restored before it
            roles = backup_roles(
                store,
                set_id,
                sources,
                run_id=context.run.run_id,
                key=keys,
                replace=config.force,
                level=config.zstd_level,
                role_passwords=config.role_passwords,
                log=context.log,
            )
            extra = {
                "roles": dg.MetadataValue.int(len(roles.facts.roles)),
                "roles_bytes": dg.MetadataValue.int(roles.result.bytes_out),
            }
        done = backup_component(
            component,
            store,
            set_id,
            sources,
            run_id=context.run.run_id,
            key=keys,
            replace=config.force,
            level=config.zstd_level,
            progress=_progress(context, component),
            progress_interval_s=config.progress_interval_s,
            lock_wait_timeout_s=config.lock_wait_timeout_s,
        )
    except EXPECTED_ERRORS as exc:
        raise dg.Failure(description=f"{label} backup failed: {redact(exc)}") from None
    return set_id, done.result, done.facts, extra


def _component_asset(
    component: str,
    *,
    source: str,
    kind: str,
    description: str,
    details: Callable[[dg.AssetExecutionContext, ArtifactResult, Any], dict[str, Any]],
    pool: str | None = None,
) -> dg.AssetsDefinition:
    """The asset ``<component>_backup``: the component, read through the resource ``source``
    (a field of :class:`Sources`), into the day's set. Its metadata is the artifact's, then
    ``details(context, result, facts)``: the source's own figures (which may also log them)."""

    @dg.asset(
        name=f"{component}_backup",
        partitions_def=backup_partitions,
        group_name="backups",
        kinds={kind, "zstd"},
        pool=pool,
        description=description,
        required_resource_keys={source, "backup_store", "backup_encryption"},
    )
    def component_backup(
        context: dg.AssetExecutionContext, config: BackupConfig
    ) -> dg.MaterializeResult:
        store: BackupStore = context.resources.backup_store
        sources = Sources(**{source: getattr(context.resources, source)})
        set_id, result, facts, extra = _backup_component(
            context, component, config, store, context.resources.backup_encryption, sources
        )
        return dg.MaterializeResult(
            metadata={
                **_artifact_metadata(set_id, store, result),
                **details(context, result, facts),
                **extra,
            }
        )

    return component_backup


def _postgres_details(
    context: dg.AssetExecutionContext, result: ArtifactResult, facts: Any
) -> dict[str, Any]:
    context.log.info(
        f"PostgreSQL: {facts.total_rows:,} rows in {len(facts.tables)} tables, "
        f"{result.bytes_out / MIB:,.1f} MiB stored"
    )
    return {
        "rows_total": dg.MetadataValue.int(facts.total_rows),
        "tables": dg.MetadataValue.int(len(facts.tables)),
        "database_size_bytes": dg.MetadataValue.int(facts.database_size),
        "table_rows": dg.MetadataValue.json(facts.tables),
    }


def _redis_details(
    context: dg.AssetExecutionContext, result: ArtifactResult, facts: Any
) -> dict[str, Any]:
    details = {
        "keys_total": dg.MetadataValue.int(facts.total_keys),
        "keys_by_db": dg.MetadataValue.json(facts.keys),
        "redis_version": facts.redis_version,
    }
    if facts.source:  # behind Sentinel (docs/redis-ha.md): a replica, or the primary
        context.log.info(f"redis: snapshot read from the {facts.source}")
        details["snapshot_source"] = facts.source
    return details


def _files_details(
    context: dg.AssetExecutionContext, result: ArtifactResult, facts: Any
) -> dict[str, Any]:
    if facts.skipped:
        context.log.warning(f"files: skipped {len(facts.skipped)} special or vanished entries")
    return {
        "files": dg.MetadataValue.int(facts.files),
        "file_bytes": dg.MetadataValue.int(facts.bytes),
        "symlinks": dg.MetadataValue.int(facts.symlinks),
    }


postgres_backup = _component_asset(
    "postgres",
    source="postgres",
    kind="postgres",
    pool="twinme_database",
    description=(
        "The cluster's roles and memberships (pg_dumpall --globals-only, no password hashes unless "
        "role_passwords), then pg_dump (custom format) of the TwinMe database from an exported "
        "snapshot, zstd-compressed (optionally encrypted: age, or AES-256-GCM for older setups) "
        "and streamed into the backup store. Per-table row "
        "counts come from the same snapshot so the restore drill can verify them."
    ),
    details=_postgres_details,
)
redis_backup = _component_asset(
    "redis",
    source="redis",
    kind="redis",
    description=(
        "RDB snapshot of Redis taken over the replication protocol (what redis-cli --rdb does, "
        "no CONFIG or disk access needed), zstd-compressed into the backup store, with the key "
        "count of every database."
    ),
    details=_redis_details,
)
files_backup = _component_asset(
    "files",
    source="file_storage",
    kind="file",
    description=(
        "tar of the API's file storage (TWINME_FILES_DIR: relative paths, symlinks and modes "
        "kept), zstd-compressed into the backup store, with file count and bytes."
    ),
    details=_files_details,
)
