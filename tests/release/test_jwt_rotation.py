"""JWT key rotation end to end: a real rotation run through Dagster, the Secret and the API
Deployment on the Kubernetes emulator, and the sample API (a node process) loading the Secret's
key set on each rollout and verifying tokens at /auth/check."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import jwt

from tests.support.jwt_api import JwtCluster
from tests.support.k8s_emulator import apps_api, stuck_once
from tests.support.pushgateway import Gateway, value
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.alerting.metrics import MetricsResource
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.defs.release.jwt_keys import (
    jwt_key_expiry_job,
    jwt_key_rotation_job,
    jwt_signing_keys,
)
from twinme_ops.defs.release.jwt_resources import JwtKeysResource
from twinme_ops.release.jwt.keys import KEYS_ANNOTATION, iso
from twinme_ops.release.jwt.rotation import KIDS_TEMPLATE_ANNOTATION
from twinme_ops.release.rollback import ReleaseSettings
from twinme_ops.servers.kube import KubernetesResource


def _run(
    cluster: JwtCluster, slack: SlackReceiver, job: str, gateway: Gateway | None = None
) -> dg.ExecuteInProcessResult:
    defs = dg.Definitions(
        assets=[jwt_signing_keys],
        jobs=[jwt_key_rotation_job, jwt_key_expiry_job],
        resources={
            "jwt_keys": JwtKeysResource(check_attempts=5, check_delay_s=0.2),
            "kubernetes": KubernetesResource(
                kubeconfig=str(cluster.kubeconfig), rollout_timeout_s=15, poll_interval_s=0.1
            ),
            "release_settings": ReleaseSettings(api_url=cluster.pods.url),
            "slack": SlackNotifier(webhook_url=slack.url, max_retries=0),
            "metrics": MetricsResource(
                pushgateway_url=gateway.url if gateway else "", environment="production"
            ),
        },
    )
    return defs.resolve_job_def(job).execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )


def _metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    (event,) = result.asset_materializations_for_node("jwt_signing_keys")
    return {k: v.value for k, v in event.metadata.items()}


def _signing_key(cluster: JwtCluster) -> tuple[str, bytes]:
    data = cluster.secret().data
    return base64.b64decode(data["signing-kid"]).decode(), base64.b64decode(data["signing-key.pem"])


def _status(cluster: JwtCluster, kid: str, pem: bytes) -> int:
    now = datetime.now(UTC)
    token = jwt.encode(
        {"sub": "user-42", "exp": now + timedelta(minutes=5)},
        pem,
        algorithm="ES256",
        headers={"kid": kid},
    )
    request = urllib.request.Request(
        f"{cluster.pods.url}/auth/check", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _template_kids(cluster: JwtCluster) -> str:
    dep: Any = apps_api(cluster.kubeconfig).read_namespaced_deployment("twinme-api", "twinme-prod")
    return dep.spec.template.metadata.annotations[KIDS_TEMPLATE_ANNOTATION]


def _all_text(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(str(e) for e in result.all_events)


def test_rotation_keeps_the_old_key_for_the_overlap_then_prunes_it(
    jwt_cluster: JwtCluster, slack_receiver: SlackReceiver, gateway: Gateway
) -> None:
    first = _run(jwt_cluster, slack_receiver, "jwt_key_rotation_job")
    assert first.success
    old_kid, old_pem = _signing_key(jwt_cluster)
    assert _metadata(first)["current_kid"] == old_kid and _metadata(first)["key_count"] == 1
    assert _status(jwt_cluster, old_kid, old_pem) == 200

    second = _run(jwt_cluster, slack_receiver, "jwt_key_rotation_job", gateway)
    assert second.success
    pushed = gateway.samples()
    assert value(pushed, "twinme_jwt_keys_success", operation="jwt_keys") == 1
    assert value(pushed, "twinme_jwt_keys_accepted") == 2
    new_kid, new_pem = _signing_key(jwt_cluster)
    assert new_kid != old_kid
    meta = _metadata(second)
    assert meta["current_kid"] == new_kid and meta["key_count"] == 2
    assert 47.9 < meta["next_expiry_in_h"] <= 48
    # the running API accepts tokens of both keys during the overlap
    assert _status(jwt_cluster, new_kid, new_pem) == 200
    assert _status(jwt_cluster, old_kid, old_pem) == 200
    assert _template_kids(jwt_cluster) == f"{new_kid},{old_kid}"
    annotations = jwt_cluster.secret().metadata.annotations
    dates = {d["kid"]: d for d in json.loads(annotations[KEYS_ANNOTATION])}
    assert "expires" not in dates[new_kid] and "expires" in dates[old_kid]
    # no key material in the run's events or metadata
    for result in (first, second):
        text = _all_text(result)
        assert "PRIVATE KEY" not in text and old_pem.decode().splitlines()[1] not in text

    # within the overlap the expiry job changes nothing and rolls nothing
    restarts = jwt_cluster.pods.restarts
    idle = _run(jwt_cluster, slack_receiver, "jwt_key_expiry_job")
    assert idle.success and _metadata(idle)["action"] == "nothing to prune"
    assert jwt_cluster.pods.restarts == restarts
    assert _status(jwt_cluster, old_kid, old_pem) == 200

    # 48 hours later (the recorded expiry moved into the past): the old key is removed
    dates[old_kid]["expires"] = iso(datetime.now(UTC) - timedelta(minutes=1))
    jwt_cluster.core.patch_namespaced_secret(
        "twinme-jwt-keys",
        "twinme-prod",
        {"metadata": {"annotations": {KEYS_ANNOTATION: json.dumps(list(dates.values()))}}},
    )
    pruned = _run(jwt_cluster, slack_receiver, "jwt_key_expiry_job", gateway)
    assert pruned.success
    assert value(gateway.samples(), "twinme_jwt_keys_accepted") == 1
    meta = _metadata(pruned)
    assert meta["action"] == "pruned" and meta["removed_kids"] == old_kid
    assert meta["key_count"] == 1
    assert _status(jwt_cluster, old_kid, old_pem) == 401
    assert _status(jwt_cluster, new_kid, new_pem) == 200
    assert _template_kids(jwt_cluster) == new_kid
    assert slack_receiver.messages == []


def test_a_refused_new_key_puts_the_previous_secret_back_and_alerts(
    jwt_cluster: JwtCluster, slack_receiver: SlackReceiver, gateway: Gateway
) -> None:
    assert _run(jwt_cluster, slack_receiver, "jwt_key_rotation_job").success
    old_kid, old_pem = _signing_key(jwt_cluster)
    before = jwt_cluster.secret()
    # the new pods do not load the Secret (a Deployment that does not mount it)
    jwt_cluster.pods.frozen = True
    failed = _run(jwt_cluster, slack_receiver, "jwt_key_rotation_job", gateway)
    assert not failed.success
    pushed = gateway.samples()
    assert value(pushed, "twinme_jwt_keys_success") == 0
    assert value(pushed, "twinme_jwt_keys_accepted") == 1
    after = jwt_cluster.secret()
    assert after.data == before.data
    assert after.metadata.annotations == before.metadata.annotations
    assert _template_kids(jwt_cluster) == old_kid
    assert _status(jwt_cluster, old_kid, old_pem) == 200
    (alert,) = slack_receiver.messages
    assert "jwt_key_rotation_job FAILED" in alert and "JWT signing keys" in alert
    assert "did not accept a token signed with key" in alert
    assert "previous Secret restored" in alert and "TWINME_JWT_KEYS_FILE" in alert
    assert "PRIVATE KEY" not in alert and "PRIVATE KEY" not in _all_text(failed)


def test_a_rollout_past_its_deadline_puts_the_previous_secret_back(
    jwt_cluster: JwtCluster, slack_receiver: SlackReceiver
) -> None:
    assert _run(jwt_cluster, slack_receiver, "jwt_key_rotation_job").success
    old_kid, old_pem = _signing_key(jwt_cluster)
    with stuck_once(jwt_cluster.pods):
        failed = _run(jwt_cluster, slack_receiver, "jwt_key_rotation_job")
    assert not failed.success
    assert _signing_key(jwt_cluster)[0] == old_kid
    assert _status(jwt_cluster, old_kid, old_pem) == 200
    (alert,) = slack_receiver.messages
    assert "ProgressDeadlineExceeded" in alert and "previous Secret restored" in alert


def test_a_rollback_that_does_not_recover_says_so(
    jwt_cluster: JwtCluster, slack_receiver: SlackReceiver
) -> None:
    assert _run(jwt_cluster, slack_receiver, "jwt_key_rotation_job").success
    old_kid, _ = _signing_key(jwt_cluster)
    jwt_cluster.pods.mode = "stuck"  # neither the new rollout nor the rollback's completes
    failed = _run(jwt_cluster, slack_receiver, "jwt_key_rotation_job")
    assert not failed.success
    # the Secret is back to the previous version all the same
    assert _signing_key(jwt_cluster)[0] == old_kid
    (alert,) = slack_receiver.messages
    assert "rollback did not recover" in alert and "may NOT be serving" in alert
