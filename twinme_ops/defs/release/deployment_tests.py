"""deployment_tests_job: the spec's deployment-tests.sh as an on-demand job (changes nothing)."""

from typing import Any

import dagster as dg
from pydantic import Field

from twinme_ops.defs.alerts.hooks import slack_on_failure
from twinme_ops.defs.executors import max_runtime
from twinme_ops.release.rollback import ReleaseSettings
from twinme_ops.servers.postgres import PostgresResource
from twinme_ops.servers.redis import RedisResource


class DeploymentTestsConfig(dg.Config):
    """Overrides of the release settings for an on-demand run (empty/0: keep the settings)."""

    api_url: str = Field(default="", description="API base URL. Empty: TWINME_API_URL.")
    load_users: int = Field(default=0, description="Locust users. 0: the settings' (spec: 10).")
    load_duration_s: int = Field(
        default=0, description="Load test duration. 0: the settings' (spec: 30 s)."
    )


@dg.op(
    description=(
        "The spec's scripts/deployment-tests.sh: /health and /ready answer 200, SELECT 1 on "
        "DATABASE_URL, Redis PING, then a locust load test (10 users, 30 s) gated on p95 < 200 ms "
        "and error rate < 0.1 %. Read-only: nothing is changed or rolled back."
    ),
)
def deployment_tests(
    context: dg.OpExecutionContext,
    config: DeploymentTestsConfig,
    release_settings: ReleaseSettings,
    postgres: PostgresResource,
    redis: RedisResource,
) -> dg.Output[dict]:
    overrides = {
        k: v
        for k, v in {
            "api_url": config.api_url,
            "load_users": config.load_users,
            "load_spawn_rate": config.load_users,
            "load_duration_s": config.load_duration_s,
        }.items()
        if v
    }
    settings = ReleaseSettings(**{**release_settings.model_dump(), **overrides})
    if not settings.api_url:
        raise dg.Failure(
            description="no API URL to test. Fix: set TWINME_API_URL or config.api_url."
        )
    result = settings.verifier(postgres, redis, context.log)()
    assert result is not None  # api_url is set
    metadata: dict[str, Any] = {**result.to_metadata(), "api_url": result.base_url}
    if not result.passed:
        raise dg.Failure(
            description="deployment tests failed: " + "; ".join(result.reasons),
            metadata=metadata,
        )
    context.log.info(f"all deployment tests passed against {result.base_url}")
    return dg.Output(result.to_metadata(), metadata=metadata)


@dg.job(
    description=(
        "On-demand deployment tests of the running API (the spec's deployment-tests.sh as a job): "
        "probes, SELECT 1, PING and the load test with the spec's gates. Changes nothing; use it "
        "after a manual change, a recovery, or an incident to prove production is healthy."
    ),
    tags={"twinme/operation": "deployment-tests", **max_runtime(0.5)},
    hooks={slack_on_failure},
)
def deployment_tests_job() -> None:
    deployment_tests()
