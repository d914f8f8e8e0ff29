"""Retention of the WAL archive: the ``wal_archive_retention`` asset, part of ``retention_job``.

It runs at 05:00 with the nightly sets' retention, after the 04:30 point-in-time drill, whose
record (``<root>/drill-passed.json``) it reads. Local engine: base backups and WAL outside the
recovery window are deleted (``backups/pitr/retention.py``, ``retention_apply.py``);
cloudnative-pg: the Barman Cloud plugin deletes them itself, and this asset checks that the
ObjectStore's ``retentionPolicy`` keeps the window (``backups/pitr/cnpg_retention.py``).
"""

from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
from pydantic import Field

from twinme_ops.backups.pitr.archive import WalArchive
from twinme_ops.backups.pitr.cnpg_retention import read_object_store_retention
from twinme_ops.backups.pitr.layout import PitrError
from twinme_ops.backups.pitr.retention_apply import DEFAULT_LOCK_TIMEOUT_S, run_wal_retention
from twinme_ops.common.redact import redact
from twinme_ops.defs.backups.base_backup import postgres_base_backup

NO_DRILL_PROTECTION = (
    "none in production: no point-in-time drill runs against the ObjectStore from twinme_ops "
    "(docs/backups.md, 'Retention of base backups and WAL')"
)


class WalRetentionConfig(dg.Config):
    """Run config of ``wal_archive_retention``; the window is the ``wal_archive`` resource's."""

    dry_run: bool = Field(
        default=False,
        description="List the base backups and WAL that would be deleted, and why, without "
        "deleting anything.",
    )
    lock_timeout_s: float = Field(
        default=DEFAULT_LOCK_TIMEOUT_S,
        gt=0,
        description="local engine: how long to wait for running restores (the point-in-time "
        "drill, a recovery) to finish reading the archive before giving up.",
    )


def _metadata(facts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in facts.items():
        if isinstance(value, bool | int | float | str):
            out[key] = value
        else:
            out[key] = dg.MetadataValue.json(value)
    return out


def _local(
    context: dg.AssetExecutionContext, config: WalRetentionConfig, wal_archive: WalArchive
) -> dg.MaterializeResult:
    layout = wal_archive.layout()
    if not layout.base_dir.is_dir() and not layout.wal_dir.is_dir():
        context.log.info(f"no WAL archive at {layout.root} yet: nothing to keep or delete")
        return dg.MaterializeResult(metadata={"engine": "local", "skipped": "no archive yet"})
    mode = "dry run" if config.dry_run else "applying"
    context.log.info(
        f"WAL archive retention of {layout.root} ({mode}): a "
        f"{wal_archive.recovery_window_days}-day recovery window"
    )
    report = run_wal_retention(
        layout,
        window_days=wal_archive.recovery_window_days,
        dry_run=config.dry_run,
        log=context.log,
        lock_timeout_s=config.lock_timeout_s,
    )
    metadata = {
        "engine": "local",
        **_metadata(report.to_metadata()),
        "decisions": dg.MetadataValue.md(report.decisions_markdown()),
    }
    if report.failures:
        raise dg.Failure(
            description=f"WAL archive retention stopped: {report.failures[0]} (the archive "
            "is still restorable: what was deleted is older than every kept backup)",
            metadata=metadata,
        )
    facts = report.to_metadata()
    verb = "would delete" if config.dry_run else "deleted"
    context.log.info(
        f"WAL archive retention done: kept {facts['base_backups_kept']} base backups and "
        f"{facts['wal_files_kept']} WAL files, {verb} {facts['base_backups_to_delete']} and "
        f"{facts['wal_files_to_delete']}; oldest restorable point "
        f"{facts['oldest_restorable_point'] or 'none'}"
    )
    return dg.MaterializeResult(metadata=metadata)


def _cloudnative_pg(
    context: dg.AssetExecutionContext, wal_archive: WalArchive
) -> dg.MaterializeResult:
    found = read_object_store_retention(
        object_store=wal_archive.object_store,
        namespace=wal_archive.namespace,
        server=wal_archive.cluster,
        window_days=wal_archive.recovery_window_days,
        kubeconfig=wal_archive.kubeconfig,
    )
    window_start = datetime.now(UTC) - timedelta(days=wal_archive.recovery_window_days)
    first = found.first_recoverability_point
    covered = bool(first) and datetime.fromisoformat(first.replace("Z", "+00:00")) <= window_start
    metadata = {
        "engine": "cloudnative-pg",
        "applied_by": "the Barman Cloud plugin (barman-cloud-backup-delete after each backup)",
        **_metadata(found.to_metadata()),
        "recovery_window_days": wal_archive.recovery_window_days,
        "window_start": window_start.isoformat(),
        "oldest_restorable_point": first,
        "window_covered": covered,
        "drill_protection": NO_DRILL_PROTECTION,
    }
    if not found.ok:
        raise dg.Failure(description=redact(found.message), metadata=metadata)
    (context.log.info if found.verdict == "matches" else context.log.warning)(found.message)
    if first and not covered:
        context.log.info(
            f"the oldest restorable point ({first}) is inside the window: the cluster's archive "
            "is younger than the window, or its older backups failed"
        )
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    group_name="backups",
    deps=[postgres_base_backup],
    kinds={"postgres"},
    description=(
        "Keeps the WAL archive's recovery window (30 days by default, TWINME_WAL_RECOVERY_WINDOW_"
        "DAYS): local engine, deletes the base backups and WAL no restore inside the window "
        "needs, never an incremental's full backup, never the chain the newest passing "
        "point-in-time drill restored from, never the segment being written; crash-safe, "
        "oldest first; dry_run: true to preview. cloudnative-pg: the Barman Cloud plugin "
        "deletes them itself; this checks the ObjectStore's retentionPolicy keeps the window."
    ),
)
def wal_archive_retention(
    context: dg.AssetExecutionContext, config: WalRetentionConfig, wal_archive: WalArchive
) -> dg.MaterializeResult:
    try:
        engine = wal_archive.check_engine()
        if engine == "off":
            context.log.info("continuous archiving is off (TWINME_WAL_ARCHIVE=off): no retention")
            return dg.MaterializeResult(metadata={"engine": "off", "skipped": "archiving off"})
        if engine == "cloudnative-pg":
            return _cloudnative_pg(context, wal_archive)
        return _local(context, config, wal_archive)
    except PitrError as exc:
        raise dg.Failure(description=redact(exc)) from None
