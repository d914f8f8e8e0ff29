"""The release's proof: the new version meets the spec's targets, or it is rolled back."""

import time
from typing import Any

import dagster as dg

from twinme_ops.alerting.messages import release_success
from twinme_ops.alerting.metric_samples import DeployOutcome
from twinme_ops.alerting.metrics import MetricsResource
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.defs.alerts.hooks import step_where
from twinme_ops.defs.release.assets import API_DEPLOYMENT, CONTAINER_IMAGE, roll_back_and_report
from twinme_ops.release.rollback import ReleaseSettings, latest_metadata
from twinme_ops.servers.kube import KubernetesResource
from twinme_ops.servers.postgres import PostgresResource
from twinme_ops.servers.redis import RedisResource


@dg.asset_check(
    asset=API_DEPLOYMENT,
    name="deployment_verification",
    blocking=True,
    description=(
        "/health and /ready answer 200, SELECT 1, Redis PING, then a locust load test with the "
        "spec's gates (p95 < 200 ms, error rate < 0.1 %). On failure: roll back to the previous "
        "image, verify it, alert Slack, fail the run. On success: Slack gets sha, digest, timings."
    ),
)
def deployment_verification(
    context: dg.AssetCheckExecutionContext,
    kubernetes: KubernetesResource,
    release_settings: ReleaseSettings,
    postgres: PostgresResource,
    redis: RedisResource,
    slack: SlackNotifier,
    metrics: MetricsResource,
) -> dg.AssetCheckResult:
    deployed = latest_metadata(context.instance, API_DEPLOYMENT)
    sha, image_ref = str(deployed.get("sha", "")), str(deployed.get("image", ""))
    verify = release_settings.verifier(postgres, redis, context.log)
    result = verify()
    if result is None:
        metrics.push_deploy(DeployOutcome(sha), log=context.log)
        return dg.AssetCheckResult(
            passed=False,
            description="no API URL to verify (TWINME_API_URL unset): the release is unproven",
        )
    rollout_s = deployed.get("rollout_s")
    attempt = DeployOutcome(
        sha, rollout_s=float(rollout_s) if rollout_s is not None else None, verification=result
    )
    metadata: dict[str, Any] = {**result.to_metadata(), "sha": sha, "image": image_ref}
    if result.passed:
        started = context.instance.get_run_stats(context.run.run_id).start_time
        built = latest_metadata(context.instance, CONTAINER_IMAGE)
        total_s = time.time() - started if started else None
        alert = release_success(
            step_where(context, sha), image_ref, deployed, built, metadata, total_s
        )
        slack.send(alert, log=context.log)
        metrics.push_deploy(attempt.verified(), log=context.log)
        return dg.AssetCheckResult(passed=True, description="verified", metadata=metadata)
    reason = f"verification of {sha[:12]} failed: {'; '.join(result.reasons)}"
    outcome = roll_back_and_report(
        context,
        kubernetes,
        slack,
        metrics,
        attempt=attempt,
        image=image_ref,
        container=release_settings.container,
        previous=str(deployed.get("previous_image", "")),
        reason=reason,
        verify=verify,
    )
    metadata["rolled_back_to"] = outcome.rolled_back_to
    metadata["rollback_healthy"] = outcome.healthy
    return dg.AssetCheckResult(
        passed=False, description=f"{reason}; {outcome.sentence()}", metadata=metadata
    )
