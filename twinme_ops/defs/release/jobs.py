"""The release job: every asset of the release group, from the commit to the deployment."""

import dagster as dg

from twinme_ops.defs.alerts.hooks import slack_on_failure
from twinme_ops.defs.executors import PodResources, max_runtime

# npm ci and the app's tests, a buildah build, then a locust load test
RELEASE_POD = PodResources(
    requests={"cpu": "1", "memory": "2Gi", "ephemeral-storage": "10Gi"},
    limits={"cpu": "4", "memory": "6Gi", "ephemeral-storage": "30Gi"},
)

release_job = dg.define_asset_job(
    "release_job",
    selection=dg.AssetSelection.groups("release"),
    # one pod for the whole run (no step pods), and one process: the steps share the checkout on
    # its disk and follow each other, so a process per step would only add its start-up (the
    # code location's import and resource set-up, seconds each) to every release
    executor_def=dg.in_process_executor,
    tags={
        "twinme/operation": "release",
        "twinme/api-change": "release",
        **RELEASE_POD.tags(),
        # a hung release holds the one api-change slot: no other release or recovery can start
        **max_runtime(1),
    },
    hooks={slack_on_failure},
    description=(
        "Release one commit: check it out, run the application's tests, then (as the release "
        "group grows) build, deploy and verify it. Started by git_push_sensor with the pushed "
        "sha, or from the UI with any sha in source_checkout's config (empty: the branch head). "
        "A failing step stops the release and alerts Slack."
    ),
)
