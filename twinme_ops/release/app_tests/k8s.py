"""The pushed commit's tests as a Job in the build namespace (production).

:class:`KubernetesAppTestRunner` (``TWINME_APP_TESTS_RUNNER=kubernetes``, the default with
``TWINME_ENV=production``) ships the checkout as ConfigMaps, creates the Job of
:mod:`twinme_ops.release.app_tests.job` (no Secret, no token, restricted, throwaway PostgreSQL and
Redis sidecars), follows the ``tests`` container's log into the run's log (redacted, one message
per poll at most), turns its exit code and markers into the same results and
:class:`~twinme_ops.release.app_tests.runner.AppTestsFailed` text as the local runner, and deletes
the Job
and the ConfigMaps whatever happened: the whole log is in the run's log already.

It fails fast, with :class:`~twinme_ops.release.app_tests.runner.AppTestsUnavailable` naming the
fix, when
the pod cannot be created (``FailedCreate``: Pod Security admission, a missing ServiceAccount,
a quota), when an image cannot be pulled, when a sidecar keeps crashing before the tests start,
or when the source cannot be unpacked. The API calls (official client, an ``ApiClient`` of its
own) are exactly :data:`APP_TESTS_RBAC_RULES` in the build namespace.
"""

from __future__ import annotations

import queue
import secrets
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pydantic import Field

from twinme_ops.common.log import Log
from twinme_ops.common.redact import redact
from twinme_ops.release.app_tests.job import (
    APP_LABEL,
    POSTGRES_CONTAINER,
    REDIS_CONTAINER,
    SOURCE_CONTAINER,
    TESTS_CONTAINER,
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
from twinme_ops.release.k8s_job import (
    FATAL_WAITING,
    REQUEST_TIMEOUT_S,
    LogFollower,
    api_error_detail,
    container_statuses,
    load_api_client,
    warning_events,
)

# Pinned: a floating tag would change what tests run on under a release. The Node image is the
# one deploy/dagster/Dockerfile takes Node from; pin digests through the TWINME_APP_TESTS_*_IMAGE
# variables where the registry is mirrored.
TEST_IMAGE = "node:20.19.5-bookworm-slim"
POSTGRES_IMAGE = "pgvector/pgvector:0.8.2-pg18-bookworm"
REDIS_IMAGE = "redis:7.4.6-alpine"
MAX_SOURCE_BYTES = 20 * 1024 * 1024
_REQUEST_TIMEOUT_S = REQUEST_TIMEOUT_S
_IMAGE_VARIABLE = {
    SOURCE_CONTAINER: "TWINME_APP_TESTS_IMAGE",
    TESTS_CONTAINER: "TWINME_APP_TESTS_IMAGE",
    POSTGRES_CONTAINER: "TWINME_APP_TESTS_POSTGRES_IMAGE",
    REDIS_CONTAINER: "TWINME_APP_TESTS_REDIS_IMAGE",
}

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
        return load_api_client(
            self.kubeconfig,
            lambda why: AppTestsUnavailable(
                f"cannot reach the cluster for the app tests through {why}. Fix: set "
                "KUBECONFIG, run in the cluster, or TWINME_APP_TESTS_RUNNER=local"
            ),
        )

    def _api_error(self, exc: ApiException, what: str) -> AppTestsUnavailable:
        detail = api_error_detail(exc)
        fix = {
            403: "grant the run's ServiceAccount APP_TESTS_RBAC_RULES in namespace "
            f"{self.namespace} (deploy/dagster/rbac.yaml)",
            404: f"apply deploy/build/ (namespace {self.namespace})",
        }.get(exc.status or 0, "check the cluster and retry")
        return AppTestsUnavailable(
            redact(f"{what} failed: HTTP {exc.status} {exc.reason or ''}: {detail}. Fix: {fix}")
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
                        self.namespace, body, _request_timeout=_REQUEST_TIMEOUT_S
                    )
                except ApiException as exc:
                    raise self._api_error(exc, "creating the source ConfigMaps") from None
                created.append(body["metadata"]["name"])
            try:
                batch.create_namespaced_job(
                    self.namespace, job, _request_timeout=_REQUEST_TIMEOUT_S
                )
            except ApiException as exc:
                raise self._api_error(exc, f"creating Job {self.namespace}/{name}") from None
            job_created = True
            log.info(
                f"app tests of {sha[:12]} in Job {self.namespace}/{name} ({self.test_image}, "
                f"{len(archive) // 1024} KiB of source in {len(maps)} ConfigMap(s)): "
                + ", ".join(commands)
            )
            parser = MarkerParser(commands)
            exit_code, reason = self._follow(core, batch, name, parser, log, timeout_s, commands)
        finally:
            self._cleanup(core, batch, name if job_created else "", created, log)
        results, failed = parser.outcome(exit_code, reason)
        if failed >= 0:
            raise AppTestsFailed(results[failed], results)
        return results

    def _follow(
        self,
        core: client.CoreV1Api,
        batch: client.BatchV1Api,
        name: str,
        parser: MarkerParser,
        log: Log,
        timeout_s: float,
        commands: Sequence[str],
    ) -> tuple[int | None, str]:
        """Poll the Job and its pod until the tests container ends: (exit code, why if not)."""
        started = time.monotonic()
        deadline = started + self.start_timeout_s + timeout_s * max(len(commands), 1)
        follower: LogFollower | None = None
        pending: list[str] = []

        def drain(wait_s: float) -> None:
            until = time.monotonic() + wait_s
            while follower is not None:
                try:
                    line = follower.lines.get(timeout=max(0.0, until - time.monotonic()))
                except queue.Empty:
                    break
                line = redact(line.rstrip("\r\n"))
                if not parser.feed(line):
                    pending.append(line)
            if pending:
                log.info("\n".join(pending))  # one event per poll, not one per line
                pending.clear()

        try:
            while True:
                pod, job_status = self._observe(core, batch, name)
                states = container_statuses(pod)
                self._fail_fast(core, name, pod, states, follower is None)
                tests = states.get(TESTS_CONTAINER)
                state = tests.state if tests is not None else None
                if follower is None and state is not None and (state.running or state.terminated):
                    follower = LogFollower(core, self.namespace, pod.metadata.name, TESTS_CONTAINER)
                    follower.start()
                if state is not None and state.terminated is not None:
                    break
                if job_status is not None and job_status.failed:
                    cond = next(
                        (c for c in job_status.conditions or [] if c.type == "Failed"), None
                    )
                    why = f"{cond.reason}: {cond.message}" if cond else "the Job failed"
                    return None, redact(f"Job {self.namespace}/{name} ended: {why}")
                if time.monotonic() > deadline:
                    return None, f"timed out: the Job ran longer than {deadline - started:.0f} s"
                if follower is None and time.monotonic() > started + self.start_timeout_s:
                    raise AppTestsUnavailable(self._not_started(name, pod))
                if follower is not None:
                    drain(self.poll_interval_s)  # lines as they come, the API once a poll
                else:
                    time.sleep(self.poll_interval_s)
        finally:
            if follower is not None:
                follower.stop(10)
                drain(0)
                if follower.error:
                    log.info(f"the tests' log could not be followed: {follower.error}")
        return int(state.terminated.exit_code), redact(state.terminated.message or "")

    def _observe(self, core: client.CoreV1Api, batch: client.BatchV1Api, name: str) -> Any:
        try:
            job: Any = batch.read_namespaced_job_status(
                name, self.namespace, _request_timeout=_REQUEST_TIMEOUT_S
            )
            pods: Any = core.list_namespaced_pod(
                self.namespace,
                label_selector=f"job-name={name}",
                _request_timeout=_REQUEST_TIMEOUT_S,
            )
        except ApiException as exc:
            raise self._api_error(exc, f"following Job {self.namespace}/{name}") from None
        mine = [p for p in pods.items if (p.metadata.labels or {}).get("job-name") == name]
        return (mine[-1] if mine else None), job.status

    def _fail_fast(
        self, core: client.CoreV1Api, name: str, pod: Any, states: dict[str, Any], starting: bool
    ) -> None:
        """Raise when the pod cannot get to the tests: no pod, no image, no source, no sidecar."""
        where = f"Job {self.namespace}/{name}"
        if pod is None:
            for event in self._events(core, name):
                if event.reason == "FailedCreate":
                    raise AppTestsUnavailable(
                        redact(
                            f"{where} cannot create its pod: {event.message}. Fix: apply "
                            f"deploy/build/ (namespace labels, ServiceAccount) or adjust quotas"
                        )
                    )
            return
        for container, status in states.items():
            waiting = status.state.waiting if status.state is not None else None
            if waiting is not None and waiting.reason in FATAL_WAITING:
                raise AppTestsUnavailable(
                    redact(
                        f"{where}: container {container} cannot start: {waiting.reason}: "
                        f"{waiting.message or ''}. Fix: a pinned image the nodes can pull in "
                        f"{_IMAGE_VARIABLE.get(container, 'the runner config')}"
                    )
                )
            if not starting:
                continue
            terminated = status.state.terminated if status.state is not None else None
            crashed = (terminated is not None and terminated.exit_code != 0) or (
                waiting is not None and waiting.reason == "CrashLoopBackOff"
            )
            if crashed and container != TESTS_CONTAINER:
                raise AppTestsUnavailable(
                    f"{where}: container {container} failed before the tests started"
                    f"{self._container_tail(core, pod, container)}"
                )

    def _container_tail(self, core: client.CoreV1Api, pod: Any, container: str) -> str:
        try:
            text: Any = core.read_namespaced_pod_log(
                pod.metadata.name,
                self.namespace,
                container=container,
                tail_lines=20,
                _request_timeout=_REQUEST_TIMEOUT_S,
            )
        except ApiException:
            return ""
        return ":\n" + redact(str(text).rstrip()) if text else ""

    def _events(self, core: client.CoreV1Api, name: str) -> list[Any]:
        return warning_events(core, self.namespace, name)  # [] if unreadable: a diagnosis aid

    def _not_started(self, name: str, pod: Any) -> str:
        where = "no pod was created"
        if pod is not None:
            where = f"pod {pod.metadata.name} is {pod.status.phase if pod.status else '?'}"
            for cond in (pod.status.conditions if pod.status else None) or []:
                if cond.type == "PodScheduled" and cond.status == "False":
                    where += f" (not scheduled: {cond.message or cond.reason})"
        return redact(
            f"the app tests of Job {self.namespace}/{name} did not start within "
            f"{self.start_timeout_s:.0f} s: {where}. Fix: kubectl -n {self.namespace} describe "
            f"job {name}; check capacity, images and deploy/build/"
        )

    def _cleanup(
        self,
        core: client.CoreV1Api,
        batch: client.BatchV1Api,
        job: str,
        configmaps: Sequence[str],
        log: Log,
    ) -> None:
        """Delete the Job (its pod with it) and the source ConfigMaps, best effort."""
        gone: list[str] = []
        if job:
            try:
                batch.delete_namespaced_job(
                    job,
                    self.namespace,
                    propagation_policy="Background",
                    _request_timeout=_REQUEST_TIMEOUT_S,
                )
                gone.append(f"Job {job}")
            except ApiException as exc:
                log.info(f"could not delete Job {self.namespace}/{job}: HTTP {exc.status}")
        for name in configmaps:
            try:
                core.delete_namespaced_config_map(
                    name, self.namespace, _request_timeout=_REQUEST_TIMEOUT_S
                )
            except ApiException as exc:
                log.info(f"could not delete ConfigMap {self.namespace}/{name}: HTTP {exc.status}")
        if gone:
            log.info(f"deleted {', '.join(gone)} and its {len(configmaps)} source ConfigMap(s)")


__all__ = ["APP_LABEL", "APP_TESTS_RBAC_RULES", "KubernetesAppTestRunner", "git_archive"]
