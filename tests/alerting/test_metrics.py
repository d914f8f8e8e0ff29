"""Operation metrics on a real Prometheus Pushgateway: what the alerts and the dashboard read.

``prometheus-pushgateway`` runs on a free 127.0.0.1 port with a temporary persistence file (and,
for the basic-auth tests, a web config with a bcrypt user), and is stopped by a finalizer. What
the code pushed is read back from the gateway's own ``/metrics``, as Prometheus scrapes it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from tests.support.api_app import ControlledApp
from tests.support.backup_helpers import read_manifest, run_backup, run_text, store_for
from tests.support.k8s_emulator import INITIAL_IMAGE, DeploymentController, stuck_once
from tests.support.pushgateway import (
    PASSWORD,
    USER,
    Gateway,
    names,
    start_gateway,
    stop_gateway,
    value,
)
from tests.support.release_env import deploy_resources
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.alerting.metric_specs import METRICS, MetricSpec
from twinme_ops.alerting.metrics import MetricsResource, build_registry
from twinme_ops.backups.drill import DrillResult
from twinme_ops.defs.release.assets import CONTAINER_IMAGE, api_deployment
from twinme_ops.defs.release.checks import deployment_verification
from twinme_ops.defs.resources import build_resources
from twinme_ops.scratch.local import free_port
from twinme_ops.scratch.postgres import PostgresServer
from twinme_ops.scratch.redis import RedisServer
from twinme_ops.servers.kube import KubernetesResource

GROUP = {"job": "twinme_ops", "environment": "production"}
SHA = "c" * 40
NEW_IMAGE = "127.0.0.1:5000/twinme-api@sha256:" + "2" * 64


@pytest.fixture
def auth_gateway(tmp_path: Path) -> Iterator[Gateway]:
    """A Pushgateway that wants basic auth (USER / PASSWORD) on every endpoint."""
    proc, gw = start_gateway(tmp_path, auth=True)
    try:
        yield gw
    finally:
        stop_gateway(proc)


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """Log records of the metrics logger passed to the resource, whatever pytest's log level."""
    logger = logging.getLogger("tests.metrics")
    logger.setLevel(logging.DEBUG)
    caught: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            caught.append(record)

    handler = Keep()
    logger.addHandler(handler)
    try:
        yield caught
    finally:
        logger.removeHandler(handler)


def _messages(records: list[logging.LogRecord], level: int) -> list[str]:
    return [r.getMessage() for r in records if r.levelno == level]


MANIFEST: dict[str, Any] = {
    "set_id": "2026-11-24",
    "created_at": "2026-11-24T01:00:05+00:00",
    "total_bytes": 7000,
    "durations_s": {"postgres": 12.5, "redis": 1.25, "files": 3.0},
    "artifacts": {
        "postgres": {"bytes_out": 5000},
        "redis": {"bytes_out": 500},
        "files": {"bytes_out": 1500},
    },
}
CREATED = datetime.fromisoformat(MANIFEST["created_at"]).timestamp()


def _drill(passed: bool, rto: dict[str, float]) -> DrillResult:
    started = datetime(2026, 11, 24, 1, 30, 5, tzinfo=UTC)
    return DrillResult(
        set_id="2026-11-24",
        passed=passed,
        reason="verified" if passed else "postgres: row count mismatch",
        checked_at=started.isoformat(),
        rto_s=rto,
        rpo_s=started.timestamp() - CREATED,
    )


# ------------------------------------------------------------------------------- the resource


def test_backup_drill_and_release_metrics_reach_the_gateway(
    gateway: Gateway, records: list[logging.LogRecord]
) -> None:
    log = logging.getLogger("tests.metrics")
    metrics = MetricsResource(pushgateway_url=gateway.url, environment="production")
    before = time.time()
    assert metrics.push_backup(MANIFEST, log=log)
    assert metrics.push_drill(_drill(True, {"postgres": 40.0, "redis": 2.5, "files": 7.5}), log=log)
    assert metrics.push_deploy(sha=SHA, success=True, rolled_back=False, rollout_s=42.0, log=log)

    got = gateway.samples()
    backup = {**GROUP, "operation": "backup"}
    assert value(got, "twinme_backup_last_success_timestamp_seconds", **backup) == CREATED
    assert value(got, "twinme_backup_size_bytes", **backup) == 7000
    for component, size in (("postgres", 5000), ("redis", 500), ("files", 1500)):
        assert value(got, "twinme_backup_component_size_bytes", component=component) == size
    assert value(got, "twinme_backup_component_duration_seconds", component="redis") == 1.25
    assert value(got, "twinme_backup_duration_seconds") == 12.5  # the slowest component

    drill = {**GROUP, "operation": "restore_drill"}
    assert value(got, "twinme_restore_drill_success", **drill) == 1
    assert value(got, "twinme_restore_drill_rto_seconds", **drill) == 50.0
    assert value(got, "twinme_restore_drill_component_rto_seconds", component="files") == 7.5
    assert value(got, "twinme_restore_drill_rpo_seconds") == 1800
    # the verified set's creation time, which the backup-age alert compares with now
    assert value(got, "twinme_backup_last_verified_timestamp_seconds", **drill) == CREATED
    assert value(got, "twinme_restore_drill_last_run_timestamp_seconds") >= before

    release = {**GROUP, "operation": "release"}
    assert value(got, "twinme_deploy_success", sha=SHA, **release) == 1
    assert value(got, "twinme_deploy_rolled_back", sha=SHA, **release) == 0
    assert value(got, "twinme_deploy_rollout_duration_seconds") == 42.0
    assert value(got, "twinme_deploy_last_timestamp_seconds") >= before
    assert "twinme_deploy_rollback_healthy" not in names(got)  # no rollback happened
    assert names(got) <= set(METRICS)
    assert any(f"pushed 9 backup metrics to {gateway.url}" in m for m in _messages(records, 20))


def test_a_failed_drill_keeps_the_time_of_the_last_verified_set(gateway: Gateway) -> None:
    metrics = MetricsResource(pushgateway_url=gateway.url, environment="production")
    assert metrics.push_drill(_drill(True, {"postgres": 40.0, "redis": 2.5, "files": 7.5}))
    assert metrics.push_drill(_drill(False, {"postgres": 31.0}))
    got = gateway.samples()
    assert value(got, "twinme_restore_drill_success") == 0  # TwinmeRestoreDrillFailed fires
    assert value(got, "twinme_restore_drill_rto_seconds") == 31.0
    # the failed drill replaced the per-component RTOs, the verified time is the passed one's
    rto = [ls for n, ls in got if n == "twinme_restore_drill_component_rto_seconds"]
    assert [dict(ls)["component"] for ls in rto] == ["postgres"]
    assert value(got, "twinme_backup_last_verified_timestamp_seconds") == CREATED


def test_a_release_replaces_the_previous_rollback(gateway: Gateway) -> None:
    metrics = MetricsResource(pushgateway_url=gateway.url, environment="production")
    old = "d" * 40
    assert metrics.push_deploy(sha=old, success=False, rolled_back=True, rollback_healthy=False)
    got = gateway.samples()
    assert value(got, "twinme_deploy_rolled_back", sha=old) == 1
    assert value(got, "twinme_deploy_rollback_healthy", sha=old) == 0
    assert value(got, "twinme_deploy_success", sha=old) == 0

    assert metrics.push_deploy(sha=SHA, success=True, rolled_back=False)
    got = gateway.samples()
    # the rollback alerts resolve: nothing of the rolled back release is left on the gateway
    assert not [ls for _, ls in got if ("sha", old) in ls]
    assert "twinme_deploy_rollback_healthy" not in names(got)
    assert value(got, "twinme_deploy_success", sha=SHA) == 1


def test_basic_auth_in_the_url_is_sent_and_never_logged(
    auth_gateway: Gateway, records: list[logging.LogRecord]
) -> None:
    log = logging.getLogger("tests.metrics")
    metrics = MetricsResource(
        pushgateway_url=auth_gateway.url_with_auth(), environment="production"
    )
    assert metrics.push_backup(MANIFEST, log=log)
    assert value(auth_gateway.samples(), "twinme_backup_size_bytes") == 7000

    wrong = MetricsResource(pushgateway_url=auth_gateway.url_with_auth("not-the-Pw-42"))
    assert not wrong.push_backup(MANIFEST, log=log)
    (warning,) = _messages(records, logging.WARNING)
    assert "401" in warning and f"{USER}:***@127.0.0.1:{auth_gateway.port}" in warning
    text = "\n".join(r.getMessage() for r in records)
    assert PASSWORD not in text and "not-the-Pw-42" not in text


def test_an_unreachable_gateway_is_a_warning_not_an_error(
    records: list[logging.LogRecord],
) -> None:
    log = logging.getLogger("tests.metrics")
    port = free_port()  # nothing listens there
    metrics = MetricsResource(pushgateway_url=f"http://{USER}:{PASSWORD}@127.0.0.1:{port}")
    started = time.monotonic()
    assert metrics.push_deploy(sha=SHA, success=True, rolled_back=False, log=log) is False
    assert time.monotonic() - started < 5
    (warning,) = _messages(records, logging.WARNING)
    assert "release metrics not pushed" in warning and "Connection refused" in warning
    assert "TWINME_PUSHGATEWAY_URL" in warning  # says what to fix
    assert PASSWORD not in warning and f"{USER}:***@" in warning


def test_without_a_gateway_the_metrics_are_logged(records: list[logging.LogRecord]) -> None:
    metrics = MetricsResource()
    assert metrics.push_backup(MANIFEST, log=logging.getLogger("tests.metrics")) is False
    # at debug: locally there is no gateway, and the CLI's summary is what a person reads
    # (twinme-ops -v, or the run's debug events in the UI, show the values)
    (debug,) = [r.getMessage() for r in records if r.levelno == logging.DEBUG]
    assert "TWINME_PUSHGATEWAY_URL unset" in debug
    assert "twinme_backup_size_bytes=7000" in debug
    assert not [r for r in records if r.levelno >= logging.INFO]


@pytest.mark.parametrize(
    "url", ["ftp://user:s3cret-Value@gw:9091", "http://user:s3cret-Value@gw:port", "http://"]
)
def test_a_malformed_url_is_a_warning_naming_the_fix(
    url: str, records: list[logging.LogRecord]
) -> None:
    metrics = MetricsResource(pushgateway_url=url)
    assert metrics.push_backup(MANIFEST, log=logging.getLogger("tests.metrics")) is False
    (warning,) = _messages(records, logging.WARNING)
    assert "is not an http(s) URL" in warning and "Fix: set it like http://" in warning
    assert "s3cret-Value" not in warning


def test_a_malformed_record_is_a_warning_not_an_error(
    gateway: Gateway, records: list[logging.LogRecord]
) -> None:
    metrics = MetricsResource(pushgateway_url=gateway.url)
    broken = {**MANIFEST, "artifacts": {"postgres": {"size": 1}}}  # no bytes_out
    assert metrics.push_backup(broken, log=logging.getLogger("tests.metrics")) is False
    (warning,) = _messages(records, logging.WARNING)
    assert "backup metrics not pushed: they could not be built" in warning
    assert not gateway.samples()


def test_only_declared_metrics_can_be_pushed() -> None:
    with pytest.raises(ValueError, match="not declared"):
        build_registry([(MetricSpec("twinme_made_up", "?"), {}, 1.0)])


def test_build_resources_reads_the_gateway_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("TWINME_PUSHGATEWAY_URL", raising=False)
    monkeypatch.setenv("TWINME_ENV", "local")
    assert build_resources()["metrics"].pushgateway_url == ""
    monkeypatch.setenv("TWINME_PUSHGATEWAY_URL", f"http://{USER}:{PASSWORD}@gw:9091")
    configured = build_resources()["metrics"]
    # an EnvVar: Dagster's UI shows the variable's name, never the URL and its password
    assert isinstance(configured.pushgateway_url, dg.EnvVar)
    assert configured.environment == "local"


# ----------------------------------------------------------------------------- wired into jobs


def test_nightly_backup_pushes_backup_and_drill_metrics(
    sandbox, backup_env: dict[str, str], auth_gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWINME_PUSHGATEWAY_URL", auth_gateway.url_with_auth())
    instance = dg.DagsterInstance.ephemeral()
    result = run_backup(instance=instance)
    assert result.success
    manifest = read_manifest(store_for(backup_env["TWINME_BACKUP_URL"]))

    got = auth_gateway.samples()
    backup = {"job": "twinme_ops", "operation": "backup", "environment": "local"}
    created = datetime.fromisoformat(manifest["created_at"]).timestamp()
    assert value(got, "twinme_backup_last_success_timestamp_seconds", **backup) == created
    assert value(got, "twinme_backup_size_bytes", **backup) == manifest["total_bytes"]
    for component, art in manifest["artifacts"].items():
        assert (
            value(got, "twinme_backup_component_size_bytes", component=component)
            == (art["bytes_out"])
        )
    drill = {"job": "twinme_ops", "operation": "restore_drill", "environment": "local"}
    assert value(got, "twinme_restore_drill_success", **drill) == 1
    rto = value(got, "twinme_restore_drill_rto_seconds", **drill)
    check = result.get_asset_check_evaluations()[0]
    assert rto == pytest.approx(check.metadata["rto_total_s"].value, abs=0.01) and rto > 0
    # the drill verified this very set: its creation time (to the RPO's 0.1 s rounding)
    verified = value(got, "twinme_backup_last_verified_timestamp_seconds", **drill)
    assert verified == pytest.approx(created, abs=0.1)
    assert PASSWORD not in run_text(instance, result)


def test_a_backup_succeeds_when_the_gateway_is_down(
    sandbox, backup_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "TWINME_PUSHGATEWAY_URL", f"http://{USER}:{PASSWORD}@127.0.0.1:{free_port()}"
    )
    instance = dg.DagsterInstance.ephemeral()
    result = run_backup(instance=instance)
    assert result.success  # the set is complete and drilled all the same
    assert result.get_asset_check_evaluations()[0].passed
    text = run_text(instance, result)
    assert "backup metrics not pushed to the Pushgateway" in text
    assert "restore_drill metrics not pushed to the Pushgateway" in text
    assert PASSWORD not in text


def _release(
    kubeconfig: Path,
    app: ControlledApp,
    slack: SlackReceiver,
    pg: PostgresServer,
    redis_server: RedisServer,
    gateway: Gateway,
) -> dg.ExecuteInProcessResult:
    """api_deployment then its deployment_verification check, against the emulator and app."""
    defs = dg.Definitions(
        assets=[api_deployment],
        asset_checks=[deployment_verification],
        jobs=[dg.define_asset_job("deploy", selection=[api_deployment])],
        resources={
            **deploy_resources(kubeconfig, app, slack, pg, redis_server),
            "metrics": MetricsResource(pushgateway_url=gateway.url, environment="production"),
        },
    )
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(
        dg.AssetMaterialization(CONTAINER_IMAGE, metadata={"image_ref": NEW_IMAGE, "sha": SHA})
    )
    return defs.resolve_job_def("deploy").execute_in_process(
        instance=instance, raise_on_error=False
    )


def test_release_outcomes_are_pushed(
    k8s_emulator,
    deployment_controller: DeploymentController,
    app: ControlledApp,
    slack_receiver: SlackReceiver,
    pg_server: PostgresServer,
    redis_server: RedisServer,
    gateway: Gateway,
) -> None:
    kubeconfig = k8s_emulator[0]
    # a healthy release: deployed, verified
    assert _release(kubeconfig, app, slack_receiver, pg_server, redis_server, gateway).success
    got = gateway.samples()
    release = {"operation": "release", "environment": "production", "sha": SHA}
    assert value(got, "twinme_deploy_success", **release) == 1
    assert value(got, "twinme_deploy_rolled_back", **release) == 0
    assert value(got, "twinme_deploy_rollout_duration_seconds") > 0
    assert value(got, "twinme_deploy_verification_duration_seconds") > 0
    assert 0 < value(got, "twinme_deploy_load_test_p95_seconds") < 0.2
    assert value(got, "twinme_deploy_load_test_error_ratio") == 0

    # the same release on an app answering 500 to every 5th request: verification fails, it is
    # rolled back, and the previous version, verified on the same faulty app, is not healthy
    app.error_every_n = 5
    assert not _release(kubeconfig, app, slack_receiver, pg_server, redis_server, gateway).success
    got = gateway.samples()
    assert value(got, "twinme_deploy_success", **release) == 0
    assert value(got, "twinme_deploy_rolled_back", **release) == 1
    assert value(got, "twinme_deploy_rollback_healthy", **release) == 0
    assert value(got, "twinme_deploy_load_test_error_ratio") > 0.001


def test_a_stuck_rollout_pushes_its_rollback(
    k8s_emulator,
    deployment_controller: DeploymentController,
    app: ControlledApp,
    slack_receiver: SlackReceiver,
    pg_server: PostgresServer,
    redis_server: RedisServer,
    gateway: Gateway,
) -> None:
    with stuck_once(deployment_controller):
        result = _release(k8s_emulator[0], app, slack_receiver, pg_server, redis_server, gateway)
    assert not result.success
    assert KubernetesResource(kubeconfig=str(k8s_emulator[0])).current_image("api") == (
        INITIAL_IMAGE
    )
    got = gateway.samples()
    assert value(got, "twinme_deploy_rolled_back", sha=SHA) == 1
    assert value(got, "twinme_deploy_rollback_healthy", sha=SHA) == 1
    assert value(got, "twinme_deploy_success", sha=SHA) == 0
    assert value(got, "twinme_deploy_rollout_duration_seconds") > 0
