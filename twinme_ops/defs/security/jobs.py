"""Dependency audit and SBOM jobs."""

import dagster as dg

from twinme_ops.defs.alerts.hooks import slack_on_failure
from twinme_ops.defs.executors import PodResources, max_runtime

# pip-audit and npm audit read lock files and ask HTTP APIs: little CPU, no disk
AUDIT_POD = PodResources(
    requests={"cpu": "250m", "memory": "512Mi", "ephemeral-storage": "1Gi"},
    limits={"cpu": "1", "memory": "1Gi", "ephemeral-storage": "2Gi"},
)

dependency_audit_job = dg.define_asset_job(
    name="dependency_audit_job",
    selection=dg.AssetSelection.assets("dependency_audit"),
    description=(
        "Audit the locked Python (pip-audit, OSV) and Node (npm audit) dependencies; Slack for "
        "findings at or above TWINME_AUDIT_FAIL_SEVERITY or unfixed past the deadline. An "
        "unreachable advisory database fails the run (and Slack hears of it)."
    ),
    hooks={slack_on_failure},
    tags={"twinme/operation": "security", **AUDIT_POD.tags(), **max_runtime(1)},
)

image_sboms_job = dg.define_asset_job(
    name="image_sboms_job",
    selection=dg.AssetSelection.assets("image_sboms"),
    description=(
        "Generate and validate the CycloneDX SBOMs of the code location's Python environment "
        "and of the API, and push each to the registry next to its image digest."
    ),
    hooks={slack_on_failure},
    tags={"twinme/operation": "security", **AUDIT_POD.tags(), **max_runtime(1)},
)
