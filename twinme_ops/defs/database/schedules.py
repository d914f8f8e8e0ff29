"""Database tuning schedule."""

import dagster as dg

from twinme_ops.defs.database.jobs import database_tuning_job

database_tuning_schedule = dg.ScheduleDefinition(
    name="database_tuning_schedule",
    job=database_tuning_job,
    cron_schedule="0 3 * * *",
    execution_timezone="Europe/Paris",
    description=(
        "Every day at 03:00 Europe/Paris (after the backup): converge the servers and report "
        "drift, e.g. next months' session_events partitions created ahead of time."
    ),
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
