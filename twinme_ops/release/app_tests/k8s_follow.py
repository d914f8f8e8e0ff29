"""Following the app tests' Job of :mod:`twinme_ops.release.app_tests.k8s` until its tests end.

:class:`AppTestsJobFollower` polls the Job and its pod, streams the ``tests`` container's log into
the run's log (redacted, one message per poll at most, through
:class:`~twinme_ops.release.k8s_job.LogFollower`), and fails fast, with
:class:`~twinme_ops.release.app_tests.runner.AppTestsUnavailable` naming the fix, when the pod
cannot be created (``FailedCreate``: Pod Security admission, a missing ServiceAccount, a quota),
when an image cannot be pulled, when a sidecar keeps crashing before the tests start, or when the
tests do not start in time. Imported when app tests run, not when the code location loads (the
Kubernetes client costs about 0.5 s).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from twinme_ops.common.log import Log
from twinme_ops.common.redact import redact
from twinme_ops.release.app_tests.job import (
    POSTGRES_CONTAINER,
    REDIS_CONTAINER,
    SOURCE_CONTAINER,
    TESTS_CONTAINER,
    MarkerParser,
)
from twinme_ops.release.app_tests.runner import AppTestsUnavailable
from twinme_ops.release.k8s_job import (
    FATAL_WAITING,
    REQUEST_TIMEOUT_S,
    LogFollower,
    api_error_detail,
    container_statuses,
    warning_events,
)

_IMAGE_VARIABLE = {
    SOURCE_CONTAINER: "TWINME_APP_TESTS_IMAGE",
    TESTS_CONTAINER: "TWINME_APP_TESTS_IMAGE",
    POSTGRES_CONTAINER: "TWINME_APP_TESTS_POSTGRES_IMAGE",
    REDIS_CONTAINER: "TWINME_APP_TESTS_REDIS_IMAGE",
}


def api_error(exc: ApiException, what: str, namespace: str) -> AppTestsUnavailable:
    """A failed API call in the build namespace, with the fix."""
    detail = api_error_detail(exc)
    fix = {
        403: "grant the run's ServiceAccount APP_TESTS_RBAC_RULES in namespace "
        f"{namespace} (deploy/dagster/rbac.yaml)",
        404: f"apply deploy/build/ (namespace {namespace})",
    }.get(exc.status or 0, "check the cluster and retry")
    return AppTestsUnavailable(
        redact(f"{what} failed: HTTP {exc.status} {exc.reason or ''}: {detail}. Fix: {fix}")
    )


@dataclass
class AppTestsJobFollower:
    """Polls Job ``name`` of ``namespace`` and its pod until the tests container ends."""

    core: client.CoreV1Api
    batch: client.BatchV1Api
    namespace: str
    name: str
    poll_interval_s: float
    start_timeout_s: float

    def follow(
        self, parser: MarkerParser, log: Log, timeout_s: float, commands: Sequence[str]
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
                pod, job_status = self._observe()
                states = container_statuses(pod)
                self._fail_fast(pod, states, follower is None)
                tests = states.get(TESTS_CONTAINER)
                state = tests.state if tests is not None else None
                if follower is None and state is not None and (state.running or state.terminated):
                    follower = LogFollower(
                        self.core, self.namespace, pod.metadata.name, TESTS_CONTAINER
                    )
                    follower.start()
                if state is not None and state.terminated is not None:
                    break
                if job_status is not None and job_status.failed:
                    cond = next(
                        (c for c in job_status.conditions or [] if c.type == "Failed"), None
                    )
                    why = f"{cond.reason}: {cond.message}" if cond else "the Job failed"
                    return None, redact(f"Job {self.namespace}/{self.name} ended: {why}")
                if time.monotonic() > deadline:
                    return None, f"timed out: the Job ran longer than {deadline - started:.0f} s"
                if follower is None and time.monotonic() > started + self.start_timeout_s:
                    raise AppTestsUnavailable(self._not_started(pod))
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

    def _observe(self) -> Any:
        try:
            job: Any = self.batch.read_namespaced_job_status(
                self.name, self.namespace, _request_timeout=REQUEST_TIMEOUT_S
            )
            pods: Any = self.core.list_namespaced_pod(
                self.namespace,
                label_selector=f"job-name={self.name}",
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except ApiException as exc:
            raise api_error(
                exc, f"following Job {self.namespace}/{self.name}", self.namespace
            ) from None
        mine = [p for p in pods.items if (p.metadata.labels or {}).get("job-name") == self.name]
        return (mine[-1] if mine else None), job.status

    def _fail_fast(self, pod: Any, states: dict[str, Any], starting: bool) -> None:
        """Raise when the pod cannot get to the tests: no pod, no image, no source, no sidecar."""
        where = f"Job {self.namespace}/{self.name}"
        if pod is None:
            for event in warning_events(self.core, self.namespace, self.name):
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
                    f"{self._container_tail(pod, container)}"
                )

    def _container_tail(self, pod: Any, container: str) -> str:
        try:
            text: Any = self.core.read_namespaced_pod_log(
                pod.metadata.name,
                self.namespace,
                container=container,
                tail_lines=20,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except ApiException:
            return ""
        return ":\n" + redact(str(text).rstrip()) if text else ""

    def _not_started(self, pod: Any) -> str:
        where = "no pod was created"
        if pod is not None:
            where = f"pod {pod.metadata.name} is {pod.status.phase if pod.status else '?'}"
            for cond in (pod.status.conditions if pod.status else None) or []:
                if cond.type == "PodScheduled" and cond.status == "False":
                    where += f" (not scheduled: {cond.message or cond.reason})"
        return redact(
            f"the app tests of Job {self.namespace}/{self.name} did not start within "
            f"{self.start_timeout_s:.0f} s: {where}. Fix: kubectl -n {self.namespace} describe "
            f"job {self.name}; check capacity, images and deploy/build/"
        )
