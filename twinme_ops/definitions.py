"""The one entry point of the code location (``dagster dev``, ``definitions validate``)."""

from __future__ import annotations

import dagster as dg

from twinme_ops.defs.alerts.sensors import (
    backup_freshness_sensor,
    slack_on_run_canceled_sensor,
    slack_on_run_failure_sensor,
)
from twinme_ops.defs.backups.assets import backup_assets
from twinme_ops.defs.backups.checks import restore_drill
from twinme_ops.defs.backups.jobs import nightly_backup_job, restore_drill_job
from twinme_ops.defs.backups.retention import backup_retention, retention_job, retention_schedule
from twinme_ops.defs.backups.schedules import nightly_backup_schedule, restore_drill_schedule
from twinme_ops.defs.database.assets import database_assets
from twinme_ops.defs.database.checks import database_checks
from twinme_ops.defs.database.jobs import database_tuning_job
from twinme_ops.defs.database.schedules import database_tuning_schedule
from twinme_ops.defs.recovery.jobs import deployment_tests_job, recover_job
from twinme_ops.defs.release.assets import release_assets
from twinme_ops.defs.release.checks import deployment_verification
from twinme_ops.defs.release.jobs import release_job
from twinme_ops.defs.release.sensors import git_push_sensor
from twinme_ops.defs.resources import build_resources


def build_definitions() -> dg.Definitions:
    """Assemble every asset, job, schedule, sensor and resource from ``defs/``."""
    return dg.Definitions(
        assets=[*backup_assets, backup_retention, *database_assets, *release_assets],
        asset_checks=[restore_drill, *database_checks, deployment_verification],
        jobs=[
            nightly_backup_job,
            restore_drill_job,
            retention_job,
            recover_job,
            database_tuning_job,
            release_job,
            deployment_tests_job,
        ],
        schedules=[
            nightly_backup_schedule,
            restore_drill_schedule,
            retention_schedule,
            database_tuning_schedule,
        ],
        sensors=[
            backup_freshness_sensor,
            slack_on_run_failure_sensor,
            slack_on_run_canceled_sensor,
            git_push_sensor,
        ],
        resources=build_resources(),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
