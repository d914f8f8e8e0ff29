"""Reaching the cluster of :class:`~twinme_ops.servers.kube.KubernetesResource`, and its failures.

The configuration comes from the resource's ``kubeconfig`` path, else ``KUBECONFIG``, else the
pod's service account (in-cluster config). ``~/.kube/config`` is deliberately not a fallback: an
operation on production must never pick up whatever cluster a developer last used. A failed API
call becomes a :class:`KubernetesApiError` whose message names the deployment, the HTTP status
and the fix.

The ``kubernetes`` client costs about 0.5 s to import: it is imported on the first call, never
when the code location loads.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from twinme_ops.common.redact import redact

if TYPE_CHECKING:  # the client costs ~0.5 s to import: loaded on the first call, not at load
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException


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


def _kubeconfig_path(kubeconfig: str) -> tuple[str, str]:
    """The kubeconfig path to use and where it came from ('' when none is configured)."""
    if kubeconfig:
        return kubeconfig, "the resource's kubeconfig"
    env = os.environ.get("KUBECONFIG", "")
    return env, "KUBECONFIG"


def load_configuration(
    kubeconfig: str, *, enabled: bool, namespace: str, deployment: str
) -> tuple[client.Configuration, str]:
    """A client configuration (no network) and a description of its source.

    ``namespace`` and ``deployment`` only name the target in the errors.
    """
    target = f"deployment {namespace}/{deployment}"
    if not enabled:
        raise KubernetesNotConfiguredError(
            f"Kubernetes is disabled for {target} (enabled=false, the local environment). "
            "Fix: run with TWINME_ENV=production and KUBECONFIG set, or enable the resource."
        )
    return cluster_configuration(
        kubeconfig,
        target=target,
        in_cluster_fix=(
            "a service account allowed to get and patch deployments in "
            f"{namespace}; locally, use TWINME_ENV=local (enabled=false)"
        ),
    )


def cluster_configuration(
    kubeconfig: str, *, target: str, in_cluster_fix: str
) -> tuple[client.Configuration, str]:
    """The kubeconfig (``kubeconfig``, else ``KUBECONFIG``) or in-cluster configuration.

    ``target`` names what the caller operates on; ``in_cluster_fix`` ends the fix when neither
    source is configured ("... or run in the cluster with <in_cluster_fix>").
    """
    from kubernetes import client, config

    cfg = client.Configuration()
    path, origin = _kubeconfig_path(kubeconfig)
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
            f"the cluster with {in_cluster_fix}."
        ) from None
    return cfg, "in-cluster service account"


def custom_objects_api(
    kubeconfig: str, *, target: str, in_cluster_fix: str
) -> tuple[client.CustomObjectsApi, str]:
    """A ``CustomObjectsApi`` on its own ``ApiClient`` (for CloudNativePG), and its source."""
    from kubernetes import client

    cfg, source = cluster_configuration(kubeconfig, target=target, in_cluster_fix=in_cluster_fix)
    return client.CustomObjectsApi(client.ApiClient(cfg)), source


@contextlib.contextmanager
def api_errors(
    verb: str, *, namespace: str, deployment: str, where: Callable[[], str]
) -> Iterator[None]:
    """Turn a failure of the API call inside into a :class:`KubernetesApiError` with the fix.

    ``verb`` says what the call was doing ("reading", "scaling to 2"); ``where`` describes the
    API server, for connection errors.
    """
    import urllib3.exceptions
    from kubernetes.client.exceptions import ApiException

    target = f"deployment {namespace}/{deployment}"
    try:
        yield
    except ApiException as exc:
        status = int(exc.status or 0)
        hint = {
            401: "the credentials were refused: renew the token or kubeconfig",
            403: (
                "the identity may not do this: grant get/patch on deployments in "
                f"namespace {namespace} (Role + RoleBinding)"
            ),
            404: (
                f"no such deployment: check TWINME_K8S_NAMESPACE ({namespace}) and the "
                f"deployment name ({deployment})"
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
            f"{verb} {target} failed: cannot reach the API server at {where()}: "
            f"{type(exc).__name__}: {redact(exc)[:300]}. Fix: check the network path and "
            "the server address in the kubeconfig.",
            transient=True,
        ) from None


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
