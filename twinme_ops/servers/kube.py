"""The TwinMe API Deployment through the official ``kubernetes`` client.

:class:`KubernetesResource` reads and changes one Deployment (``twinme-prod/twinme-api`` by
default): its replica count, its container image with a ``kubernetes.io/change-cause``
annotation, and waits for a rollout the way ``kubectl rollout status`` does (kube_rollout.py).

Writes use explicit patch content types, never the client's default choice, and never a strategic
merge patch: the replica count goes as a JSON merge patch on the Deployment, the image as a JSON
patch that first *tests* the container's name at the index it replaces. A merge patch of the
image would have to resend the whole ``containers`` list read through the client's models, and
fields a newer cluster knows but this client version does not would be dropped on the way.

The cluster comes from the resource's ``kubeconfig`` path, else ``KUBECONFIG``, else the pod's
service account (in-cluster config); ``~/.kube/config`` is deliberately not a fallback
(kube_connection.py, which also turns failed calls into errors that name the fix).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import dagster as dg
from pydantic import Field, PrivateAttr

from twinme_ops.common.log import Log
from twinme_ops.common.redact import redact_url
from twinme_ops.servers.kube_connection import (
    KubernetesApiError,
    KubernetesNotConfiguredError,
    api_errors,
    load_configuration,
)
from twinme_ops.servers.kube_rollout import (
    PAUSED,
    PROGRESS_DEADLINE_EXCEEDED,
    RolloutFailed,
    RolloutStatus,
    as_int,
    rollout_status,
    watch_rollout,
)

if TYPE_CHECKING:  # the client costs ~0.5 s to import: loaded on the first call, not at load
    from kubernetes import client

# the names callers import from here, wherever they are defined
__all__ = [
    "CHANGE_CAUSE_ANNOTATION",
    "JSON_PATCH",
    "MERGE_PATCH",
    "PAUSED",
    "PREVIOUS_IMAGE_ANNOTATION",
    "PROGRESS_DEADLINE_EXCEEDED",
    "KubernetesApiError",
    "KubernetesNotConfiguredError",
    "KubernetesResource",
    "RolloutFailed",
    "RolloutStatus",
    "rollout_status",
]

CHANGE_CAUSE_ANNOTATION = "kubernetes.io/change-cause"
# what set_image replaced: where a rollback by hand goes back to
PREVIOUS_IMAGE_ANNOTATION = "twinme.ai/previous-image"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"

# One API call may not hang a run: (connect, read) seconds
_REQUEST_TIMEOUT_S = (10.0, 30.0)

_T = TypeVar("_T")


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

    def _load_configuration(self) -> tuple[client.Configuration, str]:
        """A client configuration (no network) and a description of its source."""
        return load_configuration(
            self.kubeconfig,
            enabled=self.enabled,
            namespace=self.namespace,
            deployment=self.deployment,
        )

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
        api = self.get_client()
        with api_errors(
            verb, namespace=self.namespace, deployment=self.deployment, where=self.describe
        ):
            return fn(api)

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
        return as_int(self.read_deployment().spec.replicas, default=1)

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

    def set_template_annotations(self, annotations: dict[str, str], change_cause: str) -> None:
        """Set annotations on the pod template (one JSON merge patch): new values roll the
        Deployment, as ``kubectl rollout restart`` does with its ``restartedAt``; putting back
        earlier values rolls back to the pods that had them."""
        body: dict[str, Any] = {"spec": {"template": {"metadata": {"annotations": annotations}}}}
        if change_cause:
            body["metadata"] = {"annotations": {CHANGE_CAUSE_ANNOTATION: change_cause[:250]}}
        self._call(
            "annotating the pod template of",
            lambda api: api.patch_namespaced_deployment(
                self.deployment,
                self.namespace,
                body,
                _content_type=MERGE_PATCH,
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
        return watch_rollout(
            self.read_deployment,
            namespace=self.namespace,
            deployment=self.deployment,
            timeout_s=self.rollout_timeout_s if timeout_s is None else timeout_s,
            poll_interval_s=self.poll_interval_s,
            log=log,
        )
