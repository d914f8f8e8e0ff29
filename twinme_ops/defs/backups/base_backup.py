"""The PostgreSQL base backup: the physical copy that point-in-time recovery starts from.

One asset, two engines (the ``wal_archive`` resource, ``TWINME_WAL_ARCHIVE``):

- ``local``: ``pg_basebackup`` into the archive root (``backups/pitr/basebackup.py``), full when
  there is none or the newest full one is older than ``full_every_days``, else incremental on the
  newest backup; ``pg_verifybackup`` checks it before it gets its final name.
- ``cloudnative-pg``: a ``Backup`` of the Cluster, taken by the Barman Cloud plugin into the
  backup bucket (``backups/pitr/cnpg_backup.py``); always full (barman-cloud has no incremental
  backups).
"""

from typing import Any

import dagster as dg
from pydantic import Field

from twinme_ops.backups.pitr.archive import WalArchive
from twinme_ops.backups.pitr.basebackup import choose_kind, take_base_backup
from twinme_ops.backups.pitr.cnpg_backup import CnpgBackupError, take_cnpg_backup
from twinme_ops.backups.pitr.layout import PitrError
from twinme_ops.backups.pitr.source import check_source, prepare_local_source
from twinme_ops.common.redact import redact
from twinme_ops.defs.resources import sandbox_postgres_server
from twinme_ops.servers.postgres import PostgresError, PostgresResource

MIB = 1024 * 1024


class BaseBackupConfig(dg.Config):
    """How the base backup is taken."""

    full_every_days: int = Field(
        default=7,
        ge=1,
        description="local engine: take a full backup when the newest full one is at least this "
        "many days old (else an incremental one on the newest backup).",
    )
    force_full: bool = Field(default=False, description="local engine: a full backup now.")
    max_rate: str = Field(
        default="",
        description="local engine: pg_basebackup's transfer rate limit (-r, e.g. 32M); empty: "
        "no limit.",
    )
    timeout_s: float = Field(
        default=4 * 3600,
        gt=0,
        description="Seconds the backup may take (pg_basebackup, or the CloudNativePG Backup "
        "reaching completed or failed) before the step fails.",
    )
    progress_interval_s: float = Field(
        default=10.0, gt=0, description="Seconds between progress lines in the run's logs."
    )
    poll_interval_s: float = Field(
        default=5.0, gt=0, description="cloudnative-pg engine: seconds between two reads."
    )


def _failure(message: str, **metadata: Any) -> dg.Failure:
    return dg.Failure(description=redact(message), metadata=metadata)


def _prepare_source(context: dg.AssetExecutionContext, postgres: PostgresResource) -> None:
    """The sandbox is made ready (settings, replication trust, a restart if needed); any other
    server is only checked: what it lacks fails the step with the fix."""
    server = sandbox_postgres_server(postgres)
    if server is not None:
        report = prepare_local_source(server)
        if report.changed:
            restarted = " (restarted)" if report.restarted else ""
            context.log.info(f"sandbox prepared for archiving: {report.changed}{restarted}")
        return
    with postgres.get_connection() as conn:
        problems = [r for r in check_source(conn) if not r.ok]
    if problems:
        fixes = "; ".join(f"{r.name} is {r.current}, needs {r.wanted}: {r.fix}" for r in problems)
        raise _failure(
            f"PostgreSQL at {postgres.describe()} is not ready for base backups: {fixes}. Fix: "
            "set these on the server (docs/backups.md, 'Base backups'), then re-run",
            not_ready=[r.name for r in problems],
        )


def _local(
    context: dg.AssetExecutionContext,
    config: BaseBackupConfig,
    postgres: PostgresResource,
    wal_archive: WalArchive,
) -> dg.MaterializeResult:
    layout = wal_archive.layout()
    _prepare_source(context, postgres)
    if config.force_full:
        kind, parent, why = "full", None, "force_full"
    else:
        kind, parent, why = choose_kind(layout, config.full_every_days)
    context.log.info(f"base backup of {postgres.describe()} into {layout.base_dir}: {kind} ({why})")
    backup = take_base_backup(
        layout,
        postgres.resolved_url(),
        kind=kind,
        parent=parent.id if parent is not None else None,
        max_rate=config.max_rate or None,
        timeout_s=config.timeout_s,
        log=context.log,
        progress_interval_s=config.progress_interval_s,
    )
    throughput = backup.bytes / MIB / backup.seconds if backup.seconds > 0 else 0.0
    context.log.info(
        f"base backup {backup.id} ({backup.kind}) verified: {backup.bytes / MIB:.1f} MiB in "
        f"{backup.seconds:.1f} s ({throughput:.1f} MiB/s), chain of {len(backup.chain)}"
    )
    return dg.MaterializeResult(
        metadata={
            "engine": "local",
            "backup_id": backup.id,
            "kind": backup.kind,
            "parent": backup.parent or "",
            "start_lsn": backup.start_lsn,
            "stop_lsn": backup.end_lsn,
            "timeline": backup.timeline,
            "size": dg.MetadataValue.int(backup.bytes),
            "size_mib": dg.MetadataValue.float(round(backup.bytes / MIB, 2)),
            "duration_s": dg.MetadataValue.float(backup.seconds),
            "throughput_mib_s": dg.MetadataValue.float(round(throughput, 2)),
            "chain_length": dg.MetadataValue.int(len(backup.chain)),
            "chain": backup.chain,
            "verified": backup.verified,
            "finished_at": backup.finished_at,
            "path": dg.MetadataValue.path(str(backup.path)),
        }
    )


def _cloudnative_pg(
    context: dg.AssetExecutionContext, config: BaseBackupConfig, wal_archive: WalArchive
) -> dg.MaterializeResult:
    try:
        backup = take_cnpg_backup(
            cluster=wal_archive.cluster,
            namespace=wal_archive.namespace,
            run_id=context.run.run_id,
            log=context.log,
            kubeconfig=wal_archive.kubeconfig,
            timeout_s=config.timeout_s,
            poll_interval_s=config.poll_interval_s,
        )
    except CnpgBackupError as exc:
        raise _failure(
            str(exc), backup=exc.backup, phase=exc.phase, cluster=wal_archive.cluster
        ) from None
    metadata: dict[str, Any] = {"engine": "cloudnative-pg", "kind": "full", **backup.metadata()}
    if backup.seconds is not None:
        metadata["duration_s"] = dg.MetadataValue.float(backup.seconds)
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    group_name="backups",
    kinds={"postgres"},
    description=(
        "A base backup of PostgreSQL, the copy point-in-time recovery replays the archived WAL "
        "onto. Local engine: pg_basebackup into the archive root, full every full_every_days "
        "days and incremental in between, verified by pg_verifybackup. cloudnative-pg engine: "
        "a CloudNativePG Backup taken by the Barman Cloud plugin into the backup bucket."
    ),
)
def postgres_base_backup(
    context: dg.AssetExecutionContext,
    config: BaseBackupConfig,
    postgres: PostgresResource,
    wal_archive: WalArchive,
) -> dg.MaterializeResult:
    try:
        engine = wal_archive.check_engine()
        if engine == "off":
            raise _failure(
                "continuous archiving is off (TWINME_WAL_ARCHIVE=off): a base backup would have "
                "no WAL to replay. Fix: set TWINME_WAL_ARCHIVE=local or cloudnative-pg, or stop "
                "base_backup_schedule"
            )
        if engine == "cloudnative-pg":
            return _cloudnative_pg(context, config, wal_archive)
        return _local(context, config, postgres, wal_archive)
    except (PitrError, PostgresError) as exc:
        raise _failure(str(exc)) from None
