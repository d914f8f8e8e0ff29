"""Following a ``batch/v1`` Job from outside the cluster: what the image builder and the app
tests' runner share.

Both create one Job in the build namespace and follow it with the official client (an
``ApiClient`` of their own, never the client's global default configuration): its pod, the
states of its containers (init containers included), a container's log as it comes
(``follow=true``, in a thread, so a silent step cannot hold up the polling), the events that
explain a pod that cannot start, and the Job's deletion. Every API call here is one of the
Role of the build namespace (deploy/dagster/rbac.yaml).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twinme_ops.common.redact import redact

if TYPE_CHECKING:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

# one API call may not hang a build or a test run: (connect, read) seconds
REQUEST_TIMEOUT_S = (10.0, 30.0)
# waiting reasons the kubelet will not get over by itself
FATAL_WAITING = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
    }
)


def load_api_client(kubeconfig: str, failure: Callable[[str], Exception]) -> client.ApiClient:
    """An ``ApiClient`` for ``kubeconfig`` (else ``$KUBECONFIG``, else the pod's account).

    ``failure(reason)`` builds the exception raised when neither works; ``reason`` names where
    the configuration was looked for and why it failed (redacted).
    """
    from kubernetes import client, config

    cfg = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG", "")
    try:
        if path:
            config.load_kube_config(
                config_file=path, client_configuration=cfg, persist_config=False
            )
        else:
            config.load_incluster_config(client_configuration=cfg)
    except Exception as exc:
        where = f"the kubeconfig {path}" if path else "the pod's service account"
        raise failure(redact(f"{where} ({type(exc).__name__}: {exc})")[:300]) from None
    return client.ApiClient(cfg)


def api_error_detail(exc: ApiException) -> str:
    """The API server's ``message`` of a refused call, or ''."""
    with contextlib.suppress(TypeError, ValueError, AttributeError):
        body = json.loads(exc.body or "{}")
        return str(body.get("message") or "") if isinstance(body, dict) else ""
    return ""


class LogFollower(threading.Thread):
    """Follows one container's log (``follow=true``) into :attr:`lines`, off the polling thread.

    The poller keeps reading the pod and the Job, so a silent step cannot block a timeout; it
    logs the lines itself (Dagster's log manager is not meant to be called from other threads).
    """

    def __init__(self, core: client.CoreV1Api, namespace: str, pod: str, container: str) -> None:
        super().__init__(name=f"log-{pod}-{container}", daemon=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.error = ""
        self.container = container
        self._core, self._namespace, self._pod = core, namespace, pod
        self._response: Any = None

    def run(self) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        try:
            self._response = self._core.read_namespaced_pod_log(
                self._pod,
                self._namespace,
                container=self.container,
                follow=True,
                _preload_content=False,
                _request_timeout=(REQUEST_TIMEOUT_S[0], None),
            )
            for line in iter_resp_lines(self._response):
                self.lines.put(line)
        except Exception as exc:  # reported by the caller, which goes on without the log
            self.error = redact(f"{type(exc).__name__}: {exc}")[:300]
        finally:
            if self._response is not None:
                self._response.release_conn()

    def stop(self, timeout_s: float) -> None:
        """Let the stream end by itself (the container exited), else cut it."""
        self.join(timeout_s)
        if self.is_alive() and self._response is not None:
            # closing a response another thread reads may raise; the read ends anyway
            with contextlib.suppress(Exception):
                self._response.close()
            self.join(5)


def container_statuses(pod: Any) -> dict[str, Any]:
    """Container name -> ``V1ContainerStatus``, init containers (and sidecars) included."""
    status = pod.status if pod is not None else None
    if status is None:
        return {}
    every = [*(status.init_container_statuses or []), *(status.container_statuses or [])]
    return {s.name: s for s in every}


def job_pod(core: client.CoreV1Api, namespace: str, job: str) -> Any:
    """The newest pod of ``job``, or ``None`` (the selector checked here too, not trusted)."""
    pods: Any = core.list_namespaced_pod(
        namespace, label_selector=f"job-name={job}", _request_timeout=REQUEST_TIMEOUT_S
    )
    mine = [p for p in pods.items if (p.metadata.labels or {}).get("job-name") == job]
    return mine[-1] if mine else None


def warning_events(core: client.CoreV1Api, namespace: str, name: str) -> list[Any]:
    """The events about object ``name`` (a Job or a pod); [] if they cannot be read."""
    try:
        events: Any = core.list_namespaced_event(
            namespace,
            field_selector=f"involvedObject.name={name}",
            _request_timeout=REQUEST_TIMEOUT_S,
        )
    except Exception:  # a diagnosis aid: the caller's timeout still applies
        return []
    return [e for e in events.items if (e.involved_object and e.involved_object.name) == name]


def failed_create(core: client.CoreV1Api, namespace: str, job: str) -> str:
    """Why the Job controller could not create the pod (Pod Security admission, a missing
    ServiceAccount, a quota), from its ``FailedCreate`` event, else ''."""
    for event in warning_events(core, namespace, job):
        if event.reason == "FailedCreate":
            return redact(str(event.message or ""))
    return ""


def failed_mount(core: client.CoreV1Api, namespace: str, pod: Any) -> str:
    """A ``FailedMount`` event for a Secret or ConfigMap that does not exist, else ''."""
    if pod is None or (pod.status and pod.status.phase not in (None, "Pending")):
        return ""
    for event in warning_events(core, namespace, pod.metadata.name):
        message = str(event.message or "")
        if event.reason == "FailedMount" and "not found" in message:
            return redact(message)
    return ""


def delete_job(batch: client.BatchV1Api, namespace: str, name: str) -> int | None:
    """Delete the Job and, in the background, its pod; the HTTP status if that failed."""
    from kubernetes.client.exceptions import ApiException

    try:
        batch.delete_namespaced_job(
            name, namespace, propagation_policy="Background", _request_timeout=REQUEST_TIMEOUT_S
        )
    except ApiException as exc:
        return exc.status or 0
    return None
