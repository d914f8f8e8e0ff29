"""Database tuning job."""

import dagster as dg

from twinme_ops.defs.alerts.hooks import slack_on_failure
from twinme_ops.defs.executors import PodResources, max_runtime, step_pod_executor

# SQL and Redis commands only: the servers do the work
TUNING_POD = PodResources(
    requests={"cpu": "250m", "memory": "512Mi", "ephemeral-storage": "1Gi"},
    limits={"cpu": "1", "memory": "1Gi", "ephemeral-storage": "2Gi"},
)

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
    # index builds are bounded by their own statement_timeout (30 min each)
    tags={"twinme/operation": "tuning", **TUNING_POD.tags(), **max_runtime(3)},
    # the steps share only the servers they tune: each may run in its own pod
    executor_def=step_pod_executor(TUNING_POD),
)
