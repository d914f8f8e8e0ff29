"""Backup jobs: the nightly backup (with its drill), the base backup, the on-demand restore
drill, and the point-in-time drill of the WAL archive."""

from collections.abc import Iterator

import dagster as dg
from pydantic import Field

from twinme_ops.alerting.metrics import MetricsResource
from twinme_ops.backups.crypto import BackupEncryption
from twinme_ops.backups.sets import newest_complete_set
from twinme_ops.backups.store.base import BackupStore
from twinme_ops.defs.alerts.hooks import slack_on_backup_failure
from twinme_ops.defs.backups.backup_set import BACKUP_ASSET_KEYS, backup_set
from twinme_ops.defs.backups.base_backup import postgres_base_backup
from twinme_ops.defs.backups.checks import DRILL_CHECK, drill_metadata, drill_set
from twinme_ops.defs.backups.pitr_drill import point_in_time_drill
from twinme_ops.defs.executors import PodResources, max_runtime, step_pod_executor
from twinme_ops.servers.postgres import PostgresResource

# dumps stream through zstd (all cores), then the drill runs scratch PostgreSQL and Redis on disk
BACKUP_POD = PodResources(
    requests={"cpu": "1", "memory": "2Gi", "ephemeral-storage": "20Gi"},
    limits={"cpu": "2", "memory": "4Gi", "ephemeral-storage": "50Gi"},
)
# one scratch PostgreSQL and Redis holding a whole restored set
DRILL_POD = PodResources(
    requests={"cpu": "1", "memory": "2Gi", "ephemeral-storage": "20Gi"},
    limits={"cpu": "2", "memory": "6Gi", "ephemeral-storage": "60Gi"},
)

nightly_backup_job = dg.define_asset_job(
    name="nightly_backup_job",
    selection=dg.AssetSelection.assets(*BACKUP_ASSET_KEYS),
    description=(
        "Nightly backup of PostgreSQL, Redis and file storage into one backup set per day "
        "(Europe/Paris), then the restore drill of that set. The set's manifest.json is written "
        "last: a set without it is not a backup; a set whose drill failed makes the run fail."
    ),
    hooks={slack_on_backup_failure},
    # three dumps then the drill of the set: far beyond this, something hangs (a lock, a mount)
    tags={"twinme/operation": "backup", **BACKUP_POD.tags(), **max_runtime(4)},
    # the steps share only the backup store: each may run in its own pod
    executor_def=step_pod_executor(BACKUP_POD),
)

# pg_basebackup copies the data directory (and pg_verifybackup reads it back) into the archive
# root: little CPU or memory; production's copy runs in the database pods (the plugin)
BASE_BACKUP_POD = PodResources(
    requests={"cpu": "250m", "memory": "512Mi", "ephemeral-storage": "1Gi"},
    limits={"cpu": "1", "memory": "1Gi", "ephemeral-storage": "2Gi"},
)

base_backup_job = dg.define_asset_job(
    name="base_backup_job",
    selection=dg.AssetSelection.assets(postgres_base_backup),
    description=(
        "A base backup of PostgreSQL for point-in-time recovery: locally pg_basebackup into the "
        "archive root (full weekly, incremental in between, verified), in production a "
        "CloudNativePG Backup through the Barman Cloud plugin. A failure leaves the WAL archive "
        "whole: recovery then starts from the previous base backup."
    ),
    hooks={slack_on_backup_failure},
    # a full copy of the database: far beyond this, the server or the operator is stuck
    tags={"twinme/operation": "base-backup", **BASE_BACKUP_POD.tags(), **max_runtime(5)},
)


class RestoreDrillConfig(dg.Config):
    """Which set to drill."""

    set_id: str = Field(
        default="", description="Backup set id (YYYY-MM-DD). Empty: the newest complete set."
    )


@dg.op(
    description="Restore one backup set on scratch servers and verify it against its manifest.",
)
def restore_drill_op(
    context: dg.OpExecutionContext,
    config: RestoreDrillConfig,
    backup_store: BackupStore,
    backup_encryption: BackupEncryption,
    postgres: PostgresResource,
    metrics: MetricsResource,
) -> Iterator[dg.AssetCheckEvaluation | dg.Output[None]]:
    set_id = config.set_id or newest_complete_set(backup_store)
    if not set_id:
        raise dg.Failure(
            description=f"no complete backup set in {backup_store.describe()}. "
            "Fix: run nightly_backup_job first, or check TWINME_BACKUP_URL."
        )
    result = drill_set(context.log, set_id, backup_store, backup_encryption, postgres, metrics)
    # yielded (not logged) so that it is recorded even when the op then fails: the verdict
    # lands on backup_set's restore_drill check for that partition, as in the nightly job
    yield dg.AssetCheckEvaluation(
        asset_key=backup_set.key,
        check_name=DRILL_CHECK,
        passed=result.passed,
        partition=set_id,
        description=result.reason,
        metadata=drill_metadata(result),
    )
    if not result.passed:
        raise dg.Failure(
            description=f"restore drill of set {set_id} FAILED: {result.reason}",
            metadata=drill_metadata(result),
        )
    context.log.info(f"restore drill of set {set_id} passed: {result.reason}")
    yield dg.Output(None)


@dg.job(
    description=(
        "Restore drill on demand: restores the set given in config (or the newest complete set) "
        "on scratch servers, verifies it, and records the result as the set's restore_drill "
        "check. Fails (and alerts) when the set does not restore."
    ),
    hooks={slack_on_backup_failure},
    tags={"twinme/operation": "drill", **DRILL_POD.tags(), **max_runtime(3)},
    executor_def=step_pod_executor(DRILL_POD),
)
def restore_drill_job() -> None:
    restore_drill_op()


@dg.job(
    description=(
        "Point-in-time drill (local WAL archive engine): restores the newest base-backup chain "
        "plus the WAL onto scratch servers, to a random second inside the recovery window and to "
        "the latest point, and checks the heartbeats exactly (RTO, replay speed, achieved RPO). "
        "Fails (and alerts) when the archive does not restore to the point asked."
    ),
    hooks={slack_on_backup_failure},
    tags={"twinme/operation": "drill", **DRILL_POD.tags(), **max_runtime(2)},
    executor_def=step_pod_executor(DRILL_POD),
)
def pitr_drill_job() -> None:
    point_in_time_drill()
