"""Backup schedules (Europe/Paris): base backup at 01:00, backup at 02:00, drill of the newest
set at 04:00, the point-in-time drill of the WAL archive at 04:30."""

import dagster as dg

from twinme_ops.defs.backups.jobs import (
    base_backup_job,
    nightly_backup_job,
    pitr_drill_job,
    restore_drill_job,
)

nightly_backup_schedule = dg.build_schedule_from_partitioned_job(
    nightly_backup_job,
    name="nightly_backup_schedule",
    description=(
        "Every night at 02:00 Europe/Paris: runs nightly_backup_job for that day's partition "
        "(PostgreSQL, Redis and files into one backup set), then its restore drill."
    ),
    hour_of_day=2,
    minute_of_hour=0,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

base_backup_schedule = dg.ScheduleDefinition(
    name="base_backup_schedule",
    job=base_backup_job,
    cron_schedule="0 1 * * *",
    execution_timezone="Europe/Paris",
    description=(
        "Every night at 01:00 Europe/Paris, before the nightly logical backup at 02:00: a base "
        "backup of PostgreSQL (full weekly, incremental in between), where point-in-time "
        "recovery starts."
    ),
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

restore_drill_schedule = dg.ScheduleDefinition(
    name="restore_drill_schedule",
    job=restore_drill_job,
    cron_schedule="0 4 * * *",
    execution_timezone="Europe/Paris",
    description="Every night at 04:00 Europe/Paris, after the backup: drill the newest set again.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

# its own job, half an hour after the set's drill: they would compete for the pod's two cores and
# disk, and a broken WAL archive must not hide (or be hidden by) a broken nightly set
pitr_drill_schedule = dg.ScheduleDefinition(
    name="pitr_drill_schedule",
    job=pitr_drill_job,
    cron_schedule="30 4 * * *",
    execution_timezone="Europe/Paris",
    description="Every night at 04:30 Europe/Paris: the point-in-time drill of the WAL archive "
    "(a random second inside the recovery window, then the latest point).",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
