"""The restore drill: a backup set counts only once it has been restored and verified."""

import dagster as dg

from twinme_ops.alerting.metrics import MetricsResource
from twinme_ops.backups.crypto import BackupEncryption
from twinme_ops.backups.drill import DrillResult, run_drill
from twinme_ops.backups.manifest import set_id_for_partition
from twinme_ops.backups.sets import SetNotFoundError
from twinme_ops.backups.store.base import BackupStore
from twinme_ops.defs.backups.assets import backup_partitions
from twinme_ops.defs.backups.backup_set import backup_set
from twinme_ops.servers.postgres import PostgresResource

DRILL_CHECK = "restore_drill"


def drill_metadata(result: DrillResult) -> dict[str, dg.MetadataValue]:
    """Numbers a person wants to see over time (RTO, RPO), plus the verdict and its reason."""
    meta: dict[str, dg.MetadataValue] = {
        "set_id": dg.MetadataValue.text(result.set_id),
        "reason": dg.MetadataValue.text(result.reason),
        "rto_total_s": dg.MetadataValue.float(result.total_rto_s),
        "rpo_hours": dg.MetadataValue.float(round(result.rpo_s / 3600, 2)),
    }
    for component, seconds in result.rto_s.items():
        meta[f"rto_{component}_s"] = dg.MetadataValue.float(seconds)
    if result.restored:
        meta["restored"] = dg.MetadataValue.json(result.restored)
    if result.failures:
        meta["failures"] = dg.MetadataValue.json(result.failures)
    return meta


def drill_set(
    log: dg.DagsterLogManager,
    set_id: str,
    backup_store: BackupStore,
    backup_encryption: BackupEncryption,
    postgres: PostgresResource,
    metrics: MetricsResource | None = None,
) -> DrillResult:
    """Run the drill for one set with the configured store, key and production database;
    push its verdict, RTO and RPO (passed or not) when ``metrics`` is given. A set that does not
    exist (or has no manifest) fails with the newest complete set's id, and writes nothing."""
    production = postgres.url or None  # empty: the sandbox, which drills never touch either
    try:
        result = run_drill(
            backup_store,
            set_id,
            key=backup_encryption.get_keys(),
            production_database_url=production,
            log=log,
        )
    except SetNotFoundError as exc:  # nothing to drill, and nothing was written
        raise dg.Failure(description=str(exc), metadata={"set_id": set_id}) from None
    if metrics is not None:
        metrics.push_drill(result, log=log)
    return result


@dg.asset_check(
    asset=backup_set,
    name=DRILL_CHECK,
    blocking=True,
    partitions_def=backup_partitions,
    description=(
        "Restore drill: fetch the set, verify every sha256, decrypt and decompress, then restore "
        "PostgreSQL's roles and then its dump into a scratch server (pg_restore, owners and "
        "grants), Redis into a scratch redis-server and the files into a temporary directory; "
        "compare roles, grants, row, key and file counts with the manifest "
        "and run a pgvector nearest-neighbour query. Records RTO per component and RPO. A failed "
        "drill fails the run."
    ),
)
def restore_drill(
    context: dg.AssetCheckExecutionContext,
    backup_store: BackupStore,
    backup_encryption: BackupEncryption,
    postgres: PostgresResource,
    metrics: MetricsResource,
) -> dg.AssetCheckResult:
    set_id = set_id_for_partition(context.op_execution_context.partition_key)
    result = drill_set(context.log, set_id, backup_store, backup_encryption, postgres, metrics)
    return dg.AssetCheckResult(
        passed=result.passed,
        description=result.reason,
        metadata=drill_metadata(result),
    )
