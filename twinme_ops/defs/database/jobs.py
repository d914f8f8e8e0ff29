"""Database tuning job."""

import dagster as dg

from twinme_ops.defs.alerts.hooks import slack_on_failure

database_tuning_job = dg.define_asset_job(
    name="database_tuning_job",
    selection=dg.AssetSelection.groups("database"),
    description=(
        "Converge PostgreSQL (extensions, settings, indexes, partitions, publication, row-level "
        "security) and Redis to their declared state, then check each for drift. Idempotent: a "
        "second run changes nothing. A database without the TwinMe tables fails only the "
        "affected assets."
    ),
    hooks={slack_on_failure},
    tags={"twinme/operation": "tuning"},
)
