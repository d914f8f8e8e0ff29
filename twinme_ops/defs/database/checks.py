"""Drift checks: the declared state against what the servers report, changing nothing."""

import dagster as dg

from twinme_ops.common.redact import redact
from twinme_ops.database.declared_state import DatabaseTuning
from twinme_ops.database.redis.declared import desired_settings
from twinme_ops.database.redis.drift import redis_config_drift
from twinme_ops.database.redis.template import load_template, render
from twinme_ops.defs.database.assets import (
    EXPECTED_ERRORS,
    PG_STEPS,
    PgStep,
    pg_tuning_assets,
    redis_configuration,
    redis_password,
)
from twinme_ops.servers.postgres import PostgresResource
from twinme_ops.servers.redis import RedisResource

PENDING = "restart"


def drift_result(drift: list[str], **metadata: dg.MetadataValue) -> dg.AssetCheckResult:
    """Pass when nothing drifted; WARN when the only drift is settings waiting for a restart."""
    only_pending = bool(drift) and all(PENDING in d for d in drift)
    return dg.AssetCheckResult(
        passed=not drift,
        severity=dg.AssetCheckSeverity.WARN if only_pending else dg.AssetCheckSeverity.ERROR,
        description="no drift" if not drift else "; ".join(drift)[:1000],
        metadata={
            "drift_count": dg.MetadataValue.int(len(drift)),
            "drift": dg.MetadataValue.json(drift),
            **metadata,
        },
    )


def _pg_check(step: PgStep, asset: dg.AssetsDefinition) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset,
        name="drift",
        description=(
            f"Compares the declared state of {step.name} with what PostgreSQL reports now, "
            "changing nothing. Fails listing each difference (e.g. a change made by hand); "
            "only warns when all that differs is a setting waiting for a server restart. "
            "database_tuning_job converges it again."
        ),
    )
    def _drift(postgres: PostgresResource, database_tuning: DatabaseTuning) -> dg.AssetCheckResult:
        try:
            with postgres.get_connection(autocommit=True) as conn:
                drift = step.drift(conn, database_tuning)
        except EXPECTED_ERRORS as exc:
            return drift_result([f"cannot check: {redact(exc)}"])
        return drift_result(drift)

    return _drift


pg_drift_checks = [
    _pg_check(step, asset) for step, asset in zip(PG_STEPS, pg_tuning_assets, strict=True)
]


@dg.asset_check(
    asset=redis_configuration,
    name="drift",
    description=(
        "Compares the rendered production.conf with the live Redis, changing nothing: reads "
        "CONFIG GET where available and INFO where CONFIG is renamed away, and says which it "
        "used. Fails listing each difference."
    ),
)
def redis_configuration_drift(
    redis: RedisResource, database_tuning: DatabaseTuning
) -> dg.AssetCheckResult:
    desired = desired_settings(render(load_template(), redis_password(redis)))
    client = redis.get_client()
    try:
        drift = redis_config_drift(client, desired)
    finally:
        client.close()
    return drift_result(
        drift.differences,
        method=dg.MetadataValue.text(drift.method),
        checked=dg.MetadataValue.json(drift.checked),
        unverifiable=dg.MetadataValue.json(drift.unverifiable),
    )


database_checks = [*pg_drift_checks, redis_configuration_drift]
