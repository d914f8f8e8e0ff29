"""Backup schedules."""

from __future__ import annotations

import dagster as dg

from twinme_ops.defs.backups.jobs import nightly_backup_job

nightly_backup_schedule = dg.build_schedule_from_partitioned_job(
    nightly_backup_job,
    name="nightly_backup_schedule",
    description="Every night at 02:00 Europe/Paris: back up today's set.",
    hour_of_day=2,
    minute_of_hour=0,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
