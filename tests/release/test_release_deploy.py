"""Deploy, verify, roll back: the release's last two steps against kmock and a controlled app."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from tests.support.api_app import ControlledApp
from tests.support.k8s_emulator import INITIAL_IMAGE, DeploymentController, stuck_once
from tests.support.release_env import deploy_resources
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.defs.alerts.hooks import slack_on_failure
from twinme_ops.defs.release.assets import CONTAINER_IMAGE, api_deployment
from twinme_ops.defs.release.checks import deployment_verification
from twinme_ops.scratch.postgres import PostgresServer
from twinme_ops.scratch.redis import RedisServer
from twinme_ops.servers.kube import KubernetesResource

SHA = "a" * 40
LAUNCHER = "olga@twinme.ai"
NEW_IMAGE = "127.0.0.1:5000/twinme-api@sha256:" + "2" * 64


def _deploy(
    kubeconfig: Path,
    app: ControlledApp,
    slack: SlackReceiver,
    pg: PostgresServer,
    redis_server: RedisServer,
) -> tuple[dg.ExecuteInProcessResult, KubernetesResource]:
    resources = deploy_resources(kubeconfig, app, slack, pg, redis_server)
    kube = resources["kubernetes"]
    defs = dg.Definitions(
        assets=[api_deployment],
        asset_checks=[deployment_verification],
        # with release_job's failure hook: a step that alerted itself must not alert twice
        jobs=[dg.define_asset_job("deploy", selection=[api_deployment], hooks={slack_on_failure})],
        resources=resources,
    )
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(
        dg.AssetMaterialization(CONTAINER_IMAGE, metadata={"image_ref": NEW_IMAGE, "sha": SHA})
    )
    result = defs.resolve_job_def("deploy").execute_in_process(
        instance=instance, raise_on_error=False, tags={"twinme/launched_by": LAUNCHER}
    )
    return result, kube


def _verification(result: dg.ExecuteInProcessResult) -> Any:
    (evaluation,) = [
        e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ]
    return evaluation


def test_healthy_release_is_deployed_by_digest_and_announced(
    k8s_emulator,
    deployment_controller: DeploymentController,
    app: ControlledApp,
    slack_receiver: SlackReceiver,
    pg_server: PostgresServer,
    redis_server: RedisServer,
) -> None:
    result, kube = _deploy(k8s_emulator[0], app, slack_receiver, pg_server, redis_server)
    assert result.success
    assert kube.current_image("api") == NEW_IMAGE
    evaluation = _verification(result)
    assert evaluation.passed
    assert evaluation.metadata["load_p95_ms"].value < 200
    (message,) = slack_receiver.messages
    assert "deployed and verified" in message and NEW_IMAGE in message and SHA[:12] in message


def test_rollout_past_its_deadline_rolls_back(
    k8s_emulator,
    deployment_controller: DeploymentController,
    app: ControlledApp,
    slack_receiver: SlackReceiver,
    pg_server: PostgresServer,
    redis_server: RedisServer,
) -> None:
    with stuck_once(deployment_controller):
        result, kube = _deploy(k8s_emulator[0], app, slack_receiver, pg_server, redis_server)
    assert not result.success
    assert kube.current_image("api") == INITIAL_IMAGE
    (alert,) = [m for m in slack_receiver.messages if "FAILED" in m]
    assert "ProgressDeadlineExceeded" in alert and "rollback healthy" in alert.splitlines()[0]
    assert f"Rollback: rolled back to {INITIAL_IMAGE}: healthy" in alert
    assert f"Commit: {SHA}" in alert and f"Image: {NEW_IMAGE}" in alert
    # whoever launched the release is named (issue 12)
    assert f"Launched by: {LAUNCHER}" in alert


@pytest.mark.parametrize("fault", ["slow", "failing"])
def test_a_slow_or_failing_app_is_rolled_back(
    fault: str,
    k8s_emulator,
    deployment_controller: DeploymentController,
    app: ControlledApp,
    slack_receiver: SlackReceiver,
    pg_server: PostgresServer,
    redis_server: RedisServer,
) -> None:
    if fault == "slow":
        app.delay_s = 0.3
    else:
        app.error_every_n = 5
    result, kube = _deploy(k8s_emulator[0], app, slack_receiver, pg_server, redis_server)
    assert not result.success  # the check is blocking
    evaluation = _verification(result)
    assert not evaluation.passed
    assert evaluation.metadata["rolled_back_to"].value == INITIAL_IMAGE
    assert kube.current_image("api") == INITIAL_IMAGE
    (alert,) = [m for m in slack_receiver.messages if "FAILED" in m]
    expected = "p95" if fault == "slow" else "error rate"
    assert expected in alert and "rolled back to" in alert
    # the previous version is verified against the same (still faulty) app: honestly unhealthy
    assert "rollback NOT healthy" in alert.splitlines()[0]
    assert f"Rollback: rolled back to {INITIAL_IMAGE}: NOT healthy" in alert
