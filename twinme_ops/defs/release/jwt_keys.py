"""JWT signing keys: ``jwt_signing_keys`` (the key set the API verifies with), rotated monthly by
``jwt_key_rotation_job`` and pruned of expired keys by ``jwt_key_expiry_job`` (hourly).

The work is in ``twinme_ops/release/jwt/``; here: the asset, its metadata (each key's ``kid``,
creation and expiry dates, never key material), the Slack alert of a failed rotation, the jobs and
the schedules. Both jobs roll the API Deployment, so they hold the one ``twinme/api-change`` slot
a release or a recovery would take.
"""

from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any

import dagster as dg
from pydantic import Field

from twinme_ops.alerting import messages
from twinme_ops.alerting.alert import Fact
from twinme_ops.alerting.metrics import MetricsResource
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.common.log import Log
from twinme_ops.common.step_advice import StepAdvice
from twinme_ops.defs.alerts.hooks import send_step_alert, slack_on_failure, step_where
from twinme_ops.defs.executors import max_runtime
from twinme_ops.defs.release.jwt_resources import JwtKeysResource
from twinme_ops.release.jwt.keys import KeySet, iso
from twinme_ops.release.jwt.rotation import KeyRotation, RotationFailed, RotationOutcome
from twinme_ops.release.jwt.secret import JwtSecret
from twinme_ops.release.rollback import ReleaseSettings
from twinme_ops.servers.kube import KubernetesResource

JWT_STEP = StepAdvice(
    "JWT signing keys",
    "The previous key set was put back and the API rolled to it: users keep their sessions. "
    "Read the error: a refused token means the API did not load the new key set (check the "
    "Deployment mounts Secret twinme-jwt-keys and sets TWINME_JWT_KEYS_FILE); a rollout "
    "timeout means new pods did not become ready (kubectl -n twinme-prod rollout status "
    "deployment/twinme-api). Fix it, then launch jwt_key_rotation_job again.",
)
NOT_RECOVERED = (
    "The API may NOT be serving the previous key set: check now with kubectl -n twinme-prod "
    "rollout status deployment/twinme-api and the Secret twinme-jwt-keys' annotation "
    "twinme.ai/jwt-current-kid; put the Secret back by hand if needed (docs/jwt-rotation.md, "
    "'When a rotation fails'), then re-run jwt_key_rotation_job."
)


class JwtAction(Enum):
    """What a run does to the key set."""

    rotate = "rotate"
    prune = "prune"


class JwtKeysConfig(dg.Config):
    """What a run does to the key set."""

    action: JwtAction = Field(
        default=JwtAction.rotate,
        description="rotate: a new signing key, the old one accepted for the overlap; prune: "
        "remove the keys whose overlap has passed (nothing when none has).",
    )


def _push(metrics: MetricsResource, passed: bool, keyset: KeySet, log: Log) -> None:
    current = keyset.current
    metrics.push_jwt_keys(
        passed=passed,
        current_created=current.created_at.timestamp() if current else None,
        accepted=len(keyset.keys),
        log=log,
    )


def _metadata(outcome: RotationOutcome, now: datetime) -> dict[str, Any]:
    keyset = outcome.keyset
    meta: dict[str, Any] = {
        "action": outcome.action,
        "current_kid": keyset.current.kid if keyset.current else "",
        "key_count": len(keyset.keys),
        "keys": dg.MetadataValue.json([k.dates() for k in keyset.keys]),
        "removed_kids": ", ".join(outcome.removed) or "none",
        "rollout_s": round(outcome.rollout_s, 2),
        "checks": "\n".join(outcome.checks) or "none (nothing changed)",
    }
    if keyset.current is not None:
        age = (now - keyset.current.created_at).total_seconds() / 86400
        meta["current_key_created"] = iso(keyset.current.created_at)
        meta["current_key_age_days"] = round(age, 2)
    ends = [k.expires_at for k in keyset.retired if k.expires_at is not None]
    if ends:
        meta["next_expiry"] = iso(min(ends))
        meta["next_expiry_in_h"] = round((min(ends) - now).total_seconds() / 3600, 2)
    return meta


@dg.asset(
    group_name="security",
    kinds={"kubernetes"},
    description=(
        "The API's JWT signing keys in Secret twinme-jwt-keys: one current ES256 key the API "
        "signs with, and the keys replaced less than TWINME_JWT_OVERLAP_HOURS (48) ago, still "
        "accepted. A rotation writes a new key, rolls the API and checks that tokens of the new "
        "and the previous key are accepted; a prune removes expired keys the same way. A failure "
        "puts the previous Secret back, rolls again and alerts Slack. Metadata: each key's kid, "
        "creation and expiry (never key material)."
    ),
)
def jwt_signing_keys(
    context: dg.AssetExecutionContext,
    config: JwtKeysConfig,
    jwt_keys: JwtKeysResource,
    kubernetes: KubernetesResource,
    release_settings: ReleaseSettings,
    slack: SlackNotifier,
    metrics: MetricsResource,
) -> dg.MaterializeResult:
    """Rotate or prune the key set, verified against the running API."""
    secret = JwtSecret(kubernetes.namespace, jwt_keys.secret_name, kubernetes.kubeconfig)
    rotation = KeyRotation(
        secret, kubernetes, jwt_keys.token_check(release_settings.api_url), context.log
    )
    try:
        if config.action == JwtAction.rotate:
            outcome = rotation.rotate(timedelta(hours=jwt_keys.overlap_hours))
        else:
            outcome = rotation.prune()
    except RotationFailed as exc:
        _push(metrics, False, exc.keyset, context.log)
        facts = [
            Fact("Secret", secret.target),
            Fact("Key set served now", ", ".join(exc.kids) or "none"),
            Fact("Rollback", exc.rollback_detail),
        ]
        alert = messages.step_failure(
            step_where(context),
            f"JWT key {config.action.value} failed: {exc.reason}",
            facts,
            JWT_STEP,
            advice=None if exc.rolled_back else NOT_RECOVERED,
        )
        send_step_alert(context, slack, alert)
        raise dg.Failure(
            description=f"JWT key {config.action.value} failed and was rolled back "
            f"({'recovered' if exc.rolled_back else 'NOT recovered'}): {exc.reason}",
            metadata={"rolled_back": exc.rolled_back, "rollback": exc.rollback_detail},
        ) from None
    context.log.info(f"JWT keys {outcome.action}: {', '.join(outcome.keyset.kids())}")
    _push(metrics, True, outcome.keyset, context.log)
    return dg.MaterializeResult(metadata=_metadata(outcome, datetime.now(UTC)))


_TAGS = {"twinme/operation": "jwt-keys", "twinme/api-change": "jwt-keys", **max_runtime(0.5)}

jwt_key_rotation_job = dg.define_asset_job(
    "jwt_key_rotation_job",
    selection=[jwt_signing_keys],
    config={"ops": {"jwt_signing_keys": {"config": {"action": "rotate"}}}},
    executor_def=dg.in_process_executor,
    tags=_TAGS,
    hooks={slack_on_failure},
    description=(
        "Rotate the API's JWT signing key: a new ES256 key becomes current in Secret "
        "twinme-jwt-keys, the previous one stays accepted for TWINME_JWT_OVERLAP_HOURS (48), the "
        "API Deployment is rolled and the running API must accept tokens of both. On failure the "
        "previous Secret is put back, the API rolled again, and Slack told what to do."
    ),
)

jwt_key_expiry_job = dg.define_asset_job(
    "jwt_key_expiry_job",
    selection=[jwt_signing_keys],
    config={"ops": {"jwt_signing_keys": {"config": {"action": "prune"}}}},
    executor_def=dg.in_process_executor,
    tags=_TAGS,
    hooks={slack_on_failure},
    description=(
        "Remove from Secret twinme-jwt-keys the JWT keys whose overlap has passed, roll the API "
        "and check it still accepts the current key (a token of a removed key is refused from "
        "then on). Does nothing, and rolls nothing, when no key has expired."
    ),
)

jwt_key_rotation_schedule = dg.ScheduleDefinition(
    name="jwt_key_rotation_schedule",
    job=jwt_key_rotation_job,
    cron_schedule="0 10 1 * *",
    execution_timezone="Europe/Paris",
    description=(
        "On the 1st of each month at 10:00 Europe/Paris (office hours, someone can act on an "
        "alert): runs jwt_key_rotation_job, a new JWT signing key."
    ),
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

jwt_key_expiry_schedule = dg.ScheduleDefinition(
    name="jwt_key_expiry_schedule",
    job=jwt_key_expiry_job,
    cron_schedule="20 * * * *",
    execution_timezone="Europe/Paris",
    description=(
        "Every hour at :20: runs jwt_key_expiry_job, which removes the JWT keys whose overlap "
        "has passed (a key outlives its overlap by at most an hour)."
    ),
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
