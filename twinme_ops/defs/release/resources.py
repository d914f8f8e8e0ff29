"""The release resources the environment asks for: which image builder and where the pushed
commit's tests run.

Part of the one environment switch (:func:`twinme_ops.defs.resources.build_resources` calls
these when the code location loads): ``TWINME_IMAGE_BUILDER`` (buildah, docker, or a rootless
buildah Job in the cluster with ``TWINME_BUILD_*``), ``TWINME_APP_TESTS_RUNNER`` (a Job in the
build namespace, the default in production, or here, isolated by ``TWINME_APP_TESTS_ISOLATION``).
The Kubernetes implementations are imported only when chosen: their client is not loaded
otherwise.
"""

from __future__ import annotations

import os
from typing import Any

from twinme_ops.common.redact import redact
from twinme_ops.release.app_tests.local import ISOLATION_MODES, LocalAppTestRunner
from twinme_ops.release.app_tests.runner import AppTestRunner
from twinme_ops.release.images.local import ImageBuilderResource

IMAGE_BUILDERS = ("buildah", "docker", "cluster")
# the in-cluster builder's settings: TWINME_BUILD_* (ClusterImageBuilder, release/images/cluster.py)
_CLUSTER_SETTINGS = (
    ("namespace", "TWINME_BUILD_NAMESPACE"),
    ("build_image", "TWINME_BUILD_IMAGE"),
    ("git_image", "TWINME_BUILD_GIT_IMAGE"),
    ("service_account", "TWINME_BUILD_SERVICE_ACCOUNT"),
    ("push_secret", "TWINME_BUILD_PUSH_SECRET"),
    ("git_secret", "TWINME_BUILD_GIT_SECRET"),
    ("git_url", "TWINME_BUILD_GIT_URL"),
)
_KANIKO_REMOVED = (
    "kaniko was replaced by a rootless buildah Job (its upstream was archived in 2025, and it "
    "needs root): set TWINME_IMAGE_BUILDER=cluster, with TWINME_BUILD_NAMESPACE, "
    "TWINME_BUILD_IMAGE, TWINME_BUILD_SERVICE_ACCOUNT, TWINME_BUILD_PUSH_SECRET, "
    "TWINME_BUILD_GIT_SECRET, TWINME_BUILD_GIT_URL and TWINME_BUILD_TIMEOUT_S in place of the "
    "TWINME_KANIKO_* variables (docs/release.md, 'Building in the cluster')"
)


def image_builder() -> ImageBuilderResource:
    """buildah (default) or docker here, or a rootless buildah Job in the cluster
    (TWINME_IMAGE_BUILDER=cluster, TWINME_BUILD_*)."""
    tool = (os.environ.get("TWINME_IMAGE_BUILDER") or "buildah").strip()
    leftover = sorted(var for var in os.environ if var.startswith("TWINME_KANIKO_"))
    if tool == "kaniko" or leftover:
        found = f"TWINME_IMAGE_BUILDER={tool}" if tool == "kaniko" else ", ".join(leftover)
        raise ValueError(f"{found}: {_KANIKO_REMOVED}")
    if tool not in IMAGE_BUILDERS:
        raise ValueError(
            redact(f"TWINME_IMAGE_BUILDER={tool!r} is not one of {', '.join(IMAGE_BUILDERS)}")
        )
    common: dict[str, Any] = {
        "registry": os.environ.get("TWINME_REGISTRY", ""),
        "repository": os.environ.get("TWINME_IMAGE_REPOSITORY") or "twinme-api",
    }
    if tool != "cluster":
        return ImageBuilderResource(tool=tool, **common)
    # names of Secrets, not their values: the kubelet mounts them into the build pod
    cluster: dict[str, Any] = {
        field: os.environ[var] for field, var in _CLUSTER_SETTINGS if os.environ.get(var)
    }
    if os.environ.get("TWINME_BUILD_TIMEOUT_S"):
        try:
            cluster["timeout_s"] = float(os.environ["TWINME_BUILD_TIMEOUT_S"])
        except ValueError:
            raise ValueError(
                redact(
                    f"TWINME_BUILD_TIMEOUT_S={os.environ['TWINME_BUILD_TIMEOUT_S']!r} is not a "
                    "number of seconds"
                )
            ) from None
    # imported here: only where builds run in the cluster (their first build imports the client)
    from twinme_ops.release.images.cluster import ClusterImageBuilder

    return ClusterImageBuilder(**common, **cluster)


APP_TEST_RUNNERS = ("local", "kubernetes")


def make_app_test_runner(env: str, home: str) -> AppTestRunner:
    """Where pushed code is tested: a Job in the build namespace in production, else here,
    isolated (TWINME_APP_TESTS_RUNNER, TWINME_APP_TESTS_ISOLATION)."""
    default = "kubernetes" if env == "production" else "local"
    runner = (os.environ.get("TWINME_APP_TESTS_RUNNER") or default).strip()
    if runner not in APP_TEST_RUNNERS:
        raise ValueError(
            redact(
                f"TWINME_APP_TESTS_RUNNER={runner!r} is not one of {', '.join(APP_TEST_RUNNERS)}"
            )
        )
    if runner == "local":
        # what pushed code must not see even where file modes would let it
        hidden = [home, os.environ.get("DAGSTER_HOME", ""), os.getcwd(), os.path.expanduser("~")]
        hidden += os.environ.get("KUBECONFIG", "").split(os.pathsep)
        isolation = (os.environ.get("TWINME_APP_TESTS_ISOLATION") or "namespaces").strip()
        if isolation not in ISOLATION_MODES:
            raise ValueError(
                redact(
                    f"TWINME_APP_TESTS_ISOLATION={isolation!r} is not one of "
                    f"{', '.join(ISOLATION_MODES)}"
                )
            )
        return LocalAppTestRunner(isolation=isolation, hidden_paths=[p for p in hidden if p])
    settings: dict[str, Any] = {
        field: os.environ[var]
        for field, var in (
            ("namespace", "TWINME_APP_TESTS_NAMESPACE"),
            ("test_image", "TWINME_APP_TESTS_IMAGE"),
            ("postgres_image", "TWINME_APP_TESTS_POSTGRES_IMAGE"),
            ("redis_image", "TWINME_APP_TESTS_REDIS_IMAGE"),
            ("npm_registry", "TWINME_APP_TESTS_NPM_REGISTRY"),
        )
        if os.environ.get(var)
    }
    from twinme_ops.release.app_tests.k8s import KubernetesAppTestRunner

    return KubernetesAppTestRunner(**settings)
