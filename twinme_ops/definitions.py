"""The one entry point of the code location (``dagster dev``, ``definitions validate``)."""

from __future__ import annotations

import dagster as dg

from twinme_ops.defs.backups.assets import backup_assets
from twinme_ops.defs.backups.jobs import nightly_backup_job
from twinme_ops.defs.backups.schedules import nightly_backup_schedule
from twinme_ops.defs.resources import build_resources


def build_definitions() -> dg.Definitions:
    """Assemble every asset, job, schedule, sensor and resource from ``defs/``."""
    return dg.Definitions(
        assets=backup_assets,
        jobs=[nightly_backup_job],
        schedules=[nightly_backup_schedule],
        resources=build_resources(),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
