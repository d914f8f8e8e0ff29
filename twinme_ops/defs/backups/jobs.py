"""Backup jobs."""

from __future__ import annotations

import dagster as dg

from twinme_ops.defs.alerts.hooks import slack_on_backup_failure
from twinme_ops.defs.backups.assets import BACKUP_ASSET_KEYS

nightly_backup_job = dg.define_asset_job(
    name="nightly_backup_job",
    selection=dg.AssetSelection.assets(*BACKUP_ASSET_KEYS),
    description=(
        "Nightly backup of PostgreSQL, Redis and file storage into one backup set per day "
        "(Europe/Paris). The set's manifest.json is written last: a set without it is not a backup."
    ),
    hooks={slack_on_backup_failure},
    tags={"twinme/operation": "backup"},
)
