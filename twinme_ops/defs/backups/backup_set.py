"""The day's backup set: ``backup_set`` writes the manifest last, once every component's
artifact of this run is in the store (the components: ``assets.py``)."""

import time

import dagster as dg

from twinme_ops.alerting.messages import backup_success
from twinme_ops.alerting.metrics import MetricsResource
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.backups.manifest import COMPONENT_LABELS, GLOBALS, set_id_for_partition
from twinme_ops.backups.sets import sweep_leftovers
from twinme_ops.backups.store.base import BackupStore, StoreError
from twinme_ops.backups.store.immutability import check_after_backup
from twinme_ops.backups.take import SetCompleteError, write_manifest
from twinme_ops.common.redact import redact
from twinme_ops.defs.alerts.hooks import step_where
from twinme_ops.defs.backups.assets import (
    EXPECTED_ERRORS,
    MIB,
    backup_partitions,
    complete_set_failure,
    files_backup,
    postgres_backup,
    redis_backup,
    run_lineage,
    run_status,
)
from twinme_ops.defs.resources import twinme_env


@dg.asset(
    partitions_def=backup_partitions,
    group_name="backups",
    deps=[postgres_backup, redis_backup, files_backup],
    kinds={"s3"},
    description=(
        "The day's backup set: checks that every component's artifact of this run is in the "
        "store with the recorded size, then creates manifest.json last, create-only (sizes, "
        "sha256, compression, encryption, source row/key/file counts, tool versions, durations). "
        "A set without it is not a backup; a run that finds the set completed by another run is "
        "refused and removes its own files. Then removes leftovers of dead or failed runs."
    ),
)
def backup_set(
    context: dg.AssetExecutionContext,
    backup_store: BackupStore,
    slack: SlackNotifier,
    metrics: MetricsResource,
) -> dg.MaterializeResult:
    started = time.monotonic()
    set_id = set_id_for_partition(context.partition_key)
    try:
        manifest = write_manifest(
            backup_store,
            set_id,
            environment=twinme_env(),
            run_id=context.run.run_id,
            runs=run_lineage(context),
            log=context.log,
        )
    except SetCompleteError as exc:
        raise complete_set_failure(exc) from None
    except EXPECTED_ERRORS as exc:
        raise dg.Failure(description=f"backup set {set_id} incomplete: {redact(exc)}") from None
    try:
        sweep_leftovers(
            backup_store,
            set_id,
            manifest,
            log=context.log,
            run_status=run_status(context.instance),
        )
    except StoreError as exc:  # the set is complete; what is left is retention's to remove
        context.log.warning(f"leftovers of set {set_id} not removed: {redact(exc)}")
    immutability = check_after_backup(backup_store, set_id, context.log)
    total = manifest["total_bytes"]
    arts = manifest["artifacts"]
    roles = arts.get(GLOBALS, {}).get("source", {}).get("roles", [])  # none in older sets
    sizes = ", ".join(f"{COMPONENT_LABELS[c]} {arts[c]['bytes_out'] / MIB:,.1f} MB" for c in arts)
    context.log.info(f"backup set {set_id} complete at {manifest['location']}: {sizes}")
    by_label = {COMPONENT_LABELS[c]: arts[c]["bytes_out"] for c in arts}
    alert = backup_success(step_where(context), set_id, total, by_label, manifest["location"])
    slack.send(alert, log=context.log)
    metrics.push_backup(manifest, log=context.log)
    return dg.MaterializeResult(
        metadata={
            "set_id": set_id,
            "location": dg.MetadataValue.text(manifest["location"]),
            "total_bytes": dg.MetadataValue.int(total),
            "total_mb": dg.MetadataValue.float(round(total / MIB, 3)),
            "backup_duration_s": dg.MetadataValue.float(
                round(max(manifest["durations_s"].values()) + time.monotonic() - started, 3)
            ),
            "rows_total": dg.MetadataValue.int(arts["postgres"]["source"]["total_rows"]),
            "keys_total": dg.MetadataValue.int(arts["redis"]["source"]["total_keys"]),
            "files": dg.MetadataValue.int(arts["files"]["source"]["files"]),
            "encrypted": dg.MetadataValue.bool(arts["postgres"]["encryption"] is not None),
            "encryption": (arts["postgres"]["encryption"] or {}).get("algorithm", "none"),
            "roles": dg.MetadataValue.int(len(roles)),
            **immutability,
        }
    )


backup_assets = [postgres_backup, redis_backup, files_backup, backup_set]
BACKUP_ASSET_KEYS = [a.key for a in backup_assets]
