"""The weekly capacity report (Europe/Paris)."""

import dagster as dg

from twinme_ops.defs.capacity.jobs import capacity_report_job

capacity_report_schedule = dg.ScheduleDefinition(
    name="capacity_report_schedule",
    job=capacity_report_job,
    # Monday morning, after the night's backup and drill: read during the working week
    cron_schedule="0 7 * * 1",
    execution_timezone="Europe/Paris",
    description="Every Monday at 07:00 Europe/Paris: the capacity report of the last 8 weeks "
    "of nightly sets, with a Slack alert when a limit is reached within 30 days.",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
