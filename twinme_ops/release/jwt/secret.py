"""The API's JWT Secret (``twinme-prod/twinme-jwt-keys``) through the official ``kubernetes``
client: read it, write a key set into it, put a previous version back.

Writes are JSON merge patches of ``data`` and the ``twinme.ai/jwt-*`` annotations only, carrying
the ``resourceVersion`` that was read: on a real API server a concurrent change of the Secret
makes the write fail (HTTP 409) instead of being overwritten. The Secret itself is created by the
operator once (``kubectl create -f deploy/app/templates/jwt-keys-secret.yaml``), so the code
location needs only ``get`` and ``patch`` on that one name (``deploy/dagster/rbac.yaml``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twinme_ops.common.redact import redact
from twinme_ops.servers.kube_connection import cluster_configuration

if TYPE_CHECKING:
    from kubernetes import client

MERGE_PATCH = "application/merge-patch+json"
_REQUEST_TIMEOUT_S = (10.0, 30.0)
_ANNOTATION_PREFIX = "twinme.ai/jwt-"


class JwtSecretError(RuntimeError):
    """Reading or writing the Secret failed; the message names the Secret and the fix."""


@dataclass(frozen=True)
class SecretVersion:
    """What the Secret held: its ``data`` and JWT annotations (enough to put it back)."""

    data: dict[str, str] = field(repr=False)
    annotations: dict[str, str]
    resource_version: str = ""


@dataclass
class JwtSecret:
    """One Secret of one namespace, reached through ``kubeconfig`` (else KUBECONFIG, else the
    pod's service account)."""

    namespace: str
    name: str
    kubeconfig: str = ""
    _api: Any = field(default=None, init=False, repr=False)

    @property
    def target(self) -> str:
        """``secret ns/name`` for messages."""
        return f"secret {self.namespace}/{self.name}"

    def _client(self) -> client.CoreV1Api:
        from kubernetes import client

        if self._api is None:
            cfg, _ = cluster_configuration(
                self.kubeconfig,
                target=self.target,
                in_cluster_fix=f"a service account allowed to get and patch {self.target}",
            )
            self._api = client.CoreV1Api(client.ApiClient(cfg))
        return self._api

    def _fail(self, verb: str, exc: Exception) -> JwtSecretError:
        from kubernetes.client.exceptions import ApiException

        status = int(exc.status or 0) if isinstance(exc, ApiException) else 0
        fix = {
            404: "create it once: kubectl create -f "
            f"deploy/app/templates/jwt-keys-secret.yaml (namespace {self.namespace}; "
            "TWINME_K8S_NAMESPACE)",
            403: f"grant get and patch on {self.target} to the code location's service account "
            "(deploy/dagster/rbac.yaml, Role twinme-ops-api-deployer)",
            409: "the Secret changed while the job ran: check who changed it, then re-run",
        }.get(status, "check the API server and retry")
        what = f"HTTP {status}" if status else f"{type(exc).__name__}: {redact(exc)[:200]}"
        return JwtSecretError(f"{verb} {self.target} failed ({what}). Fix: {fix}.")

    def read(self) -> SecretVersion:
        """The Secret's current version."""
        try:
            secret: Any = self._client().read_namespaced_secret(
                self.name, self.namespace, _request_timeout=_REQUEST_TIMEOUT_S
            )
        except Exception as exc:
            raise self._fail("reading", exc) from None
        annotations = {
            k: v
            for k, v in (secret.metadata.annotations or {}).items()
            if k.startswith(_ANNOTATION_PREFIX)
        }
        return SecretVersion(
            dict(secret.data or {}), annotations, str(secret.metadata.resource_version or "")
        )

    def write(
        self, data: dict[str, str], annotations: dict[str, str], before: SecretVersion
    ) -> None:
        """Replace the Secret's ``data`` and JWT annotations by these (``before``: the version
        read, whose keys absent from the new content are removed)."""
        body_data: dict[str, str | None] = {k: None for k in before.data if k not in data}
        body_data.update(data)
        body_annotations: dict[str, str | None] = {
            k: None for k in before.annotations if k not in annotations
        }
        body_annotations.update(annotations)
        metadata: dict[str, Any] = {"annotations": body_annotations}
        if before.resource_version:
            metadata["resourceVersion"] = before.resource_version
        body = {"metadata": metadata, "data": body_data or None}
        try:
            self._client().patch_namespaced_secret(
                self.name,
                self.namespace,
                json.loads(json.dumps(body)),
                _content_type=MERGE_PATCH,
                _request_timeout=_REQUEST_TIMEOUT_S,
            )
        except Exception as exc:
            raise self._fail("writing", exc) from None

    def restore(self, version: SecretVersion) -> None:
        """Put ``version`` back, whatever the Secret holds now."""
        self.write(version.data, version.annotations, self.read())
