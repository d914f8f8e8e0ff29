"""The pushed commit's tests as a Job in the build namespace (production).

:class:`KubernetesAppTestRunner` (``TWINME_APP_TESTS_RUNNER=kubernetes``, the default with
``TWINME_ENV=production``) ships the checkout as ConfigMaps, creates the Job of
:mod:`twinme_ops.release.app_tests.job` (no Secret, no token, restricted, throwaway PostgreSQL and
Redis sidecars), follows it (:mod:`twinme_ops.release.app_tests.k8s_follow`: the ``tests``
container's log into the run's log, failing fast with the fix when the pod cannot get to the
tests), turns its exit code and markers into the same results and
:class:`~twinme_ops.release.app_tests.runner.AppTestsFailed` text as the local runner, and deletes
the Job and the ConfigMaps whatever happened: the whole log is in the run's log already.

The API calls (official client, an ``ApiClient`` of its own) are exactly
:data:`APP_TESTS_RBAC_RULES` in the build namespace. The client is imported when tests run, not
when the code location loads.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from twinme_ops.common.log import Log
from twinme_ops.common.redact import redact
from twinme_ops.release.app_tests.job import (
    APP_LABEL,
    MarkerParser,
    PodSettings,
    archive_sha256,
    job_manifest,
    source_configmaps,
)
from twinme_ops.release.app_tests.runner import (
    AppTestRunner,
    AppTestsFailed,
    AppTestsUnavailable,
    CommandResult,
)

if TYPE_CHECKING:  # the client costs ~0.5 s to import: loaded when tests run, not at load
    from kubernetes import client

# Pinned: a floating tag would change what tests run on under a release. The Node image is the
# one deploy/dagster/Dockerfile takes Node from; pin digests through the TWINME_APP_TESTS_*_IMAGE
# variables where the registry is mirrored.
TEST_IMAGE = "node:20.19.5-bookworm-slim"
POSTGRES_IMAGE = "pgvector/pgvector:0.8.2-pg18-bookworm"
REDIS_IMAGE = "redis:7.4.6-alpine"
MAX_SOURCE_BYTES = 20 * 1024 * 1024

# What the code calls in the build namespace (deploy/dagster/rbac.yaml's twinme-build Role
# grants it, with the image builder's calls): no Secret is ever read or created.
APP_TESTS_RBAC_RULES: list[dict[str, list[str]]] = [
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "delete"]},
    {"apiGroups": ["batch"], "resources": ["jobs/status"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "delete"]},
]


def git_archive(checkout: Path) -> bytes:
    """``git archive --format=tar.gz HEAD`` of the checkout (files of the commit, no .git)."""
    proc = subprocess.run(
        ["git", "-C", str(checkout), "archive", "--format=tar.gz", "HEAD"],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/"},
        timeout=300,
    )
    if proc.returncode != 0:
        raise AppTestsUnavailable(
            redact(f"git archive of {checkout} failed: {proc.stderr.decode(errors='replace')}")
        )
    return proc.stdout


class KubernetesAppTestRunner(AppTestRunner):
    """Runs the app's commands in a Job of the build namespace (see the module docstring)."""

    namespace: str = Field(
        default="twinme-build", description="Namespace of the Jobs (TWINME_APP_TESTS_NAMESPACE)."
    )
    test_image: str = Field(
        default=TEST_IMAGE, description="Node image of the tests (TWINME_APP_TESTS_IMAGE)."
    )
    postgres_image: str = Field(
        default=POSTGRES_IMAGE,
        description="PostgreSQL + pgvector sidecar image (TWINME_APP_TESTS_POSTGRES_IMAGE).",
    )
    redis_image: str = Field(
        default=REDIS_IMAGE, description="Redis sidecar image (TWINME_APP_TESTS_REDIS_IMAGE)."
    )
    service_account: str = Field(
        default="twinme-app-tests",
        description="ServiceAccount of the pod (deploy/build/), which has no role; its token is "
        "never mounted. Empty: the namespace's default.",
    )
    npm_registry: str = Field(
        default="", description="npm registry URL, without credentials. Empty: npm's default."
    )
    kubeconfig: str = Field(
        default="", description="kubeconfig path. Empty: $KUBECONFIG, else the pod's account."
    )
    pod_resources: dict[str, dict[str, str]] = Field(
        default={"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        description="Resources of the tests container.",
    )
    poll_interval_s: float = Field(default=1.0, gt=0, description="Delay between two polls.")
    start_timeout_s: float = Field(
        default=600, gt=0, description="How long the pod may take to start its tests."
    )

    def _api_client(self) -> client.ApiClient:
        from twinme_ops.release.k8s_job import load_api_client

        return load_api_client(
            self.kubeconfig,
            lambda why: AppTestsUnavailable(
                f"cannot reach the cluster for the app tests through {why}. Fix: set "
                "KUBECONFIG, run in the cluster, or TWINME_APP_TESTS_RUNNER=local"
            ),
        )

    def run(
        self,
        checkout: Path,
        *,
        sha: str,
        commands: Sequence[str],
        log: Log,
        timeout_s: float = 900,
        run_id: str = "",
    ) -> list[CommandResult]:
        archive = git_archive(Path(checkout))
        if len(archive) > MAX_SOURCE_BYTES:
            raise AppTestsUnavailable(
                f"the source of {sha[:12]} is {len(archive) / 2**20:.1f} MiB compressed, more "
                f"than the {MAX_SOURCE_BYTES // 2**20} MiB shipped to the cluster. Fix: mark "
                "large files export-ignore in .gitattributes"
            )
        # the Kubernetes client is imported here, when tests run, not when the code location loads
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        from twinme_ops.release.app_tests.k8s_follow import AppTestsJobFollower, api_error
        from twinme_ops.release.k8s_job import REQUEST_TIMEOUT_S

        api = self._api_client()
        batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
        name = f"twinme-app-tests-{sha[:12]}-{secrets.token_hex(3)}"
        maps = source_configmaps(name, archive)
        settings = PodSettings(
            self.test_image,
            self.postgres_image,
            self.redis_image,
            self.pod_resources,
            self.service_account,
            self.npm_registry,
        )
        job = job_manifest(
            name,
            sha=sha,
            commands=commands,
            configmaps=[m["metadata"]["name"] for m in maps],
            source_sha256=archive_sha256(archive),
            password=secrets.token_hex(16),
            settings=settings,
            timeout_s=timeout_s,
            labels={"dagster/run-id": run_id} if run_id else {},
        )
        created: list[str] = []
        job_created = False
        try:
            for body in maps:
                try:
                    core.create_namespaced_config_map(
                        self.namespace, body, _request_timeout=REQUEST_TIMEOUT_S
                    )
                except ApiException as exc:
                    what = "creating the source ConfigMaps"
                    raise api_error(exc, what, self.namespace) from None
                created.append(body["metadata"]["name"])
            try:
                batch.create_namespaced_job(self.namespace, job, _request_timeout=REQUEST_TIMEOUT_S)
            except ApiException as exc:
                what = f"creating Job {self.namespace}/{name}"
                raise api_error(exc, what, self.namespace) from None
            job_created = True
            log.info(
                f"app tests of {sha[:12]} in Job {self.namespace}/{name} ({self.test_image}, "
                f"{len(archive) // 1024} KiB of source in {len(maps)} ConfigMap(s)): "
                + ", ".join(commands)
            )
            parser = MarkerParser(commands)
            follower = AppTestsJobFollower(
                core, batch, self.namespace, name, self.poll_interval_s, self.start_timeout_s
            )
            exit_code, reason = follower.follow(parser, log, timeout_s, commands)
        finally:
            self._cleanup(core, batch, name if job_created else "", created, log)
        results, failed = parser.outcome(exit_code, reason)
        if failed >= 0:
            raise AppTestsFailed(results[failed], results)
        return results

    def _cleanup(
        self,
        core: client.CoreV1Api,
        batch: client.BatchV1Api,
        job: str,
        configmaps: Sequence[str],
        log: Log,
    ) -> None:
        """Delete the Job (its pod with it) and the source ConfigMaps, best effort."""
        from kubernetes.client.exceptions import ApiException

        from twinme_ops.release.k8s_job import REQUEST_TIMEOUT_S

        gone: list[str] = []
        if job:
            try:
                batch.delete_namespaced_job(
                    job,
                    self.namespace,
                    propagation_policy="Background",
                    _request_timeout=REQUEST_TIMEOUT_S,
                )
                gone.append(f"Job {job}")
            except ApiException as exc:
                log.info(f"could not delete Job {self.namespace}/{job}: HTTP {exc.status}")
        for name in configmaps:
            try:
                core.delete_namespaced_config_map(
                    name, self.namespace, _request_timeout=REQUEST_TIMEOUT_S
                )
            except ApiException as exc:
                log.info(f"could not delete ConfigMap {self.namespace}/{name}: HTTP {exc.status}")
        if gone:
            log.info(f"deleted {', '.join(gone)} and its {len(configmaps)} source ConfigMap(s)")


__all__ = ["APP_LABEL", "APP_TESTS_RBAC_RULES", "KubernetesAppTestRunner", "git_archive"]
