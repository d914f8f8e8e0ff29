"""KubernetesResource against kmock's emulator, with a fixture playing the deployment controller.

The resource talks to the emulator over HTTP through a kubeconfig and the official client, the
production code path; see ``tests/support/k8s_emulator.py`` for what the emulator does and does not
do.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from kubernetes import client

from tests.support.k8s_emulator import (
    CONTAINER,
    DEPLOYMENT,
    INITIAL_IMAGE,
    NAMESPACE,
    DeploymentController,
    EmulatorHandle,
    apps_api,
    create_deployment,
    write_kubeconfig,
)
from twinme_ops.servers.kube import (
    CHANGE_CAUSE_ANNOTATION,
    KubernetesApiError,
    KubernetesNotConfiguredError,
    KubernetesResource,
    RolloutFailed,
    rollout_status,
)

NEW_IMAGE = "registry.twinme.test/twinme-api@sha256:" + "2" * 64


def _resource(kubeconfig: Path, **overrides: Any) -> KubernetesResource:
    fields: dict[str, Any] = {
        "kubeconfig": str(kubeconfig),
        "rollout_timeout_s": 10,
        "poll_interval_s": 0.05,
    }
    fields.update(overrides)
    return KubernetesResource(**fields)


def _token(kubeconfig: Path) -> str:
    text = kubeconfig.read_text()
    return text.split("token: ", 1)[1].split()[0]


@pytest.fixture
def kube(
    k8s_emulator: tuple[Path, EmulatorHandle], deployment_controller: DeploymentController
) -> KubernetesResource:
    """The resource pointed at the emulated ``twinme-prod/twinme-api`` (rolled out, 3 replicas)."""
    return _resource(k8s_emulator[0])


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither ``KUBECONFIG`` nor the in-cluster service environment."""
    for name in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(name, raising=False)


def test_reads_the_deployment(kube: KubernetesResource, k8s_emulator: Any) -> None:
    assert kube.is_configured()
    assert kube.replicas() == 3
    assert kube.current_image() == INITIAL_IMAGE
    assert kube.current_image("log-shipper").endswith("vector:0.40.0")
    with pytest.raises(ValueError, match="no container 'nope'.*'api', 'log-shipper'"):
        kube.current_image("nope")
    description = kube.describe()
    assert f"deployment {NAMESPACE}/{DEPLOYMENT}" in description
    assert "127.0.0.1" in description
    assert _token(k8s_emulator[0]) not in description


def test_scale_to_zero_and_back(
    kube: KubernetesResource, deployment_controller: DeploymentController
) -> None:
    kube.scale(0)
    assert kube.replicas() == 0
    status = kube.wait_for_rollout()
    assert status.done and status.desired == 0
    assert (status.replicas, status.available_replicas) == (0, 0)
    # the API server (and so the controller) omits zero counters
    dep: Any = kube.read_deployment()
    assert dep.status.replicas is None and dep.status.available_replicas is None

    kube.scale(3)
    status = kube.wait_for_rollout()
    assert status.done
    assert (status.desired, status.updated_replicas, status.available_replicas) == (3, 3, 3)
    assert status.observed_generation == status.generation == 3
    assert [gen for gen, _ in deployment_controller.seen] == [1, 2, 3]


def test_wait_does_not_trust_a_stale_status(
    kube: KubernetesResource, deployment_controller: DeploymentController
) -> None:
    """Right after a change the old, complete status must not count as a finished rollout."""
    deployment_controller.delay_s = 1.0
    kube.scale(2)
    first = rollout_status(kube.read_deployment())
    assert not first.done
    started = time.monotonic()
    status = kube.wait_for_rollout()
    assert status.done and status.available_replicas == 2
    assert time.monotonic() - started >= 0.8


def test_set_image_rolls_out_and_records_the_change_cause(
    kube: KubernetesResource,
    k8s_emulator: tuple[Path, EmulatorHandle],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cause = "release abc1234 by git_push_sensor"
    kube.set_image(CONTAINER, NEW_IMAGE, cause)
    log = logging.getLogger("test.rollout")
    with caplog.at_level(logging.INFO, logger="test.rollout"):
        status = kube.wait_for_rollout(log=log)
    assert status.done and status.generation == 2
    assert kube.current_image(CONTAINER) == NEW_IMAGE
    dep: Any = apps_api(k8s_emulator[0]).read_namespaced_deployment(DEPLOYMENT, NAMESPACE)
    assert dep.metadata.annotations[CHANGE_CAUSE_ANNOTATION] == cause
    # the sidecar is untouched
    containers = {c.name: c.image for c in dep.spec.template.spec.containers}
    assert containers["log-shipper"].endswith("vector:0.40.0")
    lines = [r.getMessage() for r in caplog.records]
    assert any("old replicas are pending termination" in line for line in lines), lines
    assert "successfully rolled out" in lines[-1]

    # a second change keeps the annotations map and replaces the cause
    kube.set_image(CONTAINER, INITIAL_IMAGE, "rollback to previous release")
    assert kube.wait_for_rollout().generation == 3
    dep = apps_api(k8s_emulator[0]).read_namespaced_deployment(DEPLOYMENT, NAMESPACE)
    assert dep.metadata.annotations[CHANGE_CAUSE_ANNOTATION] == "rollback to previous release"


def test_progress_deadline_exceeded_fails_at_once(
    kube: KubernetesResource,
    deployment_controller: DeploymentController,
    k8s_emulator: tuple[Path, EmulatorHandle],
) -> None:
    deployment_controller.mode = "stuck"
    kube.set_image(CONTAINER, NEW_IMAGE, "bad release")
    started = time.monotonic()
    with pytest.raises(RolloutFailed) as info:
        kube.wait_for_rollout(timeout_s=30)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert f"{NAMESPACE}/{DEPLOYMENT}" in message
    assert "ProgressDeadlineExceeded" in message
    assert "has timed out progressing" in message
    assert "rollout undo" in message
    assert _token(k8s_emulator[0]) not in message
    assert info.value.status is not None and info.value.status.updated_replicas == 3


def test_a_stale_deadline_condition_does_not_fail_the_next_rollout(
    kube: KubernetesResource, deployment_controller: DeploymentController
) -> None:
    deployment_controller.mode = "stuck"
    kube.set_image(CONTAINER, NEW_IMAGE, "bad release")
    with pytest.raises(RolloutFailed):
        kube.wait_for_rollout()
    deployment_controller.mode = "healthy"
    kube.set_image(CONTAINER, INITIAL_IMAGE, "rollback")
    assert kube.wait_for_rollout().done


def test_slow_rollout_times_out_with_what_was_seen(
    kube: KubernetesResource, deployment_controller: DeploymentController
) -> None:
    deployment_controller.mode = "slow"
    kube.set_image(CONTAINER, NEW_IMAGE, "slow release")
    started = time.monotonic()
    with pytest.raises(RolloutFailed) as info:
        kube.wait_for_rollout(timeout_s=1.0)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 4
    message = str(info.value)
    assert f"deployment {NAMESPACE}/{DEPLOYMENT} did not finish within 1s" in message
    assert "3 old replicas are pending termination" in message
    assert "updated 3" in message and "total 6" in message
    assert "rollout_timeout_s" in message
    seen = info.value.status
    assert seen is not None and not seen.done
    assert (seen.generation, seen.observed_generation) == (2, 2)


def test_missing_deployment_names_namespace_and_fix(
    k8s_emulator: tuple[Path, EmulatorHandle],
) -> None:
    kube = _resource(k8s_emulator[0], deployment="nope")
    with pytest.raises(KubernetesApiError, match="HTTP 404") as info:
        kube.replicas()
    assert "twinme-prod/nope" in str(info.value)
    assert "TWINME_K8S_NAMESPACE" in str(info.value)
    assert info.value.status == 404 and not info.value.transient


def test_scale_rejects_negative(k8s_emulator: tuple[Path, EmulatorHandle]) -> None:
    create_deployment(k8s_emulator[0])
    with pytest.raises(ValueError, match=">= 0"):
        _resource(k8s_emulator[0]).scale(-1)


def test_unconfigured_gives_a_clear_error(no_cluster: None) -> None:
    kube = KubernetesResource()
    assert not kube.is_configured()
    assert kube.describe() == "deployment twinme-prod/twinme-api (no cluster configured)"
    with pytest.raises(KubernetesNotConfiguredError) as info:
        kube.get_client()
    message = str(info.value)
    assert "KUBECONFIG is not set" in message
    assert "export KUBECONFIG=" in message
    assert "twinme-prod/twinme-api" in message
    with pytest.raises(KubernetesNotConfiguredError):
        kube.replicas()


def test_missing_kubeconfig_file(no_cluster: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    kube = KubernetesResource()
    assert not kube.is_configured()
    with pytest.raises(KubernetesNotConfiguredError, match="/nonexistent/kubeconfig.*does not"):
        kube.get_client()


def test_kubeconfig_from_the_environment(
    no_cluster: None,
    monkeypatch: pytest.MonkeyPatch,
    k8s_emulator: tuple[Path, EmulatorHandle],
) -> None:
    create_deployment(k8s_emulator[0], replicas=2)
    monkeypatch.setenv("KUBECONFIG", str(k8s_emulator[0]))
    kube = KubernetesResource()
    assert kube.is_configured()
    assert kube.replicas() == 2


def test_disabled_refuses(k8s_emulator: tuple[Path, EmulatorHandle]) -> None:
    kube = _resource(k8s_emulator[0], enabled=False)
    assert not kube.is_configured()
    assert kube.describe().endswith("(Kubernetes disabled)")
    with pytest.raises(KubernetesNotConfiguredError, match="enabled=false"):
        kube.get_client()


def _deployment(
    *,
    generation: int,
    observed: int,
    replicas: int | None = 3,
    updated: int | None = 3,
    available: int | None = 3,
    total: int | None = 3,
    reason: str | None = None,
    paused: bool = False,
) -> client.V1Deployment:
    conditions = (
        [client.V1DeploymentCondition(type="Progressing", status="False", reason=reason)]
        if reason
        else None
    )
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name="d", namespace="ns", generation=generation),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            paused=paused,
            selector=client.V1LabelSelector(match_labels={"app": "d"}),
            template=client.V1PodTemplateSpec(),
        ),
        status=client.V1DeploymentStatus(
            observed_generation=observed,
            replicas=total,
            updated_replicas=updated,
            available_replicas=available,
            conditions=conditions,
        ),
    )


def test_rollout_status_rules() -> None:
    assert rollout_status(_deployment(generation=2, observed=2)).done
    unobserved = rollout_status(
        _deployment(generation=3, observed=2, reason="ProgressDeadlineExceeded")
    )
    assert not unobserved.done and unobserved.failure is None
    assert "spec update to be observed" in unobserved.message
    failed = rollout_status(
        _deployment(generation=3, observed=3, reason="ProgressDeadlineExceeded")
    )
    assert failed.failure is not None and "ProgressDeadlineExceeded" in failed.failure
    assert (
        "2 of 3 updated"
        in rollout_status(_deployment(generation=1, observed=1, available=2)).message
    )
    zero = rollout_status(
        _deployment(generation=1, observed=1, replicas=0, updated=None, available=None, total=None)
    )
    assert zero.done
    # spec.replicas unset means the API server's default of 1
    assert rollout_status(
        _deployment(generation=1, observed=1, replicas=None, updated=1, available=1, total=1)
    ).done
    paused = rollout_status(_deployment(generation=1, observed=1, updated=1, paused=True))
    assert paused.failure is not None and "paused" in paused.message
    assert rollout_status(_deployment(generation=1, observed=1, paused=True)).done


def test_unreachable_api_server(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}", "t0ken-x")
    kube = _resource(kubeconfig)
    with pytest.raises(KubernetesApiError, match="cannot reach the API server") as info:
        kube.replicas()
    assert info.value.transient
    with pytest.raises(RolloutFailed, match="no status could be read; last error") as failed:
        kube.wait_for_rollout(timeout_s=0.3)
    assert "t0ken-x" not in str(failed.value)


def test_resource_in_a_dagster_asset(k8s_emulator: tuple[Path, EmulatorHandle]) -> None:
    create_deployment(k8s_emulator[0], replicas=2)

    @dg.asset
    def replica_count(kube: KubernetesResource) -> int:
        dg.get_dagster_logger().info(kube.describe())
        return kube.replicas()

    result = dg.materialize([replica_count], resources={"kube": _resource(k8s_emulator[0])})
    assert result.success
    assert result.output_for_node("replica_count") == 2
