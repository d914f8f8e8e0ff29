"""The release's proof: the new version meets the spec's targets, or it is rolled back."""

from typing import Any

import dagster as dg

from twinme_ops.defs.release.assets import API_DEPLOYMENT
from twinme_ops.lib.kube import KubernetesResource
from twinme_ops.lib.postgres import PostgresResource
from twinme_ops.lib.redis_snapshot import RedisResource
from twinme_ops.lib.release import (
    ReleaseSettings,
    latest_metadata,
    rollback,
    service_checks,
    verification_for,
)
from twinme_ops.lib.slack import SlackNotifier


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
) -> dg.AssetCheckResult:
    deployed = latest_metadata(context.instance, API_DEPLOYMENT)
    sha, image_ref = str(deployed.get("sha", "")), str(deployed.get("image", ""))
    check_db, check_redis = service_checks(postgres, redis)
    verify = verification_for(release_settings, check_db, check_redis, context.log)
    result = verify()
    if result is None:
        return dg.AssetCheckResult(
            passed=False,
            description="no API URL to verify (TWINME_API_URL unset): the release is unproven",
        )
    metadata: dict[str, Any] = {**result.to_metadata(), "sha": sha, "image": image_ref}
    if result.passed:
        slack.send(
            f":rocket: TwinMe release {sha[:12]} deployed and verified — image {image_ref}, "
            f"rollout {deployed.get('rollout_s', '?')} s, p95 "
            f"{metadata.get('load_p95_ms', '?')} ms, error rate "
            f"{metadata.get('load_error_rate_pct', '?')} %.",
            log=context.log,
        )
        return dg.AssetCheckResult(passed=True, description="verified", metadata=metadata)
    reason = f"verification of {sha[:12]} failed: {'; '.join(result.reasons)}"
    outcome = rollback(
        kubernetes,
        release_settings.container,
        str(deployed.get("previous_image", "")),
        reason,
        verify,
        context.log,
    )
    slack.send(
        f":rotating_light: TwinMe release {sha[:12]} FAILED — {reason}. {outcome.sentence()}.",
        log=context.log,
    )
    metadata["rolled_back_to"] = outcome.rolled_back_to
    metadata["rollback_healthy"] = outcome.healthy
    return dg.AssetCheckResult(
        passed=False, description=f"{reason}; {outcome.sentence()}", metadata=metadata
    )
