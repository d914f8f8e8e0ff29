"""The release job: every asset of the release group, from the commit to the deployment."""

import dagster as dg

from twinme_ops.defs.alerts.hooks import slack_on_failure

release_job = dg.define_asset_job(
    "release_job",
    selection=dg.AssetSelection.groups("release"),
    tags={"twinme/operation": "release", "twinme/api-change": "release"},
    hooks={slack_on_failure},
    description=(
        "Release one commit: check it out, run the application's tests, then (as the release "
        "group grows) build, deploy and verify it. Started by git_push_sensor with the pushed "
        "sha, or from the UI with any sha in source_checkout's config (empty: the branch head). "
        "A failing step stops the release and alerts Slack."
    ),
)
