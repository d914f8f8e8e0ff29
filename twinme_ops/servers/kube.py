"""The TwinMe API Deployment through the official ``kubernetes`` client.

:class:`KubernetesResource` reads and changes one Deployment (``twinme-prod/twinme-api`` by
default): its replica count, its container image with a ``kubernetes.io/change-cause``
annotation, and waits for a rollout the way ``kubectl rollout status`` does.

Writes use explicit patch content types, never the client's default choice, and never a strategic
merge patch: the replica count goes as a JSON merge patch on the Deployment, the image as a JSON
patch that first *tests* the container's name at the index it replaces. A merge patch of the
image would have to resend the whole ``containers`` list read through the client's models, and
fields a newer cluster knows but this client version does not would be dropped on the way.

The cluster comes from the resource's ``kubeconfig`` path, else ``KUBECONFIG``, else the pod's
service account (in-cluster config). ``~/.kube/config`` is deliberately not a fallback: an
operation on production must never pick up whatever cluster a developer last used.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import dagster as dg
import urllib3.exceptions
from pydantic import Field, PrivateAttr

from twinme_ops.common.redact import redact, redact_url

if TYPE_CHECKING:  # the client costs ~0.5 s to import: loaded on the first call, not at load
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

CHANGE_CAUSE_ANNOTATION = "kubernetes.io/change-cause"
# what set_image replaced: where a rollback by hand goes back to
PREVIOUS_IMAGE_ANNOTATION = "twinme.ai/previous-image"
PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
PAUSED = "the deployment is paused"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

# One API call may not hang a run: (connect, read) seconds
_REQUEST_TIMEOUT_S = (10.0, 30.0)
# A rollout that changes nothing visible still gets a progress line this often
_HEARTBEAT_S = 30.0

_fallback_log = logging.getLogger("twinme_ops.kube")

_T = TypeVar("_T")
Log = logging.Logger | dg.DagsterLogManager


class KubernetesNotConfiguredError(RuntimeError):
    """No usable cluster configuration: no kubeconfig, not in a pod, or the resource disabled."""


class KubernetesApiError(RuntimeError):
    """An API call failed; the message names the deployment, the HTTP status and the fix.

    ``transient`` is true for errors worth retrying while polling (5xx, 429, connection errors).
    """

    def __init__(self, message: str, *, status: int | None = None, transient: bool = False):
        super().__init__(message)
        self.status = status
        self.transient = transient


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


def _int(value: Any, default: int = 0) -> int:
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
    generation = _int(meta.generation)
    observed = _int(status.observed_generation if status else None)
    # spec.replicas is a pointer defaulted to 1 by the API server
    desired = _int(spec.replicas if spec else None, default=1)
    replicas = _int(status.replicas if status else None)
    updated = _int(status.updated_replicas if status else None)
    ready = _int(status.ready_replicas if status else None)
    available = _int(status.available_replicas if status else None)
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


def _api_error_message(exc: ApiException) -> str:
    """``reason: message`` from the Status body, without the headers ``str(exc)`` dumps."""
    detail = ""
    try:
        body = json.loads(exc.body) if exc.body else {}
        if isinstance(body, dict):
            detail = str(body.get("message") or "")
    except (TypeError, ValueError):
        detail = str(exc.body)[:200]
    text = f"HTTP {exc.status} {exc.reason or ''}".strip()
    return redact(f"{text}: {detail}" if detail else text)


class KubernetesResource(dg.ConfigurableResource):
    """The TwinMe API Deployment on Kubernetes (``KUBECONFIG``, ``TWINME_K8S_NAMESPACE``)."""

    namespace: str = Field(default="twinme-prod", description="Namespace of the API Deployment.")
    deployment: str = Field(default="twinme-api", description="Name of the API Deployment.")
    kubeconfig: str = Field(
        default="",
        description="kubeconfig path. Empty: $KUBECONFIG, else the pod's service account.",
    )
    enabled: bool = Field(
        default=True,
        description="False where no cluster exists (local environment): every call then refuses.",
    )
    rollout_timeout_s: float = Field(
        default=600, description="How long wait_for_rollout waits before failing."
    )
    poll_interval_s: float = Field(
        default=0.25,
        description="Delay between two rollout polls: the end of a rollout is seen at most this "
        "late (kubectl, which watches, sees it at once). A poll is one GET of the Deployment.",
    )

    _api: Any = PrivateAttr(default=None)  # kubernetes.client.AppsV1Api, made on first use
    _source: str = PrivateAttr(default="")

    # -- configuration -----------------------------------------------------------------------

    def _kubeconfig_path(self) -> tuple[str, str]:
        """The kubeconfig path to use and where it came from ('' when none is configured)."""
        if self.kubeconfig:
            return self.kubeconfig, "the resource's kubeconfig"
        env = os.environ.get("KUBECONFIG", "")
        return env, "KUBECONFIG"

    def _load_configuration(self) -> tuple[client.Configuration, str]:
        """A client configuration (no network) and a description of its source."""
        from kubernetes import client, config

        target = f"deployment {self.namespace}/{self.deployment}"
        if not self.enabled:
            raise KubernetesNotConfiguredError(
                f"Kubernetes is disabled for {target} (enabled=false, the local environment). "
                "Fix: run with TWINME_ENV=production and KUBECONFIG set, or enable the resource."
            )
        cfg = client.Configuration()
        path, origin = self._kubeconfig_path()
        if path:
            try:
                # persist_config=False: never rewrite the operator's kubeconfig file
                config.load_kube_config(
                    config_file=path, client_configuration=cfg, persist_config=False
                )
            except Exception as exc:
                files = [p for p in path.split(os.pathsep) if p]
                if not any(os.path.exists(os.path.expanduser(p)) for p in files):
                    problem = "does not exist"
                else:
                    problem = f"is unusable ({type(exc).__name__}: {redact(exc)[:300].rstrip('.')})"
                raise KubernetesNotConfiguredError(
                    f"The kubeconfig {path} (from {origin}) for {target} {problem}. Fix: point "
                    "KUBECONFIG (or the resource's kubeconfig) at a readable kubeconfig whose "
                    "current context reaches the cluster."
                ) from None
            return cfg, f"kubeconfig {path}"
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            raise KubernetesNotConfiguredError(
                f"No Kubernetes cluster is configured for {target}: KUBECONFIG is not set, the "
                "resource's kubeconfig is empty, and this process is not in a pod (no "
                "KUBERNETES_SERVICE_HOST and service-account token). Fix: export "
                "KUBECONFIG=/path/to/kubeconfig (or set the resource's kubeconfig), or run in "
                "the cluster with a service account allowed to get and patch deployments in "
                f"{self.namespace}; locally, use TWINME_ENV=local (enabled=false)."
            ) from None
        return cfg, "in-cluster service account"

    def is_configured(self) -> bool:
        """Whether a cluster configuration can be loaded (reads files only, no API call)."""
        try:
            self._load_configuration()
        except KubernetesNotConfiguredError:
            return False
        return True

    def get_client(self) -> client.AppsV1Api:
        """An ``AppsV1Api`` on its own ``ApiClient`` (the global default config is untouched)."""
        from kubernetes import client

        if self._api is None:
            cfg, source = self._load_configuration()
            self._api = client.AppsV1Api(client.ApiClient(cfg))
            self._source = f"{redact_url(str(cfg.host))} ({source})"
        return self._api

    def describe(self) -> str:
        """``deployment ns/name on <server> (<config source>)`` for logs; never a credential."""
        target = f"deployment {self.namespace}/{self.deployment}"
        if not self.enabled:
            return f"{target} (Kubernetes disabled)"
        if not self._source:
            try:
                self.get_client()
            except KubernetesNotConfiguredError:
                return f"{target} (no cluster configured)"
        return f"{target} on {self._source}"

    # -- API calls -----------------------------------------------------------------------------

    def _call(self, verb: str, fn: Callable[[client.AppsV1Api], _T]) -> _T:
        """Run one API call; failures become :class:`KubernetesApiError` with the fix."""
        from kubernetes.client.exceptions import ApiException

        api = self.get_client()
        target = f"deployment {self.namespace}/{self.deployment}"
        try:
            return fn(api)
        except ApiException as exc:
            status = int(exc.status or 0)
            hint = {
                401: "the credentials were refused: renew the token or kubeconfig",
                403: (
                    "the identity may not do this: grant get/patch on deployments in "
                    f"namespace {self.namespace} (Role + RoleBinding)"
                ),
                404: (
                    f"no such deployment: check TWINME_K8S_NAMESPACE ({self.namespace}) and the "
                    f"deployment name ({self.deployment})"
                ),
                409: "the deployment changed concurrently: retry",
                422: "the API server rejected the change as invalid",
            }.get(status, "check the API server and retry")
            raise KubernetesApiError(
                f"{verb} {target} failed: {_api_error_message(exc)}. Fix: {hint}.",
                status=status,
                transient=status == 429 or status >= 500,
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubernetesApiError(
                f"{verb} {target} failed: cannot reach the API server at {self.describe()}: "
                f"{type(exc).__name__}: {redact(exc)[:300]}. Fix: check the network path and "
                "the server address in the kubeconfig.",
                transient=True,
            ) from None

    def read_deployment(self) -> Any:
        """The Deployment as a ``V1Deployment``."""
        return self._call(
            "reading",
            lambda api: api.read_namespaced_deployment(
                self.deployment, self.namespace, _request_timeout=_REQUEST_TIMEOUT_S
            ),
        )

    def replicas(self) -> int:
        """``spec.replicas`` (1 when unset, the API server's default)."""
        return _int(self.read_deployment().spec.replicas, default=1)

    def scale(self, replicas: int) -> None:
        """Set ``spec.replicas`` with a JSON merge patch; returns before pods follow."""
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, not {replicas}")
        self._call(
            f"scaling to {replicas}",
            lambda api: api.patch_namespaced_deployment(
                self.deployment,
                self.namespace,
                {"spec": {"replicas": replicas}},
                _content_type=MERGE_PATCH,
                _request_timeout=_REQUEST_TIMEOUT_S,
            ),
        )

    def _containers(self, deployment: Any) -> list[Any]:
        return list(deployment.spec.template.spec.containers or [])

    def current_image(self, container: str | None = None) -> str:
        """The image of ``container`` (default: the pod template's first container)."""
        containers = self._containers(self.read_deployment())
        index = self._container_index(containers, container)
        return str(containers[index].image or "")

    def _container_index(self, containers: list[Any], container: str | None) -> int:
        names = [c.name for c in containers]
        if container is None and names:
            return 0
        if container in names:
            return names.index(container)
        raise ValueError(
            f"deployment {self.namespace}/{self.deployment} has no container {container!r}; "
            f"its containers are {names}"
        )

    def previous_image(self) -> str:
        """The image the last :meth:`set_image` replaced (empty when none was recorded)."""
        annotations = self.read_deployment().metadata.annotations or {}
        return str(annotations.get(PREVIOUS_IMAGE_ANNOTATION, ""))

    def set_image(self, container: str, image: str, change_cause: str) -> None:
        """Point ``container`` at ``image`` and record ``change_cause`` (one JSON patch).

        The image being replaced is kept in the ``twinme.ai/previous-image`` annotation, so a
        rollback by hand (``twinme-ops rollback``) knows where to go back to.

        The patch tests the container's name at the index it replaces, so a concurrent reorder
        of the containers fails the call (HTTP 422) instead of changing the wrong one.
        """
        if not image.strip():
            raise ValueError("image must not be empty")
        deployment = self.read_deployment()
        containers = self._containers(deployment)
        index = self._container_index(containers, container)
        base = f"/spec/template/spec/containers/{index}"
        ops: list[dict[str, Any]] = [
            {"op": "test", "path": f"{base}/name", "value": container},
            {"op": "replace", "path": f"{base}/image", "value": image},
        ]
        annotations = {PREVIOUS_IMAGE_ANNOTATION: str(containers[index].image or "")}
        if change_cause:
            annotations[CHANGE_CAUSE_ANNOTATION] = change_cause
        if deployment.metadata.annotations is None:
            ops.append({"op": "add", "path": "/metadata/annotations", "value": annotations})
        else:
            for key, value in annotations.items():
                # "~1" escapes the "/" of the annotation key in a JSON pointer
                pointer = key.replace("~", "~0").replace("/", "~1")
                ops.append(
                    {"op": "add", "path": f"/metadata/annotations/{pointer}", "value": value}
                )
        self._call(
            f"setting image {image} on container {container} of",
            lambda api: api.patch_namespaced_deployment(
                self.deployment,
                self.namespace,
                ops,
                _content_type=JSON_PATCH,
                _request_timeout=_REQUEST_TIMEOUT_S,
            ),
        )

    # -- rollout -------------------------------------------------------------------------------

    def wait_for_rollout(
        self, timeout_s: float | None = None, log: Log | None = None
    ) -> RolloutStatus:
        """Poll until the rollout is complete, as ``kubectl rollout status`` does.

        Raises :class:`RolloutFailed` at once on ``ProgressDeadlineExceeded`` or a paused
        Deployment, and after ``timeout_s`` (default ``rollout_timeout_s``) with what was last
        seen. Transient API errors (5xx, connection) are retried until the timeout.
        """
        logger = log or _fallback_log
        timeout = self.rollout_timeout_s if timeout_s is None else timeout_s
        target = f"deployment {self.namespace}/{self.deployment}"
        start = time.monotonic()
        deadline = start + timeout
        last: RolloutStatus | None = None
        last_error: KubernetesApiError | None = None
        last_line = ""
        last_log_at = 0.0
        while True:
            now = time.monotonic()
            try:
                status = rollout_status(self.read_deployment(), elapsed_s=now - start)
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
                        f"pods (kubectl -n {self.namespace} get pods; describe; logs) for image "
                        "pull errors, crash loops or failing readiness probes, then roll back "
                        f"(kubectl -n {self.namespace} rollout undo deployment/{self.deployment})"
                        " or deploy a fixed image"
                        + (
                            f"; a paused deployment needs `kubectl -n {self.namespace} rollout "
                            f"resume deployment/{self.deployment}`."
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
                    f"Rollout of {target} did not finish within {timeout:g}s: {seen}. Fix: "
                    f"inspect the pods (kubectl -n {self.namespace} get pods; describe; logs) "
                    "for pending scheduling, slow readiness probes or crash loops; raise "
                    "rollout_timeout_s if the rollout is only slow, or roll back "
                    f"(kubectl -n {self.namespace} rollout undo deployment/{self.deployment}).",
                    last,
                )
            time.sleep(max(0.0, min(self.poll_interval_s, deadline - time.monotonic())))
