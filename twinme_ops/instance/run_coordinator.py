"""The instance's run coordinator: Dagster's queue, plus a gate on backups of past days.

Configured in ``dagster.yaml`` (and ``deploy/dagster/values.yaml`` in production) in place of
``QueuedRunCoordinator``, which it extends: every run Dagster creates goes through
``submit_run`` before it is queued, whoever created it: the UI's launch and "Materialize"
buttons, the GraphQL API, the backfill daemon (asset and job backfills submit each run they
create through ``instance.submit_run``), schedules, sensors and run retries.

A run that would take a backup (a ``postgres_backup``, ``redis_backup`` or ``files_backup``
step) of a partition that is not the present day (:func:`check_backup_partition`) is failed
right there, with the reason as an engine event and as the failure message the UI shows; it is
never queued, so no worker starts, no dump is taken and nothing is written to the store. A
backfill's refused runs fail one by one the same way (the UI lists them under the backfill).
Such a refusal is the launcher's mistake, not an incident: the run carries :data:`REFUSED_TAG`,
and ``slack_on_run_failure_sensor`` does not page anyone for it.

This module is imported by the webserver and the daemon: it needs ``dagster`` and
:mod:`twinme_ops.backups.window` only, not the code location.
"""

from __future__ import annotations

from collections.abc import Iterable

from dagster._core.events import EngineEventData
from dagster._core.run_coordinator import QueuedRunCoordinator, SubmitRunContext
from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
from dagster._core.storage.tags import (
    ASSET_PARTITION_RANGE_END_TAG,
    ASSET_PARTITION_RANGE_START_TAG,
    PARTITION_NAME_TAG,
)

from twinme_ops.backups.window import (
    BACKUP_JOB,
    TAKING_STEPS,
    BackupPartitionRefused,
    backup_now,
    check_backup_partition,
)

# set on a run the coordinator refused; its value says which rule
REFUSED_TAG = "twinme/refused"
REFUSED_BACKUP_PARTITION = "backup-partition"


def takes_backup(run: DagsterRun) -> bool:
    """Would the run execute a step that copies the live systems into a set?"""
    if run.step_keys_to_execute is not None:
        return bool(TAKING_STEPS & set(run.step_keys_to_execute))
    if run.asset_selection is not None:
        return any(key.to_user_string() in TAKING_STEPS for key in run.asset_selection)
    return run.job_name == BACKUP_JOB


def run_partitions(run: DagsterRun) -> list[str]:
    """The partition keys a run targets: its partition tag, or both ends of a range."""
    tags = run.tags
    keys: Iterable[str | None] = (
        tags.get(PARTITION_NAME_TAG),
        tags.get(ASSET_PARTITION_RANGE_START_TAG),
        tags.get(ASSET_PARTITION_RANGE_END_TAG),
    )
    found = [k for k in keys if k]
    if not found and run.partitions_subset is not None:
        found = list(run.partitions_subset.get_partition_keys())
    return sorted(set(found))


def backup_refusal(run: DagsterRun) -> str | None:
    """Why the run must not start (the backup partition check), or None to let it queue."""
    if not takes_backup(run):
        return None
    now = backup_now()
    for key in run_partitions(run):
        try:
            check_backup_partition(key, now)
        except BackupPartitionRefused as exc:
            return str(exc)
    return None


class TwinmeRunCoordinator(QueuedRunCoordinator):
    """``QueuedRunCoordinator`` (same config, same concurrency limits) that fails, before they
    are queued, the runs :func:`backup_refusal` refuses."""

    def submit_run(self, context: SubmitRunContext) -> DagsterRun:
        run = context.dagster_run
        reason = backup_refusal(run) if run.status == DagsterRunStatus.NOT_STARTED else None
        if reason is None:
            return super().submit_run(context)
        instance = self._instance
        instance.add_run_tags(run.run_id, {REFUSED_TAG: REFUSED_BACKUP_PARTITION})
        instance.report_engine_event(
            reason,
            run,
            EngineEventData(metadata={"refused_by": "TwinmeRunCoordinator"}),
        )
        instance.report_run_failed(run, message=f"run refused before it started: {reason}")
        refused = instance.get_run_by_id(run.run_id)
        assert refused is not None
        return refused
