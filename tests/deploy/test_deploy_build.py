"""deploy/build/: the build namespace where pushed code runs, checked before it is applied.

Every object is validated strictly against the Kubernetes schemas (as deploy/app/ is); the
namespace enforces the restricted Pod Security profile; the ServiceAccount and the namespace are
the ones ``KubernetesAppTestRunner`` uses; and the NetworkPolicy is evaluated, destination by
destination, the way a CNI applies it to the pods the runner creates: nothing may connect to
them, and they reach DNS and public HTTPS (the npm registry), nothing in the cluster, no private
range, not the cloud's metadata service.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support.k8s_job_cluster import restricted_violations
from tests.support.kubernetes_versions import VERSIONS
from tests.support.network_policy import Endpoint, allowed, selects
from twinme_ops.release.app_tests.job import PodSettings, job_manifest
from twinme_ops.release.app_tests.k8s import (
    POSTGRES_IMAGE,
    REDIS_IMAGE,
    TEST_IMAGE,
    KubernetesAppTestRunner,
)
from twinme_ops.release.images import cluster_job as cluster_build_job

BUILD_DIR = Path(__file__).resolve().parents[2] / "deploy" / "build"
NAMESPACE = KubernetesAppTestRunner.model_fields["namespace"].default


def objects() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(BUILD_DIR.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def one(kind: str) -> dict[str, Any]:
    [found] = [d for d in objects() if d["kind"] == kind]
    return found


def app_tests_pod_labels() -> dict[str, str]:
    """The labels of the pods the runner creates (from the real manifest builder)."""
    job = job_manifest(
        "twinme-app-tests-x",
        sha="0" * 40,
        commands=["npm ci"],
        configmaps=["c"],
        source_sha256="0" * 64,
        password="p",
        settings=PodSettings(TEST_IMAGE, POSTGRES_IMAGE, REDIS_IMAGE, {}),
        timeout_s=60,
        labels={"dagster/run-id": "r"},
    )
    return job["spec"]["template"]["metadata"]["labels"]


def egress_allowed(
    policy: dict[str, Any],
    *,
    port: int,
    protocol: str = "TCP",
    ip: str | None = None,
    namespace: str | None = None,
    pod_labels: dict[str, str] | None = None,
) -> bool:
    """Whether the policy lets the app tests' pods open ``protocol/port`` to a destination: an
    address (``ip``) and/or a pod (``namespace`` + ``pod_labels``)."""
    source = Endpoint(NAMESPACE, app_tests_pod_labels())
    return allowed([policy], source, Endpoint(namespace, pod_labels or {}, ip), port, protocol)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_kubernetes(version: str) -> None:
    docs = objects()
    assert {d["kind"] for d in docs} == {"Namespace", "ServiceAccount", "NetworkPolicy"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_namespace_is_the_runners_and_enforces_restricted() -> None:
    namespace = one("Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE == "twinme-build"
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert sorted(BUILD_DIR.glob("*.yaml"))[0].name.startswith("00-"), "namespace first"
    for doc in objects():
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == NAMESPACE


def test_the_image_builders_pod_passes_the_namespaces_restricted_level() -> None:
    """The rootless buildah Job needs no exception: the namespace stays "restricted", and the
    builder's real manifest (push and git Secrets, Dockerfile ConfigMap) passes it, is valid
    Kubernetes, and runs in this namespace by default."""
    from twinme_ops.release.images.cluster import ClusterImageBuilder

    assert ClusterImageBuilder.model_fields["namespace"].default == NAMESPACE
    labels = one("Namespace")["metadata"]["labels"]
    assert {
        labels[f"pod-security.kubernetes.io/{mode}"] for mode in ("enforce", "warn", "audit")
    } == {"restricted"}
    job = cluster_build_job.job_manifest(
        "twinme-build-x",
        pod=cluster_build_job.BuildPod(
            build_image=cluster_build_job.BUILDAH_IMAGE,
            git_image=cluster_build_job.GIT_IMAGE,
            resources={"requests": {"cpu": "1"}},
            push_secret="regcred",
            git_secret="github-read",
            dockerfile_configmap="twinme-dockerfile-0",
        ),
        clone="true",
        build="true",
        timeout_s=60,
        ttl_s=60,
    )
    spec = job["spec"]["template"]["spec"]
    assert restricted_violations(spec) == []
    for version in VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)
    for container in [*spec["initContainers"], *spec["containers"]]:
        assert container["securityContext"]["privileged"] is False
        assert "add" not in container["securityContext"]["capabilities"]


def test_the_pods_account_is_the_runners_and_mounts_no_token() -> None:
    account = one("ServiceAccount")
    assert (
        account["metadata"]["name"]
        == KubernetesAppTestRunner.model_fields["service_account"].default
    )
    assert account["automountServiceAccountToken"] is False


def test_the_policy_covers_exactly_the_app_tests_pods_and_admits_nothing() -> None:
    policy = one("NetworkPolicy")
    spec = policy["spec"]
    assert selects(spec["podSelector"], app_tests_pod_labels())
    assert spec["podSelector"]["matchLabels"], "an empty selector would cover the builder too"
    assert not selects(spec["podSelector"], {"app.kubernetes.io/name": "twinme-image-build"})
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    assert spec["ingress"] == [], "no pod, namespace or address may connect to them"
    for rule in spec["egress"]:
        assert rule.get("ports"), "every egress rule names its ports"


@pytest.mark.parametrize(
    ("destination", "allowed"),
    [
        # DNS, and HTTPS on the internet: what npm ci needs
        ({"namespace": "kube-system", "pod_labels": {"k8s-app": "kube-dns"}, "port": 53}, True),
        (
            {
                "namespace": "kube-system",
                "pod_labels": {"k8s-app": "kube-dns"},
                "port": 53,
                "protocol": "UDP",
            },
            True,
        ),
        ({"ip": "104.16.1.35", "port": 443}, True),  # registry.npmjs.org (Cloudflare)
        ({"ip": "2606:4700::6810:123", "port": 443}, True),
        # anything else on the internet
        ({"ip": "104.16.1.35", "port": 80}, False),
        ({"ip": "203.0.113.7", "port": 5432}, False),  # a public managed PostgreSQL
        ({"ip": "203.0.113.7", "port": 6379}, False),
        # the cloud's metadata service and every private range, on any port, 443 included
        ({"ip": "169.254.169.254", "port": 80}, False),
        ({"ip": "169.254.169.254", "port": 443}, False),
        ({"ip": "10.96.0.1", "port": 443}, False),  # the Kubernetes API's ClusterIP
        ({"ip": "10.0.12.5", "port": 5432}, False),  # a VPC database
        ({"ip": "172.20.3.4", "port": 443}, False),
        ({"ip": "192.168.1.10", "port": 443}, False),
        ({"ip": "100.64.3.2", "port": 443}, False),
        ({"ip": "fd00::5", "port": 443}, False),
        ({"ip": "::ffff:10.0.12.5", "port": 443}, False),
        # pods of the cluster: the API, the Dagster pods, DNS on other ports
        (
            {
                "namespace": "twinme-prod",
                "pod_labels": {"app": "twinme-api"},
                "ip": "10.244.1.7",
                "port": 3000,
            },
            False,
        ),
        ({"namespace": "dagster", "pod_labels": {}, "ip": "10.244.2.9", "port": 443}, False),
        ({"namespace": "kube-system", "pod_labels": {"k8s-app": "kube-dns"}, "port": 443}, False),
        ({"namespace": NAMESPACE, "pod_labels": {}, "ip": "10.244.3.3", "port": 5432}, False),
    ],
)
def test_egress_reaches_dns_and_public_https_only(
    destination: dict[str, Any], allowed: bool
) -> None:
    assert egress_allowed(one("NetworkPolicy"), **destination) is allowed, destination


def test_the_evaluator_sees_a_hole_when_there_is_one() -> None:
    """Without the excepted ranges, the cluster and the metadata service would be reachable."""
    policy = one("NetworkPolicy")
    for rule in policy["spec"]["egress"]:
        for peer in rule.get("to") or []:
            peer.get("ipBlock", {}).pop("except", None)
    assert egress_allowed(policy, ip="10.96.0.1", port=443)
    assert egress_allowed(policy, ip="169.254.169.254", port=443)
