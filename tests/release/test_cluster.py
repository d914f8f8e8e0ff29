"""Optional: the deploy and rollback path against a real Kubernetes cluster (``-m cluster``).

No API server can be installed on CI machines, so these tests run only when asked for:

    TWINME_TEST_CLUSTER=1 KUBECONFIG=~/.kube/config pytest -m cluster tests/release/test_cluster.py

They create a throwaway namespace ``twinme-ops-test-<random>`` (deleted afterwards), a two-replica
Deployment of a pinned public image, roll it to another pinned image the way ``api_deployment``
does, then roll out an image that cannot be pulled with a short progress deadline and check that
the failure is ``ProgressDeadlineExceeded`` and that :func:`rollback` restores the previous image.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterator

import pytest
from kubernetes import client, config

from twinme_ops.release.rollback import rollback
from twinme_ops.servers.kube import KubernetesResource, RolloutFailed

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not os.environ.get("TWINME_TEST_CLUSTER"),
        reason="real-cluster tests: set TWINME_TEST_CLUSTER=1 and KUBECONFIG to run them",
    ),
]

# two fixed tags of the tiny pause image (a real cluster can pull them), and an image that cannot
# be pulled (a digest that does not exist) for the failed rollout
IMAGE_A = "registry.k8s.io/pause:3.9"
IMAGE_B = "registry.k8s.io/pause:3.10"
UNPULLABLE = "registry.k8s.io/pause@sha256:" + "0" * 64
log = logging.getLogger("test_cluster")


@pytest.fixture
def namespace() -> Iterator[str]:
    config.load_kube_config()
    core = client.CoreV1Api()
    name = f"twinme-ops-test-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": name}})
    labels = {"app": "twinme-api"}
    client.AppsV1Api().create_namespaced_deployment(
        name,
        {
            "metadata": {"name": "twinme-api", "labels": labels},
            "spec": {
                "replicas": 2,
                "progressDeadlineSeconds": 30,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "api", "image": IMAGE_A}]},
                },
            },
        },
    )
    try:
        yield name
    finally:
        core.delete_namespace(name)


def test_rollout_then_failed_rollout_rolls_back(namespace: str) -> None:
    kube = KubernetesResource(
        namespace=namespace,
        kubeconfig=os.environ.get("KUBECONFIG", ""),
        rollout_timeout_s=180,
        poll_interval_s=1,
    )
    kube.wait_for_rollout(log=log)
    kube.set_image("api", IMAGE_B, change_cause="twinme release test")
    assert kube.wait_for_rollout(log=log).updated_replicas == 2
    assert kube.current_image("api") == IMAGE_B

    kube.set_image("api", UNPULLABLE, change_cause="twinme release broken")
    with pytest.raises(RolloutFailed, match="ProgressDeadlineExceeded"):
        kube.wait_for_rollout(log=log)
    outcome = rollback(kube, "api", IMAGE_B, "test", lambda: None, log)
    assert outcome.healthy, outcome.detail
    assert kube.current_image("api") == IMAGE_B
