"""Release settings, the rollback that undoes a deploy which did not prove itself, and how a
release attempt ended (:class:`DeployOutcome`, which the Pushgateway metrics report)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dagster as dg
from pydantic import Field

from twinme_ops.common.log import Log
from twinme_ops.common.redact import redact
from twinme_ops.release.load_test import LoadTestSettings
from twinme_ops.release.verification import VerificationResult, verify_deployment
from twinme_ops.servers.kube import KubernetesResource
from twinme_ops.servers.postgres import PostgresResource
from twinme_ops.servers.redis import RedisResource


class ReleaseSettings(dg.ConfigurableResource):
    """How a release is rolled out and verified (spec: 10 users, 30 s, p95 < 200 ms, < 0.1 %)."""

    api_url: str = Field(default="", description="Base URL the verification probes.")
    container: str = Field(default="api", description="Container of the Deployment to update.")
    load_users: int = Field(default=10, description="Locust users.")
    load_spawn_rate: float = Field(default=10, description="Locust users started per second.")
    load_duration_s: int = Field(default=30, description="Load test duration.")
    p95_ms: float = Field(default=200, description="Gate: p95 latency must stay below.")
    max_error_rate: float = Field(default=0.001, description="Gate: error rate must stay below.")

    def load_settings(self) -> LoadTestSettings:
        return LoadTestSettings(
            users=self.load_users,
            spawn_rate=self.load_spawn_rate,
            duration_s=self.load_duration_s,
            p95_ms=self.p95_ms,
            max_error_rate=self.max_error_rate,
        )

    def verifier(
        self,
        postgres: PostgresResource,
        redis: RedisResource,
        log: Log,
    ) -> Callable[[], VerificationResult | None]:
        """The release's verification as one callable: ``api_url``'s probes and load test,
        ``SELECT 1`` on ``postgres`` and ``PING`` on ``redis`` (it returns None without a URL).

        The release asset, its check, ``deployment_tests_job``, the CLI's rollback and the
        benchmark all verify through this.
        """
        check_db, check_redis = service_checks(postgres, redis)
        return verification_for(self, check_db, check_redis, log)


@dataclass
class RollbackOutcome:
    """What the rollback did and whether the previous version is healthy again."""

    rolled_back_to: str
    healthy: bool
    detail: str

    def sentence(self) -> str:
        state = "healthy" if self.healthy else "NOT healthy"
        return f"rolled back to {self.rolled_back_to}: {state} ({self.detail})"


def rollback(
    kube: KubernetesResource,
    container: str,
    previous_image: str,
    reason: str,
    verify: Callable[[], VerificationResult | None],
    log: Log,
) -> RollbackOutcome:
    """Patch the Deployment back to ``previous_image``, wait for it, verify again."""
    log.warning(f"rolling back to {previous_image}: {reason}")
    try:
        kube.set_image(container, previous_image, change_cause=f"rollback: {reason}"[:250])
        kube.wait_for_rollout(log=log)
    except Exception as exc:
        return RollbackOutcome(previous_image, False, f"rollback rollout failed: {redact(exc)}")
    result = verify()
    if result is None:
        return RollbackOutcome(previous_image, True, "rollout complete, no API URL to probe")
    if result.passed:
        return RollbackOutcome(previous_image, True, "rollout complete and verification passed")
    return RollbackOutcome(previous_image, False, "; ".join(result.reasons)[:300])


def verification_for(
    settings: ReleaseSettings,
    check_db: Callable[[], None] | None,
    check_redis: Callable[[], None] | None,
    log: Log,
) -> Callable[[], VerificationResult | None]:
    """A callable running the verification against ``settings.api_url`` (None without one)."""

    def run() -> VerificationResult | None:
        if not settings.api_url:
            return None
        return verify_deployment(
            settings.api_url,
            settings=settings.load_settings(),
            check_db=check_db,
            check_redis=check_redis,
            log=log,
        )

    return run


def latest_metadata(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, Any]:
    """Plain values of an asset's latest materialization metadata (empty when none)."""
    event = instance.get_latest_materialization_event(key)
    materialization = event.asset_materialization if event else None
    if materialization is None:
        return {}
    return {k: v.value for k, v in materialization.metadata.items()}


def service_checks(
    postgres: PostgresResource, redis: RedisResource
) -> tuple[Callable[[], None], Callable[[], None]]:
    """The verification's dependency checks: ``SELECT 1`` on ``postgres``, ``PING`` on ``redis``."""

    def check_db() -> None:
        with postgres.get_connection() as conn:
            conn.execute("SELECT 1")

    def check_redis() -> None:
        client = redis.get_client()
        try:
            client.ping()
        finally:
            client.close()

    return check_db, check_redis
