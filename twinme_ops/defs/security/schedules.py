"""Weekly dependency audit schedule."""

import dagster as dg

from twinme_ops.defs.security.jobs import dependency_audit_job

dependency_audit_schedule = dg.ScheduleDefinition(
    name="dependency_audit_schedule",
    job=dependency_audit_job,
    cron_schedule="0 6 * * 1",
    execution_timezone="Europe/Paris",
    description=(
        "Every Monday at 06:00 Europe/Paris: audit the locked dependencies against OSV and "
        "npm's advisories, so the week starts with the list of what to upgrade."
    ),
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
