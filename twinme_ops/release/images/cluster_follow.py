"""Following the image build Job of :mod:`twinme_ops.release.images.cluster` until it ends.

:class:`BuildJobFollower` is the part of ``ClusterImageBuilder`` that polls the Job and its pod
(reads retried by dagster-k8s's ``k8s_api_retry``), streams the ``clone`` and ``build``
containers' logs into the run's log (redacted, through :class:`~twinme_ops.release.k8s_job.
LogFollower`), fails fast when the pod cannot be created or started (the Job is then deleted),
stops at the timeout (deleted too), and turns the end into a
:class:`~twinme_ops.release.images.local.
BuiltImage` pinned by the digest of the termination message, or an
:class:`~twinme_ops.release.images.local.ImageBuildError` naming the Job, the reason and the fix.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twinme_ops.common.log import Log
from twinme_ops.common.redact import redact
from twinme_ops.release import k8s_job
from twinme_ops.release.images.cluster_job import (
    BUILD_CONTAINER,
    CLONE_CONTAINER,
    DIGEST_FILE,
    digest_from_termination_message,
    failure_hint,
)
from twinme_ops.release.images.local import BuiltImage, ImageBuildError

if TYPE_CHECKING:
    from kubernetes import client

_TAIL_LINES = 25
_TIMEOUT = k8s_job.REQUEST_TIMEOUT_S
_IMAGE_VARIABLE = {CLONE_CONTAINER: "TWINME_BUILD_GIT_IMAGE", BUILD_CONTAINER: "TWINME_BUILD_IMAGE"}


def _read_failures() -> tuple[type[Exception], ...]:
    """What a read of the Job or its pod raises: the API's error, or dagster-k8s's retries
    giving up."""
    from dagster_k8s.client import DagsterK8sAPIRetryLimitExceeded, DagsterK8sUnrecoverableAPIError
    from kubernetes.client.exceptions import ApiException

    return (ApiException, DagsterK8sAPIRetryLimitExceeded, DagsterK8sUnrecoverableAPIError)


@dataclass
class _Watch:
    """What one build saw of its pod: the last log lines per container, the last observations."""

    tails: dict[str, deque[str]] = field(default_factory=dict)
    pod: Any = None
    job_status: Any = None
    ended: str = ""  # the container whose end ended the build

    def tail(self, container: str) -> str:
        return "\n".join(self.tails.get(container) or ())


class BuildJobFollower:
    """Mixin of ``ClusterImageBuilder``: follows one build Job (see the module docstring)."""

    if TYPE_CHECKING:  # the builder's settings (pydantic fields there)
        namespace: str
        registry: str
        push_secret: str
        git_secret: str
        timeout_s: float
        poll_interval_s: float
        pod_resources: dict[str, dict[str, str]]

        def _api_error(self, exc: Exception, what: str) -> ImageBuildError: ...

    def _retry(self, call: Any) -> Any:
        """One read, retried by dagster-k8s on the API server's transient answers (429, 5xx)."""
        from dagster_k8s.client import k8s_api_retry

        return k8s_api_retry(call, max_retries=3, timeout=self.poll_interval_s)

    def _job_status(self, batch: client.BatchV1Api, name: str) -> Any:
        """The Job's status (empty before the controller writes one), ``None`` once deleted."""
        from dagster_k8s.client import DagsterK8sUnrecoverableAPIError
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            job: Any = self._retry(
                lambda: batch.read_namespaced_job_status(
                    name, self.namespace, _request_timeout=_TIMEOUT
                )
            )
        except DagsterK8sUnrecoverableAPIError as exc:
            inner = exc.k8s_api_exception
            if isinstance(inner, ApiException) and inner.status == 404:
                return None
            raise
        return job.status or client.V1JobStatus()

    def _failed_job_status(self, batch: client.BatchV1Api, name: str, status: Any) -> Any:
        """The Job's status once it carries its ``Failed`` condition (or after 5 s)."""
        until = time.time() + 5.0
        while True:
            conditions = (status.conditions if status is not None else None) or []
            if any(c.type == "Failed" and c.status == "True" for c in conditions):
                return status
            if status is None or time.time() > until:
                return status
            time.sleep(min(self.poll_interval_s, 0.2))
            status = self._job_status(batch, name)

    def _delete(self, batch: client.BatchV1Api, name: str, log: Log) -> None:
        failed = k8s_job.delete_job(batch, self.namespace, name)
        if failed is None:
            log.info(f"deleted the build Job {self.namespace}/{name}")
        else:
            log.info(f"could not delete the build Job {self.namespace}/{name}: HTTP {failed}")

    def _follow(
        self, core: client.CoreV1Api, batch: client.BatchV1Api, name: str, started: float, log: Log
    ) -> _Watch:
        """Poll the Job and its pod until the build (or the clone) ends; stream their logs."""
        watch = _Watch()
        followers: dict[str, k8s_job.LogFollower] = {}
        deadline = started + self.timeout_s

        def drain(wait_s: float = 0.0) -> None:
            until = time.time() + wait_s
            for follower in list(followers.values()):
                tail = watch.tails.setdefault(follower.container, deque(maxlen=_TAIL_LINES))
                while True:
                    try:
                        line = follower.lines.get(timeout=max(0.0, until - time.time()))
                    except queue.Empty:
                        break
                    line = redact(line.rstrip())
                    if line:
                        tail.append(line)
                        log.info(line)

        try:
            while True:
                drain()
                try:
                    watch.job_status = self._job_status(batch, name)
                    watch.pod = self._retry(lambda: k8s_job.job_pod(core, self.namespace, name))
                except _read_failures() as exc:
                    raise self._api_error(exc, f"following the build Job {name}") from None
                statuses = k8s_job.container_statuses(watch.pod)
                for container in (CLONE_CONTAINER, BUILD_CONTAINER):
                    state = statuses[container].state if container in statuses else None
                    live = state is not None and (state.running or state.terminated)
                    if live and container not in followers:
                        followers[container] = k8s_job.LogFollower(
                            core, self.namespace, watch.pod.metadata.name, container
                        )
                        followers[container].start()
                if self._ended(batch, name, statuses, watch):
                    break
                self._fail_fast(core, batch, name, statuses, watch, log)
                if time.time() > deadline:
                    self._delete(batch, name, log)
                    for follower in followers.values():
                        follower.stop(timeout_s=2)
                    drain()
                    raise ImageBuildError(self._timeout_message(name, watch))
                if followers:
                    drain(self.poll_interval_s)  # lines as they come, the API once a poll
                else:
                    time.sleep(self.poll_interval_s)
        finally:
            for container, follower in followers.items():
                follower.stop(timeout_s=10)
                if follower.error:
                    log.info(f"the {container} log could not be followed: {follower.error}")
            drain()
        # the pod as it ended: the termination message is written with the terminated state
        with contextlib.suppress(*_read_failures()):
            watch.pod = k8s_job.job_pod(core, self.namespace, name) or watch.pod
        return watch

    def _ended(self, batch: client.BatchV1Api, name: str, statuses: Any, watch: _Watch) -> bool:
        """Whether the build is over: the build container ended, or the clone failed."""
        for container in (CLONE_CONTAINER, BUILD_CONTAINER):
            state = statuses[container].state if container in statuses else None
            terminated = state.terminated if state is not None else None
            if terminated is None or (container == CLONE_CONTAINER and terminated.exit_code == 0):
                continue
            watch.ended = container
            if terminated.exit_code != 0:
                # the Job controller records why (e.g. DeadlineExceeded) just after the
                # container ends: give it a moment, so the message names the real cause
                watch.job_status = self._failed_job_status(batch, name, watch.job_status)
            return True
        status = watch.job_status
        if status is None:
            raise ImageBuildError(
                f"the build Job {self.namespace}/{name} disappeared while building. Fix: check "
                "who deletes Jobs in that namespace, then re-run release_job"
            )
        return bool(status.succeeded or (status.failed and not status.active))

    def _fail_fast(
        self,
        core: client.CoreV1Api,
        batch: client.BatchV1Api,
        name: str,
        statuses: Any,
        watch: _Watch,
        log: Log,
    ) -> None:
        """Delete the Job and raise when its pod cannot be created or cannot start."""
        job = f"{self.namespace}/{name}"
        if watch.pod is None:
            refused = k8s_job.failed_create(core, self.namespace, name)
            if refused:
                self._delete(batch, name, log)
                raise ImageBuildError(
                    f"the build Job {job} cannot create its pod: {refused}. The Job was deleted. "
                    f"Fix: apply deploy/build/ (namespace {self.namespace}, Pod Security "
                    "'restricted'), check TWINME_BUILD_SERVICE_ACCOUNT and the quotas"
                )
            return
        for container, status in statuses.items():
            waiting = status.state.waiting if status.state is not None else None
            if waiting is None or waiting.reason not in k8s_job.FATAL_WAITING:
                continue
            self._delete(batch, name, log)
            message = redact(waiting.message or "")[:300]
            if waiting.reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
                variable = _IMAGE_VARIABLE.get(container, "TWINME_BUILD_IMAGE")
                fix = (
                    f"check {variable} ({status.image}): a pinned image the nodes can pull, or "
                    "mirror it into a registry they reach"
                )
            else:
                fix = (
                    f"create Secret {self.git_secret or '?'} in namespace {self.namespace}, or "
                    "fix its name (TWINME_BUILD_GIT_SECRET)"
                )
            raise ImageBuildError(
                f"the build pod of Job {job} cannot start container {container}: "
                f"{waiting.reason}{': ' + message if message else ''}. The Job was deleted. "
                f"Fix: {fix}"
            )
        mount = k8s_job.failed_mount(core, self.namespace, watch.pod)
        if mount:
            self._delete(batch, name, log)
            raise ImageBuildError(
                f"the build pod of Job {job} cannot start: {mount}. The Job was deleted. Fix: "
                f"create it in namespace {self.namespace}, or correct its name "
                "(TWINME_BUILD_PUSH_SECRET)"
            )

    def _timeout_message(self, name: str, watch: _Watch) -> str:
        where = "the pod was never created"
        pod = watch.pod
        if pod is not None:
            phase = pod.status.phase if pod.status else "?"
            where = f"pod {pod.metadata.name} was {phase}"
            for cond in (pod.status.conditions if pod.status else None) or []:
                if cond.type == "PodScheduled" and cond.status == "False":
                    where += f" (not scheduled: {redact(cond.message or cond.reason or '')})"
        tail = watch.tail(BUILD_CONTAINER) or watch.tail(CLONE_CONTAINER)
        return (
            f"the build Job {self.namespace}/{name} did not finish within {self.timeout_s:.0f} s; "
            f"{where}. The Job was deleted. Fix: check the cluster's capacity for "
            f"{self.pod_resources.get('requests', {})} in {self.namespace}, or raise "
            "TWINME_BUILD_TIMEOUT_S" + (f"; last log lines:\n{tail}" if tail else "")
        )

    def _result(self, watch: _Watch, name: str, ref: str, started: float, log: Log) -> BuiltImage:
        """The pushed image from the build container's termination message, or why it failed."""
        job = f"{self.namespace}/{name}"
        statuses = k8s_job.container_statuses(watch.pod)
        container = watch.ended or BUILD_CONTAINER
        state = statuses[container].state if container in statuses else None
        terminated = state.terminated if state is not None else None
        tail = watch.tail(container)
        if terminated is not None and terminated.exit_code == 0 and container == BUILD_CONTAINER:
            digest = digest_from_termination_message(terminated.message)
            if digest is None:
                shown = redact(terminated.message or "")[:100]
                raise ImageBuildError(
                    f"the build Job {job} succeeded but left no digest in {DIGEST_FILE} (got "
                    f"{shown!r}), so the pushed image cannot be pinned. Fix: keep "
                    f"buildah push --digestfile {DIGEST_FILE} and the buildah image's shell"
                )
            built = BuiltImage(
                tag_ref=ref,
                digest=digest,
                image_ref=f"{ref.rsplit(':', 1)[0]}@{digest}",
                duration_s=round(time.time() - started, 3),
            )
            log.info(f"build Job {job} pushed {built.image_ref} in {built.duration_s:.1f} s")
            return built
        status = watch.job_status
        conditions = (status.conditions if status is not None else None) or []
        failed = next((c for c in conditions if c.type == "Failed" and c.status == "True"), None)
        if failed is not None and failed.reason == "DeadlineExceeded":
            raise ImageBuildError(
                f"the build Job {job} was stopped by the cluster after activeDeadlineSeconds "
                f"({redact(failed.message or '')}). Fix: raise TWINME_BUILD_TIMEOUT_S"
                + (f"; last log lines:\n{tail}" if tail else "")
            )
        if terminated is not None:
            hint = failure_hint(
                container,
                tail,
                push_secret=self.push_secret,
                git_secret=self.git_secret,
                registry=self.registry,
            )
            raise ImageBuildError(
                f"the build Job {job} failed: container {container} exited "
                f"{terminated.exit_code} ({terminated.reason or 'Error'})"
                + (f"; last log lines:\n{tail}\n" if tail else "; ")
                + f"Fix: {hint}. Whole log: kubectl -n {self.namespace} logs job/{name} "
                f"-c {container}"
            )
        why = f"{failed.reason}: {redact(failed.message or '')}" if failed else "its pod is gone"
        raise ImageBuildError(
            f"the build Job {job} failed ({why}). Fix: kubectl -n {self.namespace} describe "
            f"job {name}"
        )
