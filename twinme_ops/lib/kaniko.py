"""Build the release image in the cluster: one kaniko Job per commit, through dagster-k8s.

In production the Dagster run pod has neither a container engine nor the privileges buildah
needs, so :class:`KanikoImageBuilder` (``TWINME_IMAGE_BUILDER=kaniko``) asks the cluster to do
the build: a ``batch/v1`` Job running the pinned kaniko executor, which

- clones the application repository itself, at the exact commit (``--context=git://host/repo.git
  #refs/heads/<branch>#<sha>``): the checkout never leaves the Dagster pod, and the remote's
  credentials, if any, never reach the Job spec (they come from an optional Secret as
  ``GIT_USERNAME``/``GIT_PASSWORD`` or ``GIT_TOKEN``);
- builds twinme_ops's own ``Dockerfile.production``, shipped to the pod as an immutable,
  content-addressed ConfigMap mounted as a file (kaniko accepts a Dockerfile outside the
  context), or a Dockerfile of the repository given relative to the checkout;
- pushes ``registry/repository:<sha>`` with the credentials of a ``kubernetes.io/dockerconfigjson``
  Secret mounted at ``/kaniko/.docker/config.json`` (optional: ECR/GCR workload identity needs
  none);
- writes the pushed digest to ``/dev/termination-log``, which the kubelet copies into the
  container's ``state.terminated.message``: that is how the digest leaves the pod.

The Job manifest is built by dagster-k8s's ``construct_dagster_k8s_job``; the Job is followed
with the official client, reads retried by dagster-k8s's ``k8s_api_retry``.
``dagster_k8s.execute_k8s_job`` is deliberately not used: it merges the run launcher's and the
code location's container context into the Job, i.e. the run pod's ``envSecrets`` (DATABASE_URL,
the backup key, the Slack webhook...) and its non-root security context. The former would hand
production credentials to every ``RUN`` step of the application's Dockerfile (kaniko runs them
in its own container); the latter stops kaniko, which must run as root. It also loads the
kubeconfig into the client's global default configuration, polls every 10 s, and reads the
digest nowhere. Here the build pod gets exactly what it needs, and no ServiceAccount token.

Failures (image pull, missing Secret, a failed ``RUN`` step, refused push, timeout) raise
:class:`~twinme_ops.lib.image.ImageBuildError` naming the Job, the reason and the fix, with the
last log lines (redacted). A failed Job is kept (``ttlSecondsAfterFinished``) for ``kubectl
logs``; a Job that cannot start or runs out of time is deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import re
import secrets
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from dagster_k8s.client import (
    DagsterK8sAPIRetryLimitExceeded,
    DagsterK8sUnrecoverableAPIError,
    k8s_api_retry,
)
from dagster_k8s.job import (
    DagsterK8sJobConfig,
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
)
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines
from pydantic import Field

from twinme_ops.lib.image import BuiltImage, ImageBuilderResource, ImageBuildError
from twinme_ops.lib.redact import redact, redact_url

# The last release of GoogleContainerTools/kaniko (archived in June 2025). Pinned: a floating tag
# would change the builder under a release without any change here. Mirror it, or use a
# maintained fork, through TWINME_KANIKO_IMAGE.
KANIKO_IMAGE = "gcr.io/kaniko-project/executor:v1.24.0"
CONTAINER = "kaniko"
DIGEST_FILE = "/dev/termination-log"
DOCKER_CONFIG_DIR = "/kaniko/.docker"
DOCKERFILE_DIR = "/twinme/dockerfile"
DOCKERFILE_MOUNT = f"{DOCKERFILE_DIR}/Dockerfile"
JOB_PREFIX = "twinme-build-"
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_SHA_RE = re.compile(r"[0-9a-f]{40}")
_FLOATING_TAGS = {"latest", "debug", "slim", "edge"}
_TAIL_LINES = 25
# one API call may not hang a build: (connect, read) seconds
_REQUEST_TIMEOUT_S = (10.0, 30.0)
# waiting reasons the kubelet will not get over by itself
_FATAL_WAITING = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
}

_DAGSTER_API_ERRORS = (DagsterK8sAPIRetryLimitExceeded, DagsterK8sUnrecoverableAPIError)

# What the code calls, in the build namespace: the Role the Dagster run's ServiceAccount needs
# there (README, "Building in the cluster with kaniko"). Secrets are mounted by the kubelet and
# never read by twinme_ops.
KANIKO_RBAC_RULES: list[dict[str, list[str]]] = [
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "delete"]},
    {"apiGroups": ["batch"], "resources": ["jobs/status"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get"]},
]


class _Log(Protocol):
    def info(self, msg: str, /) -> object: ...


# --- pure helpers (no cluster) ------------------------------------------------------------------


def validate_kaniko_image(image: str) -> str:
    """Return ``image`` if it is pinned (a version tag or a digest); raise otherwise."""
    image = (image or "").strip()
    if not image:
        raise ImageBuildError("no kaniko image configured. Fix: set TWINME_KANIKO_IMAGE")
    if "@sha256:" in image:
        return image
    last = image.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else ""
    if not tag or tag.lower() in _FLOATING_TAGS:
        raise ImageBuildError(
            f"refusing the kaniko image {image!r}: {'no tag' if not tag else f':{tag}'} is a "
            "floating tag, so the builder could change under a release. Fix: pin a version "
            f"(e.g. {KANIKO_IMAGE}) or a digest in TWINME_KANIKO_IMAGE"
        )
    return image


def kaniko_git_context(remote: str, branch: str, commit: str) -> tuple[str, dict[str, str]]:
    """kaniko's ``--context`` for ``commit`` of ``branch`` in ``remote``, and the env it needs.

    kaniko's git context is ``git://<host>/<path>#<ref>#<commit>``: it clones ``<ref>`` over
    HTTPS (HTTP with ``GIT_PULL_METHOD=http``) and checks out ``<commit>``, which must be
    reachable from the branch. Userinfo in the remote is dropped: credentials go through a Secret.
    """
    if not _SHA_RE.fullmatch(commit or ""):
        raise ImageBuildError(f"commit {commit!r} is not a full sha (40 lowercase hex digits)")
    if not branch or not re.fullmatch(r"[A-Za-z0-9._/-]+", branch) or branch.startswith("-"):
        raise ImageBuildError(
            f"branch {branch!r} cannot be put in a kaniko git context. Fix: TWINME_GIT_BRANCH "
            "must be a plain branch name"
        )
    shown = redact(remote) or "(none)"
    problem = f"kaniko clones over HTTPS, and the git remote {shown} is not an https URL"
    try:
        parts = urlsplit((remote or "").strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        parts, host, port = None, None, None
    if parts is None or parts.scheme not in ("https", "http") or not host:
        raise ImageBuildError(
            f"{problem}. Fix: set TWINME_KANIKO_GIT_URL to the repository's https URL as the "
            "cluster reaches it (credentials, if needed, in the Secret named by "
            "TWINME_KANIKO_GIT_SECRET)"
        )
    if not parts.path.strip("/") or parts.query or parts.fragment:
        raise ImageBuildError(
            f"the git URL {shown} has no repository path, or has a query or fragment. Fix: "
            "TWINME_KANIKO_GIT_URL=https://host/org/repo.git"
        )
    netloc = f"{host}:{port}" if port else host
    context = f"git://{netloc}{parts.path}#refs/heads/{branch}#{commit}"
    env = {"GIT_PULL_METHOD": "http"} if parts.scheme == "http" else {}
    return context, env


def digest_from_termination_message(message: str | None) -> str | None:
    """The ``sha256:...`` digest kaniko wrote to the termination log, or ``None``."""
    text = (message or "").strip()
    return text if _DIGEST_RE.fullmatch(text) else None


def dockerfile_configmap_name(content: bytes) -> str:
    """Content-addressed ConfigMap name: the same Dockerfile is uploaded once, then reused."""
    return f"twinme-dockerfile-{hashlib.sha256(content).hexdigest()[:16]}"


def job_name_for(commit: str) -> str:
    """``twinme-build-<sha12>-<random>``: unique per attempt, readable, under 63 characters."""
    return f"{JOB_PREFIX}{commit[:12]}-{secrets.token_hex(3)}"


def _failure_hint(tail: str, builder: KanikoImageBuilder) -> str:
    """The most likely fix for a kaniko exit, from its last log lines."""
    low = tail.lower()
    if "error resolving source context" in low or "repository not found" in low:
        secret = (
            f"the credentials in Secret {builder.git_secret}"
            if builder.git_secret
            else "TWINME_KANIKO_GIT_SECRET (a Secret with GIT_USERNAME/GIT_PASSWORD or GIT_TOKEN) "
            "for a private repository"
        )
        return (
            "kaniko could not fetch the commit: check the repository URL, that the branch "
            f"contains the commit, and {secret}"
        )
    if "error resolving dockerfile path" in low:
        return "the Dockerfile is not where --dockerfile says: fix the container_image config"
    if "push permissions" in low or "unauthorized" in low or "denied" in low:
        secret = (
            f"Secret {builder.push_secret} (type kubernetes.io/dockerconfigjson) holds "
            f"credentials for {builder.registry}"
            if builder.push_secret
            else "the registry accepts pushes from the build pod: set TWINME_KANIKO_PUSH_SECRET "
            "to a kubernetes.io/dockerconfigjson Secret with credentials for " + builder.registry
        )
        return f"the registry refused the push: check that {secret}"
    if "error building image" in low:
        return (
            "a Dockerfile step failed (see the log lines above): fix the application or the "
            "Dockerfile, then re-run release_job"
        )
    return "read the whole log of the Job (command above) and fix what it reports"


# --- the resource -------------------------------------------------------------------------------


@dataclass
class _Watch:
    """What one build saw of its pod: the last log lines and the final observations."""

    tail: deque[str] = field(default_factory=lambda: deque(maxlen=_TAIL_LINES))
    pod: Any = None
    job_status: Any = None


class _LogFollower(threading.Thread):
    """Follows the kaniko container's log (``follow=true``) into a queue, off the main thread.

    The main thread keeps polling the pod and the Job, so a silent build step cannot block
    the timeout; the lines are logged from the main thread (Dagster's log manager is not
    meant to be called from other threads).
    """

    def __init__(self, core: client.CoreV1Api, pod: str, namespace: str) -> None:
        super().__init__(name=f"kaniko-log-{pod}", daemon=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.error = ""
        self._core, self._pod, self._namespace = core, pod, namespace
        self._response: Any = None

    def run(self) -> None:
        try:
            self._response = self._core.read_namespaced_pod_log(
                self._pod,
                self._namespace,
                container=CONTAINER,
                follow=True,
                _preload_content=False,
                _request_timeout=(_REQUEST_TIMEOUT_S[0], None),
            )
            for line in iter_resp_lines(self._response):
                self.lines.put(line)
        except Exception as exc:  # reported by the build, which goes on without logs
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


class KanikoImageBuilder(ImageBuilderResource):
    """Builds and pushes the release image as a kaniko Job in the cluster (``tool="kaniko"``).

    Same registry, repository, build args, TLS and timeout settings as the local builders; the
    Job runs in :attr:`namespace` with the pinned :attr:`kaniko_image`.
    """

    tool: str = "kaniko"
    namespace: str = Field(
        default="twinme-build",
        description="Namespace of the build Jobs (TWINME_KANIKO_NAMESPACE). A namespace of its "
        "own keeps build pods, which run the application's Dockerfile as root, away from the API.",
    )
    kaniko_image: str = Field(
        default=KANIKO_IMAGE,
        description="Pinned kaniko executor image (TWINME_KANIKO_IMAGE); floating tags refused.",
    )
    service_account: str = Field(
        default="",
        description="ServiceAccount of the build pod (TWINME_KANIKO_SERVICE_ACCOUNT), e.g. one "
        "bound to a cloud registry role; empty: the namespace's default. Its API token is never "
        "mounted.",
    )
    push_secret: str = Field(
        default="",
        description="Secret of type kubernetes.io/dockerconfigjson with push credentials, "
        "mounted as /kaniko/.docker/config.json (TWINME_KANIKO_PUSH_SECRET). Empty: none.",
    )
    git_url: str = Field(
        default="",
        description="https URL of the application repository as the cluster reaches it "
        "(TWINME_KANIKO_GIT_URL), without credentials. Empty: the git remote, credentials "
        "stripped.",
    )
    git_secret: str = Field(
        default="",
        description="Secret with GIT_USERNAME and GIT_PASSWORD (or GIT_TOKEN) for a private "
        "repository (TWINME_KANIKO_GIT_SECRET). Empty: none.",
    )
    cache: bool = Field(
        default=False,
        description="kaniko layer cache in <registry>/<repository>/cache (TWINME_KANIKO_CACHE).",
    )
    kubeconfig: str = Field(
        default="",
        description="kubeconfig path. Empty: $KUBECONFIG, else the pod's service account.",
    )
    pod_resources: dict[str, dict[str, str]] = Field(
        default={"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
        description="Resources of the kaniko container (npm ci and the layer snapshots).",
    )
    ttl_after_finished_s: int = Field(
        default=86400,
        description="How long a finished Job (and its log) stays for inspection.",
    )
    poll_interval_s: float = Field(default=5.0, gt=0, description="Delay between two polls.")

    # --- cluster access -----------------------------------------------------------------------

    def _api_client(self) -> client.ApiClient:
        """An ``ApiClient`` of its own: the client's global default configuration is untouched."""
        cfg = client.Configuration()
        path = self.kubeconfig or os.environ.get("KUBECONFIG", "")
        try:
            if path:
                config.load_kube_config(
                    config_file=path, client_configuration=cfg, persist_config=False
                )
            else:
                config.load_incluster_config(client_configuration=cfg)
        except Exception as exc:
            where = f"the kubeconfig {path}" if path else "the pod's service account"
            raise ImageBuildError(
                f"cannot reach the cluster for the kaniko build through {where} "
                f"({type(exc).__name__}: {redact(exc)[:200]}). Fix: set KUBECONFIG, or run in "
                "the cluster, or use TWINME_IMAGE_BUILDER=buildah"
            ) from None
        return client.ApiClient(cfg)

    def _api_error(self, exc: Exception, what: str) -> ImageBuildError:
        """An API failure as an ImageBuildError with the HTTP status and the fix."""
        if not isinstance(exc, ApiException):
            # dagster-k8s wraps what its retries gave up on
            inner = getattr(exc, "k8s_api_exception", None)
            if not isinstance(inner, ApiException):
                return ImageBuildError(redact(f"{what} failed: {type(exc).__name__}: {exc}"))
            exc = inner
        detail = ""
        try:
            body = json.loads(exc.body) if exc.body else {}
            detail = str(body.get("message") or "") if isinstance(body, dict) else ""
        except (TypeError, ValueError):
            detail = ""
        fix = {
            401: "the cluster credentials were refused: renew the kubeconfig or the token",
            403: f"grant the run's ServiceAccount the Role of KANIKO_RBAC_RULES in namespace "
            f"{self.namespace} (README, 'Building in the cluster with kaniko')",
            404: f"create namespace {self.namespace} or set TWINME_KANIKO_NAMESPACE",
        }.get(exc.status or 0, "check the cluster and retry")
        return ImageBuildError(
            redact(f"{what} failed: HTTP {exc.status} {exc.reason or ''}: {detail}. Fix: {fix}")
        )

    # --- the build ----------------------------------------------------------------------------

    def build_and_push(self, context_dir: Path, dockerfile: Path, tag: str, log: Any) -> BuiltImage:
        """Not available: kaniko builds a commit of the remote, see :meth:`build_from_git`."""
        raise ImageBuildError(
            "the kaniko builder clones the commit itself: call build_from_git(remote, branch, "
            "commit, ...) (container_image does), not build_and_push with a local directory"
        )

    def build_from_git(
        self,
        *,
        remote: str,
        branch: str,
        commit: str,
        dockerfile: Path,
        log: _Log,
        checkout: Path | None = None,
        tag: str = "",
        run_id: str = "",
    ) -> BuiltImage:
        """Build ``commit`` of ``remote`` in a kaniko Job, push ``:<tag>`` (default: the commit).

        ``dockerfile`` inside ``checkout`` is used from the cloned repository (same relative
        path); any other file is uploaded as a ConfigMap and mounted into the pod.
        """
        ref = self.tag_ref(tag or commit)
        image = validate_kaniko_image(self.kaniko_image)
        context_url, git_env = kaniko_git_context(self.git_url or remote, branch, commit)
        if remote and not self.git_url and "@" in urlsplit(remote).netloc and not self.git_secret:
            log.info(
                "the git remote carries credentials, which are not passed to the build pod: for "
                "a private repository set TWINME_KANIKO_GIT_SECRET"
            )
        dockerfile_arg, configmap = self._dockerfile(Path(dockerfile), checkout)
        api = self._api_client()
        batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
        if configmap is not None:
            self._ensure_configmap(core, configmap)
        name = job_name_for(commit)
        job = self.job_manifest(
            name,
            args=self.kaniko_args(context_url, dockerfile_arg, ref),
            env=git_env,
            dockerfile_configmap=configmap["metadata"]["name"] if configmap else None,
            labels={"twinme.ai/commit": commit, **({"dagster/run-id": run_id} if run_id else {})},
        )
        started = time.time()
        try:
            batch.create_namespaced_job(self.namespace, job, _request_timeout=_REQUEST_TIMEOUT_S)
        except ApiException as exc:
            raise self._api_error(exc, f"creating the kaniko Job {self.namespace}/{name}") from None
        log.info(
            f"kaniko Job {self.namespace}/{name} ({image}) builds {redact_url(context_url)} "
            f"at {commit[:12]} with {dockerfile_arg} and pushes {ref}"
        )
        watch = self._follow(core, batch, name, started, log)
        return self._result(watch, name, ref, started, log)

    def kaniko_args(self, context_url: str, dockerfile_arg: str, ref: str) -> list[str]:
        """The executor's arguments; no credential ever appears in them."""
        registry = self.registry.rstrip("/").split("/", 1)[0]
        args = [
            f"--context={context_url}",
            f"--dockerfile={dockerfile_arg}",
            f"--destination={ref}",
            f"--digest-file={DIGEST_FILE}",
            "--push-retry=2",
        ]
        for key, value in sorted(self.build_args.items()):
            args.append(f"--build-arg={key}={value}")
        if self.cache:
            args += ["--cache=true", f"--cache-repo={ref.rsplit(':', 1)[0]}/cache"]
        if not self.tls_verify:
            # plain HTTP for this registry only; base images are still pulled over verified TLS
            args += [f"--insecure-registry={registry}", f"--skip-tls-verify-registry={registry}"]
        return args

    def job_manifest(
        self,
        name: str,
        *,
        args: Sequence[str],
        env: dict[str, str],
        dockerfile_configmap: str | None,
        labels: dict[str, str],
    ) -> client.V1Job:
        """The Job, through dagster-k8s's ``construct_dagster_k8s_job``."""
        volumes: list[dict[str, Any]] = []
        mounts: list[dict[str, Any]] = []
        if self.push_secret:
            volumes.append(
                {
                    "name": "registry-credentials",
                    "secret": {
                        "secret_name": self.push_secret,
                        "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                    },
                }
            )
            mounts.append(
                {"name": "registry-credentials", "mount_path": DOCKER_CONFIG_DIR, "read_only": True}
            )
        if dockerfile_configmap:
            volumes.append({"name": "dockerfile", "config_map": {"name": dockerfile_configmap}})
            # subPath: a plain file, not the ConfigMap volume's ..data symlink farm
            mounts.append(
                {
                    "name": "dockerfile",
                    "mount_path": DOCKERFILE_MOUNT,
                    "sub_path": "Dockerfile",
                    "read_only": True,
                }
            )
        container_config: dict[str, Any] = {
            "name": CONTAINER,
            "volume_mounts": mounts,
            "resources": self.pod_resources,
            # the digest travels in the termination message: never replace it by the log tail
            "termination_message_path": DIGEST_FILE,
            "termination_message_policy": "File",
            "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        }
        if self.git_secret:
            container_config["env_from"] = [{"secret_ref": {"name": self.git_secret}}]
        pod_spec_config: dict[str, Any] = {
            "volumes": volumes,
            # the application's build steps get no token for the Kubernetes API
            "automount_service_account_token": False,
            "restart_policy": "Never",
        }
        if self.service_account:
            pod_spec_config["service_account_name"] = self.service_account
        return construct_dagster_k8s_job(
            job_config=DagsterK8sJobConfig(
                job_image=self.kaniko_image, dagster_home=None, image_pull_policy="IfNotPresent"
            ),
            args=list(args),
            job_name=name,
            pod_name=name,
            component="kaniko",
            labels={
                "app.kubernetes.io/name": "twinme-image-build",
                "app.kubernetes.io/part-of": "twinme-ops",
                **labels,
            },
            user_defined_k8s_config=UserDefinedDagsterK8sConfig(
                container_config=container_config,
                pod_spec_config=pod_spec_config,
                job_spec_config={
                    "backoff_limit": 0,
                    # the cluster stops the build even if this process is gone; a minute
                    # later than this process would, which reports it better (log tail)
                    "active_deadline_seconds": int(self.timeout_s) + 60,
                    "ttl_seconds_after_finished": self.ttl_after_finished_s,
                },
            ),
        )

    def _dockerfile(
        self, dockerfile: Path, checkout: Path | None
    ) -> tuple[str, dict[str, Any] | None]:
        """(``--dockerfile`` value, ConfigMap to create or ``None``)."""
        if checkout is not None:
            try:
                relative = dockerfile.resolve().relative_to(Path(checkout).resolve())
            except ValueError:
                relative = None
            if relative is not None:
                return relative.as_posix(), None
        if not dockerfile.is_file():
            raise ImageBuildError(f"Dockerfile not found: {dockerfile}")
        content = dockerfile.read_bytes()
        configmap = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": dockerfile_configmap_name(content),
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/part-of": "twinme-ops"},
                "annotations": {"twinme.ai/source": dockerfile.name},
            },
            "immutable": True,
            "data": {"Dockerfile": content.decode("utf-8")},
        }
        return DOCKERFILE_MOUNT, configmap

    def _ensure_configmap(self, core: client.CoreV1Api, body: dict[str, Any]) -> None:
        """Create the Dockerfile's ConfigMap, or check that the existing one holds the same text."""
        name = body["metadata"]["name"]
        try:
            core.create_namespaced_config_map(
                self.namespace, body, _request_timeout=_REQUEST_TIMEOUT_S
            )
            return
        except ApiException as exc:
            if exc.status != 409:
                raise self._api_error(exc, f"creating ConfigMap {self.namespace}/{name}") from None
        try:
            existing: Any = core.read_namespaced_config_map(
                name, self.namespace, _request_timeout=_REQUEST_TIMEOUT_S
            )
        except ApiException as exc:
            raise self._api_error(exc, f"reading ConfigMap {self.namespace}/{name}") from None
        if (existing.data or {}).get("Dockerfile") != body["data"]["Dockerfile"]:
            # the name is the content's hash: anything else was put there by someone else
            raise ImageBuildError(
                f"ConfigMap {self.namespace}/{name} exists with another Dockerfile than the one "
                f"its name is the hash of. Fix: kubectl -n {self.namespace} delete configmap "
                f"{name}, and find out who created it"
            )

    def _retry(self, call: Any) -> Any:
        """One read, retried by dagster-k8s on the API server's transient answers (429, 5xx)."""
        return k8s_api_retry(call, max_retries=3, timeout=self.poll_interval_s)

    def _job_status(self, batch: client.BatchV1Api, name: str) -> Any:
        """The Job's status (empty before the controller writes one), ``None`` once deleted."""
        try:
            job: Any = self._retry(
                lambda: batch.read_namespaced_job_status(
                    name, self.namespace, _request_timeout=_REQUEST_TIMEOUT_S
                )
            )
        except DagsterK8sUnrecoverableAPIError as exc:
            inner = exc.k8s_api_exception
            if isinstance(inner, ApiException) and inner.status == 404:
                return None
            raise
        return job.status or client.V1JobStatus()

    def _failed_job_status(
        self, batch: client.BatchV1Api, name: str, status: Any, wait_s: float = 5.0
    ) -> Any:
        """The Job's status once it carries its ``Failed`` condition (or after ``wait_s``)."""
        until = time.time() + wait_s
        while True:
            conditions = (status.conditions if status is not None else None) or []
            if any(c.type == "Failed" and c.status == "True" for c in conditions):
                return status
            if status is None or time.time() > until:
                return status
            time.sleep(min(self.poll_interval_s, 0.2))
            status = self._job_status(batch, name)

    def _pod_of(self, core: client.CoreV1Api, job: str) -> Any:
        pods: Any = self._retry(
            lambda: core.list_namespaced_pod(
                self.namespace,
                label_selector=f"job-name={job}",
                _request_timeout=_REQUEST_TIMEOUT_S,
            )
        )
        # filtered here too: the selector is the API server's job, checked rather than trusted
        mine = [p for p in pods.items if (p.metadata.labels or {}).get("job-name") == job]
        return mine[-1] if mine else None

    def _follow(
        self,
        core: client.CoreV1Api,
        batch: client.BatchV1Api,
        name: str,
        started: float,
        log: _Log,
    ) -> _Watch:
        """Poll the Job and its pod until the kaniko container ends; stream its log meanwhile."""
        watch = _Watch()
        follower: _LogFollower | None = None
        deadline = started + self.timeout_s

        def emit(line: str) -> None:
            line = redact(line.rstrip())
            if line:
                watch.tail.append(line)
                log.info(line)

        def drain() -> None:
            while follower is not None:
                try:
                    emit(follower.lines.get_nowait())
                except queue.Empty:
                    return

        try:
            while True:
                next_poll = time.time() + self.poll_interval_s
                drain()
                try:
                    watch.job_status = self._job_status(batch, name)
                    watch.pod = self._pod_of(core, name) or watch.pod
                except (ApiException, *_DAGSTER_API_ERRORS) as exc:
                    raise self._api_error(exc, f"following the kaniko Job {name}") from None
                state = _container_state(watch.pod)
                if follower is None and state is not None and (state.running or state.terminated):
                    follower = _LogFollower(core, watch.pod.metadata.name, self.namespace)
                    follower.start()
                if state is not None and state.terminated is not None:
                    if state.terminated.exit_code != 0:
                        # the Job controller records why (e.g. DeadlineExceeded) just after the
                        # container ends: give it a moment, so the message names the real cause
                        watch.job_status = self._failed_job_status(batch, name, watch.job_status)
                    break
                status = watch.job_status
                if status is None:
                    raise ImageBuildError(
                        f"the kaniko Job {self.namespace}/{name} disappeared while building. "
                        "Fix: check who deletes Jobs in that namespace, then re-run release_job"
                    )
                if status.succeeded or (status.failed and not status.active):
                    break
                waiting = state.waiting if state is not None else None
                if waiting is not None and waiting.reason in _FATAL_WAITING:
                    self._delete(batch, name, log)
                    raise ImageBuildError(self._waiting_message(name, waiting))
                mount = self._mount_failure(core, watch.pod)
                if mount:
                    self._delete(batch, name, log)
                    raise ImageBuildError(
                        f"the kaniko pod of Job {self.namespace}/{name} cannot start: {mount}. "
                        "The Job was deleted. Fix: create it in namespace "
                        f"{self.namespace}, or correct its name (TWINME_KANIKO_PUSH_SECRET, "
                        "TWINME_KANIKO_GIT_SECRET)"
                    )
                if time.time() > deadline:
                    self._delete(batch, name, log)
                    raise ImageBuildError(self._timeout_message(name, watch))
                # log lines as they come, the API only once per poll interval
                while (remaining := next_poll - time.time()) > 0:
                    if follower is None:
                        time.sleep(remaining)
                        break
                    try:
                        emit(follower.lines.get(timeout=remaining))
                    except queue.Empty:
                        break
        finally:
            if follower is not None:
                follower.stop(timeout_s=10)
                drain()
                if follower.error:
                    log.info(f"the kaniko log could not be followed: {follower.error}")
        # the pod as it ended: the termination message is written with the terminated state
        with contextlib.suppress(ApiException, *_DAGSTER_API_ERRORS):
            watch.pod = self._pod_of(core, name) or watch.pod
        return watch

    def _mount_failure(self, core: client.CoreV1Api, pod: Any) -> str:
        """A FailedMount event for a Secret or ConfigMap that does not exist, else ''."""
        if pod is None or (pod.status and pod.status.phase not in (None, "Pending")):
            return ""
        try:
            events: Any = self._retry(
                lambda: core.list_namespaced_event(
                    self.namespace,
                    field_selector=f"involvedObject.name={pod.metadata.name}",
                    _request_timeout=_REQUEST_TIMEOUT_S,
                )
            )
        except Exception:  # events are a diagnosis aid: without them the timeout still applies
            return ""
        for event in events.items:
            involved = event.involved_object
            if involved is not None and involved.name != pod.metadata.name:
                continue
            message = str(event.message or "")
            if event.reason == "FailedMount" and "not found" in message:
                return redact(message)
        return ""

    def _delete(self, batch: client.BatchV1Api, name: str, log: _Log) -> None:
        """Delete a Job that cannot succeed any more, with its pod (best effort)."""
        try:
            batch.delete_namespaced_job(
                name,
                self.namespace,
                propagation_policy="Background",
                _request_timeout=_REQUEST_TIMEOUT_S,
            )
            log.info(f"deleted the kaniko Job {self.namespace}/{name}")
        except ApiException as exc:
            log.info(f"could not delete the kaniko Job {self.namespace}/{name}: HTTP {exc.status}")

    def _waiting_message(self, name: str, waiting: Any) -> str:
        reason, message = waiting.reason, redact(waiting.message or "")[:300]
        if reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
            fix = (
                f"check TWINME_KANIKO_IMAGE ({self.kaniko_image}): a pinned executor image the "
                "nodes can pull, or mirror it into a registry they reach"
            )
        else:
            fix = (
                f"create what the pod references in namespace {self.namespace} (Secret "
                f"{self.git_secret or self.push_secret or '?'}), or fix its name"
            )
        return (
            f"the kaniko pod of Job {self.namespace}/{name} cannot start: {reason}"
            f"{': ' + message if message else ''}. The Job was deleted. Fix: {fix}"
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
        tail = "\n".join(watch.tail)
        return (
            f"the kaniko Job {self.namespace}/{name} did not finish within {self.timeout_s:.0f} "
            f"s; {where}. The Job was deleted. Fix: check the cluster's capacity for "
            f"{self.pod_resources.get('requests', {})} in {self.namespace}, or raise "
            "TWINME_KANIKO_TIMEOUT_S" + (f"; last log lines:\n{tail}" if tail else "")
        )

    def _result(self, watch: _Watch, name: str, ref: str, started: float, log: _Log) -> BuiltImage:
        """The pushed image from the pod's termination message, or the reason it failed."""
        job = f"{self.namespace}/{name}"
        tail = "\n".join(watch.tail)
        logs = f"kubectl -n {self.namespace} logs job/{name}"
        state = _container_state(watch.pod)
        terminated = state.terminated if state is not None else None
        if terminated is not None and terminated.exit_code == 0:
            digest = digest_from_termination_message(terminated.message)
            if digest is None:
                shown = redact(terminated.message or "")[:100]
                raise ImageBuildError(
                    f"the kaniko Job {job} succeeded but left no digest in {DIGEST_FILE} (got "
                    f"{shown!r}), so the pushed image cannot be pinned. Fix: keep "
                    f"--digest-file={DIGEST_FILE} and use the executor image, not a wrapper"
                )
            built = BuiltImage(
                tag_ref=ref,
                digest=digest,
                image_ref=f"{ref.rsplit(':', 1)[0]}@{digest}",
                duration_s=round(time.time() - started, 3),
            )
            log.info(f"kaniko Job {job} pushed {built.image_ref} in {built.duration_s:.1f} s")
            return built
        status = watch.job_status
        conditions = (status.conditions if status is not None else None) or []
        failed = next((c for c in conditions if c.type == "Failed" and c.status == "True"), None)
        if failed is not None and failed.reason == "DeadlineExceeded":
            raise ImageBuildError(
                f"the kaniko Job {job} was stopped by the cluster after activeDeadlineSeconds "
                f"({redact(failed.message or '')}). Fix: raise TWINME_KANIKO_TIMEOUT_S"
                + (f"; last log lines:\n{tail}" if tail else "")
            )
        if terminated is not None:
            detail = redact(terminated.message or "").strip()
            raise ImageBuildError(
                f"the kaniko Job {job} failed: container {CONTAINER} exited "
                f"{terminated.exit_code} ({terminated.reason or 'Error'})"
                + (f": {detail[:300]}" if detail else "")
                + (f"; last log lines:\n{tail}\n" if tail else "; ")
                + f"Fix: {_failure_hint(tail, self)}. Whole log: {logs}"
            )
        why = f"{failed.reason}: {redact(failed.message or '')}" if failed else "its pod is gone"
        raise ImageBuildError(
            f"the kaniko Job {job} failed ({why}). Fix: kubectl -n {self.namespace} describe "
            f"job {name}"
        )


def _container_state(pod: Any) -> Any:
    """The kaniko container's ``V1ContainerState``, or ``None`` before the kubelet reports it."""
    if pod is None or pod.status is None:
        return None
    for status in pod.status.container_statuses or []:
        if status.name == CONTAINER:
            return status.state
    return None
