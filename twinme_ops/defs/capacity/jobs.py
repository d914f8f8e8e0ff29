"""The capacity job."""

import dagster as dg

from twinme_ops.defs.capacity.assets import capacity_report
from twinme_ops.defs.executors import max_runtime

capacity_report_job = dg.define_asset_job(
    name="capacity_report_job",
    selection=dg.AssetSelection.assets(capacity_report),
    description=(
        "Materializes capacity_report: growth of the database, Redis, file storage and backup "
        "sets from the nightly manifests, projected to the day each limit is reached; Slack when "
        "that is within 30 days."
    ),
    # reads a few dozen manifests: minutes at most, even on S3
    tags={"twinme/operation": "capacity", **max_runtime(0.5)},
)
