"""Retention of backup sets: the ``backup_retention`` asset, ``retention_job`` and its schedule.

The policy itself is plain Python in :mod:`twinme_ops.backups.retention` (reading and cleaning
the store in :mod:`twinme_ops.backups.retention_apply`); this module wires it to the store
resource, the run config and the UI. It replaces the spec's ``find -mtime +30 -delete``, which
only cleaned local copies (S3 was never cleaned) and trusted file times.
"""

import json
from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from twinme_ops.backups.retention import (
    RetentionPolicy,
    decisions_markdown,
    kept_beyond_window,
    plan_retention,
)
from twinme_ops.backups.retention_apply import apply_retention, extend_kept_locks, inspect_sets
from twinme_ops.backups.sets import LEFTOVER_GRACE_S, read_set, sweep_leftovers
from twinme_ops.backups.store.base import BackupStore, StoreError
from twinme_ops.backups.store.immutability import (
    BucketFacts,
    ImmutabilityReport,
    lock_covers_policy,
)
from twinme_ops.common.log import Log
from twinme_ops.common.redact import redact
from twinme_ops.defs.backups.assets import run_status
from twinme_ops.defs.backups.backup_set import backup_set
from twinme_ops.defs.backups.wal_retention import wal_archive_retention
from twinme_ops.defs.executors import K8S_CONFIG_TAG, PodResources, max_runtime, step_pod_executor

# Production: retention runs in its own step pod as the ServiceAccount twinme-ops-retention, whose
# IAM role alone may delete object versions (deploy/backup-bucket/). These are op tags, read only
# for step pods: they are code, which no one launching a run can change (a run's own tags may not
# pick a ServiceAccount: the run launcher's allowlist, deploy/dagster/values.yaml). The profile
# makes botocore ignore the writer's keys that every pod gets in its environment.
RETENTION_SERVICE_ACCOUNT = "twinme-ops-retention"
RETENTION_AWS_PROFILE = "twinme-retention"
RETENTION_AWS_CONFIG_MAP = "twinme-ops-retention-aws"
_RETENTION_AWS_DIR = "/etc/twinme/retention-aws"
RETENTION_STEP_POD: dict = {
    "container_config": {
        "env": [
            {"name": "TWINME_RETENTION_AWS_PROFILE", "value": RETENTION_AWS_PROFILE},
            {"name": "AWS_CONFIG_FILE", "value": f"{_RETENTION_AWS_DIR}/config"},
        ],
        "volume_mounts": [
            {"name": "retention-aws", "mount_path": _RETENTION_AWS_DIR, "read_only": True}
        ],
    },
    "pod_spec_config": {
        "service_account_name": RETENTION_SERVICE_ACCOUNT,
        "volumes": [{"name": "retention-aws", "config_map": {"name": RETENTION_AWS_CONFIG_MAP}}],
    },
}
# reads manifests and deletes objects: little CPU or memory
RETENTION_POD = PodResources(
    requests={"cpu": "100m", "memory": "256Mi", "ephemeral-storage": "256Mi"},
    limits={"cpu": "500m", "memory": "512Mi", "ephemeral-storage": "1Gi"},
)


class RetentionConfig(dg.Config):
    """Run config of ``backup_retention``.

    The defaults are the production policy: every set of the last 30 days (the spec's
    ``RETENTION_DAYS=30``), then 7 daily, 4 weekly and 6 monthly sets beyond that window. With
    one set a day that is 43 to 45 sets reaching 5 to 6 months back (the rules overlap): ~15 sets
    more than the spec's plain 30 days, which setting the three ``keep_*ly`` fields to 0 gives.
    """

    dry_run: bool = Field(
        default=False,
        description="List what would be deleted, and why, without deleting anything.",
    )
    keep_days: int = Field(
        default=30,
        ge=0,
        description="Keep every complete set younger than this many days (Europe/Paris dates).",
    )
    keep_daily: int = Field(
        default=7,
        ge=0,
        description="Beyond keep_days, also keep the newest set of each of the N most recent days.",
    )
    keep_weekly: int = Field(
        default=4,
        ge=0,
        description="Beyond keep_days, also keep the newest set of each of the N most recent "
        "ISO weeks.",
    )
    keep_monthly: int = Field(
        default=6,
        ge=0,
        description="Beyond keep_days, also keep the newest set of each of the N most recent "
        "months.",
    )
    incomplete_grace_hours: int = Field(
        default=24,
        ge=0,
        description="A set without manifest.json is deleted once this many hours have passed "
        "since the end of its day (before that, it may still be being written).",
    )

    leftover_grace_hours: float = Field(
        default=LEFTOVER_GRACE_S / 3600,
        ge=0,
        description="In a complete set, an object its manifest does not name (a losing or "
        "killed run's artifact, an old record) is removed once this old; a failed or canceled "
        "run's objects and a dead writer's partial file go at once.",
    )

    lock_extension_days: int = Field(
        default=7,
        ge=0,
        description="On an S3 bucket with Object Lock, the sets kept beyond keep_days (whose "
        "default lock has run out) are locked again until this many days ahead, so that not "
        "even the retention role can destroy a set the policy keeps; a set dropped later waits "
        "up to this long before it is deleted. 0 disables the extension.",
    )

    def policy(self) -> RetentionPolicy:
        """The policy these settings describe."""
        return RetentionPolicy(
            keep_days=self.keep_days,
            keep_daily=self.keep_daily,
            keep_weekly=self.keep_weekly,
            keep_monthly=self.keep_monthly,
            incomplete_grace_hours=self.incomplete_grace_hours,
        )


@dg.asset(
    group_name="backups",
    deps=[backup_set],
    kinds={"s3"},
    op_tags={K8S_CONFIG_TAG: json.dumps(RETENTION_STEP_POD, sort_keys=True)},
    description=(
        "Deletes old backup sets from the backup store (local folder or S3, same rules) and says "
        "why for each set. By default it keeps every set of the last 30 days, then 7 daily, "
        "4 weekly and 6 monthly sets. It never deletes the newest set, the newest complete set "
        "or the newest set that passed its restore drill. Sets without manifest are deleted 24 h "
        "after their day; sets whose manifest cannot be read are reported, never deleted. Ages "
        "come from the set ids (dates), never from file times. In the sets it keeps, it removes "
        "what their manifest does not name (a losing or killed run's files). Run with dry_run: "
        "true to preview."
    ),
)
def backup_retention(
    context: dg.AssetExecutionContext, config: RetentionConfig, backup_store: BackupStore
) -> dg.MaterializeResult:
    """Inspect every set, plan with the configured policy, apply (or preview), report."""
    policy = config.policy()
    mode = "dry run" if config.dry_run else "applying"
    # the retention role (TWINME_RETENTION_AWS_PROFILE): the only one that may delete versions
    store = backup_store.for_retention()
    context.log.info(f"retention of {store.describe()} ({mode}): keep {policy.describe()}")
    lock = _lock_check(store, policy, context.log)
    try:
        states = inspect_sets(store)
    except StoreError as exc:
        raise dg.Failure(description=f"retention could not read the store: {redact(exc)}") from None
    now = datetime.now(UTC)
    decisions = plan_retention(states, policy, now)

    report = apply_retention(store, decisions, dry_run=config.dry_run, log=context.log)
    extended, extension_failures = 0, []
    if not config.dry_run and lock.lock_enabled and config.lock_extension_days:
        extended, extension_failures = extend_kept_locks(
            store,
            kept_beyond_window(report.kept, policy, now),
            now=now,
            days=config.lock_extension_days,
            log=context.log,
        )
    leftovers = 0
    for decision in report.kept:
        if config.dry_run or decision.status != "complete":
            continue
        try:
            view = read_set(store, decision.set_id)
            if view.manifest is not None:
                leftovers += len(
                    sweep_leftovers(
                        store,
                        decision.set_id,
                        view.manifest,
                        log=context.log,
                        run_status=run_status(context.instance),
                        grace_s=config.leftover_grace_hours * 3600,
                    )
                )
        except StoreError as exc:
            context.log.warning(f"leftovers of set {decision.set_id} not removed: {redact(exc)}")
    kept = [d.set_id for d in report.kept]
    metadata: dict[str, dg.RawMetadataValue] = {
        "dry_run": dg.MetadataValue.bool(config.dry_run),
        "sets": dg.MetadataValue.int(len(states)),
        "kept": dg.MetadataValue.int(len(report.kept)),
        # a dry run deletes nothing: the plot of deletions stays true, to_delete shows the plan
        "deleted": dg.MetadataValue.int(0 if config.dry_run else len(report.deleted)),
        "to_delete": dg.MetadataValue.int(len(report.deleted)),
        "reported": dg.MetadataValue.int(len(report.reported)),
        "failed_deletions": dg.MetadataValue.int(len(report.failed)),
        # Object Lock: sets due for deletion still locked (deleted by a later run), extensions
        "locked": dg.MetadataValue.int(len(report.locked)),
        "locks_extended": dg.MetadataValue.int(extended),
        "lock_extension_failures": dg.MetadataValue.int(len(extension_failures)),
        "object_lock": dg.MetadataValue.text(lock.describe_lock()),
        "lock_covers_policy": dg.MetadataValue.bool(lock_covers_policy(lock, policy.keep_days)[0]),
        "leftovers_removed": dg.MetadataValue.int(leftovers),
        "oldest_kept": dg.MetadataValue.text(min(kept) if kept else "none"),
        "newest_kept": dg.MetadataValue.text(max(kept) if kept else "none"),
        "policy": dg.MetadataValue.text(policy.describe()),
        "decisions": dg.MetadataValue.md(decisions_markdown(report.decisions, states)),
    }
    if report.failed:
        first_id, first_error = report.failed[0][0].set_id, report.failed[0][1]
        raise dg.Failure(
            description=(
                f"retention could not delete {len(report.failed)} set(s), e.g. {first_id}: "
                f"{redact(first_error)}; the other sets were handled"
            ),
            metadata=metadata,
        )
    verb = "would delete" if config.dry_run else "deleted"
    context.log.info(
        f"retention done: kept {len(report.kept)}, {verb} {len(report.deleted)}, "
        f"reported {len(report.reported)}, still locked {len(report.locked)}"
    )
    return dg.MaterializeResult(metadata=metadata)


def _lock_check(store: BackupStore, policy: RetentionPolicy, log: Log) -> ImmutabilityReport:
    """The bucket's Object Lock as retention sees it, with a warning (and the fix) when the lock
    does not cover the policy; a store that cannot say counts as no lock (nothing extended)."""
    try:
        # no probe: the retention role may delete versions, by design
        lock = store.check_immutability(probe=False)
    except (StoreError, ValueError) as exc:
        problem = f"could not read the store's Object Lock configuration: {redact(exc)}"
        log.warning(problem)
        unknown = BucketFacts(unread=(problem,))
        return ImmutabilityReport(store.describe(), True, "unknown", policy.keep_days, unknown)
    if not lock.applicable:
        return lock
    covers, why = lock_covers_policy(lock, policy.keep_days)
    (log.info if covers else log.warning)(f"Object Lock {lock.describe_lock()}: {why}")
    return lock


retention_job = dg.define_asset_job(
    "retention_job",
    selection=[backup_retention, wal_archive_retention],
    description=(
        "Applies the retention policy to the backup store (local or S3): deletes old and "
        "abandoned backup sets, keeps the recent, daily/weekly/monthly and verified ones, "
        "reports unreadable ones. Keeps the WAL archive's recovery window "
        "(wal_archive_retention). Set dry_run: true in the run config of both to preview."
    ),
    tags={"twinme/operation": "retention", **max_runtime(1)},
    # in production (TWINME_K8S_EXECUTOR=1) each step runs in a pod of its own; backup_retention's
    # with the retention role (RETENTION_STEP_POD)
    executor_def=step_pod_executor(RETENTION_POD),
)

retention_schedule = dg.ScheduleDefinition(
    name="retention_schedule",
    job=retention_job,
    cron_schedule="0 5 * * *",
    execution_timezone="Europe/Paris",
    description=(
        "Every day at 05:00 Europe/Paris, after the 02:00 backup and the 04:30 point-in-time "
        "drill: runs retention_job, which deletes the backup sets the retention policy no "
        "longer keeps (never the newest verified one) and the base backups and WAL outside the "
        "recovery window (never what the newest passing drill restored from)."
    ),
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
