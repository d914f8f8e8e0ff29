"""A Deployment's rollout, judged and waited for the way ``kubectl rollout status`` does.

:func:`rollout_status` judges one observation of a ``V1Deployment`` (pure: no API call);
:func:`watch_rollout` polls until the rollout is done, fails, or runs out of time, and logs its
progress. :class:`~twinme_ops.servers.kube.KubernetesResource` waits for its rollouts with them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from twinme_ops.common.log import Log
from twinme_ops.servers.kube_connection import KubernetesApiError

PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
PAUSED = "the deployment is paused"

# A rollout that changes nothing visible still gets a progress line this often
_HEARTBEAT_S = 30.0

_fallback_log = logging.getLogger("twinme_ops.kube")


class RolloutFailed(RuntimeError):
    """A rollout that failed or did not finish in time; ``status`` is what was last seen."""

    def __init__(self, message: str, status: RolloutStatus | None = None):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class RolloutStatus:
    """One observation of a Deployment's rollout, as ``kubectl rollout status`` judges it.

    ``desired`` is ``spec.replicas``; ``replicas`` is ``status.replicas`` (old and new pods);
    absent status counters are reported as 0, as the API server omits zeros.
    """

    namespace: str
    deployment: str
    generation: int
    observed_generation: int
    desired: int
    replicas: int
    updated_replicas: int
    ready_replicas: int
    available_replicas: int
    done: bool
    message: str
    failure: str | None = None
    progressing_reason: str | None = None
    elapsed_s: float = 0.0

    def summary(self) -> str:
        """The counters in one line, for logs and error messages."""
        return (
            f"generation {self.generation} (observed {self.observed_generation}), "
            f"replicas desired {self.desired} / updated {self.updated_replicas} / "
            f"ready {self.ready_replicas} / available {self.available_replicas} / "
            f"total {self.replicas}"
            + (f", Progressing reason {self.progressing_reason}" if self.progressing_reason else "")
        )

    def to_metadata(self) -> dict[str, Any]:
        """Plain values for Dagster metadata (numbers are plotted by the UI)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def as_int(value: Any, default: int = 0) -> int:
    """A counter of the API (``None`` when the server omitted it) as an int."""
    return default if value is None else int(value)


def rollout_status(deployment: Any, elapsed_s: float = 0.0) -> RolloutStatus:
    """Judge a ``V1Deployment`` as ``kubectl rollout status`` does (pure: no API call).

    Until the controller has observed the latest generation nothing else is trusted, not even a
    ``ProgressDeadlineExceeded`` condition, which may be left over from an earlier rollout.
    Then: the progress deadline fails the rollout; otherwise it is done when every desired replica
    is updated, no old replica is left and every updated replica is available. A paused
    Deployment never progresses, so it fails instead of waiting for the timeout.
    """
    meta = deployment.metadata
    spec = deployment.spec
    status = deployment.status
    namespace = str(meta.namespace or "")
    name = str(meta.name or "")
    generation = as_int(meta.generation)
    observed = as_int(status.observed_generation if status else None)
    # spec.replicas is a pointer defaulted to 1 by the API server
    desired = as_int(spec.replicas if spec else None, default=1)
    replicas = as_int(status.replicas if status else None)
    updated = as_int(status.updated_replicas if status else None)
    ready = as_int(status.ready_replicas if status else None)
    available = as_int(status.available_replicas if status else None)
    progressing = None
    for cond in (status.conditions if status else None) or []:
        if cond.type == "Progressing":
            progressing = cond

    def make(done: bool, message: str, failure: str | None = None) -> RolloutStatus:
        return RolloutStatus(
            namespace=namespace,
            deployment=name,
            generation=generation,
            observed_generation=observed,
            desired=desired,
            replicas=replicas,
            updated_replicas=updated,
            ready_replicas=ready,
            available_replicas=available,
            done=done,
            message=message,
            failure=failure,
            progressing_reason=progressing.reason if progressing is not None else None,
            elapsed_s=round(elapsed_s, 3),
        )

    if generation > observed:
        return make(False, "waiting for the deployment spec update to be observed")
    if progressing is not None and progressing.reason == PROGRESS_DEADLINE_EXCEEDED:
        detail = f": {progressing.message}" if progressing.message else ""
        return make(False, "progress deadline exceeded", f"{PROGRESS_DEADLINE_EXCEEDED}{detail}")
    if updated < desired:
        waiting = f"{updated} of {desired} new replicas have been updated"
    elif replicas > updated:
        waiting = f"{replicas - updated} old replicas are pending termination"
    elif available < updated:
        waiting = f"{available} of {updated} updated replicas are available"
    else:
        return make(True, "successfully rolled out")
    if spec is not None and spec.paused:
        return make(False, f"deployment is paused ({waiting})", PAUSED)
    return make(False, waiting)


def watch_rollout(
    read_deployment: Callable[[], Any],
    *,
    namespace: str,
    deployment: str,
    timeout_s: float,
    poll_interval_s: float,
    log: Log | None = None,
) -> RolloutStatus:
    """Poll ``read_deployment`` until the rollout is complete, as ``kubectl rollout status`` does.

    Raises :class:`RolloutFailed` at once on ``ProgressDeadlineExceeded`` or a paused
    Deployment, and after ``timeout_s`` with what was last seen. Transient API errors (5xx,
    connection) are retried until the timeout.
    """
    logger = _fallback_log if log is None else log
    target = f"deployment {namespace}/{deployment}"
    start = time.monotonic()
    deadline = start + timeout_s
    last: RolloutStatus | None = None
    last_error: KubernetesApiError | None = None
    last_line = ""
    last_log_at = 0.0
    while True:
        now = time.monotonic()
        try:
            status = rollout_status(read_deployment(), elapsed_s=now - start)
        except KubernetesApiError as exc:
            if not exc.transient:
                raise
            last_error = exc
            logger.warning(f"Rollout of {target}: API error, retrying: {exc}")
        else:
            last, last_error = status, None
            if status.failure is not None:
                raise RolloutFailed(
                    f"Rollout of {target} failed after {status.elapsed_s:.1f}s: "
                    f"{status.failure}. Last seen: {status.summary()}. Fix: inspect the new "
                    f"pods (kubectl -n {namespace} get pods; describe; logs) for image "
                    "pull errors, crash loops or failing readiness probes, then roll back "
                    f"(kubectl -n {namespace} rollout undo deployment/{deployment})"
                    " or deploy a fixed image"
                    + (
                        f"; a paused deployment needs `kubectl -n {namespace} rollout "
                        f"resume deployment/{deployment}`."
                        if status.failure == PAUSED
                        else "."
                    ),
                    status,
                )
            line = f"Rollout of {target}: {status.message} [{status.summary()}]"
            if status.done:
                logger.info(f"{line} in {status.elapsed_s:.1f}s")
                return status
            if line != last_line or now - last_log_at >= _HEARTBEAT_S:
                logger.info(line)
                last_line, last_log_at = line, now
        if now >= deadline:
            seen = (
                f"{last.message}; last seen: {last.summary()}"
                if last is not None
                else "no status could be read"
            )
            if last_error is not None:
                seen += f"; last error: {last_error}"
            raise RolloutFailed(
                f"Rollout of {target} did not finish within {timeout_s:g}s: {seen}. Fix: "
                f"inspect the pods (kubectl -n {namespace} get pods; describe; logs) "
                "for pending scheduling, slow readiness probes or crash loops; raise "
                "rollout_timeout_s if the rollout is only slow, or roll back "
                f"(kubectl -n {namespace} rollout undo deployment/{deployment}).",
                last,
            )
        time.sleep(max(0.0, min(poll_interval_s, deadline - time.monotonic())))
