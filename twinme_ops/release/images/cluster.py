"""Build the release image in the cluster: one rootless buildah Job per commit.

In production the Dagster run pod has neither a container engine nor the privileges a local build
needs, so :class:`ClusterImageBuilder` (``TWINME_IMAGE_BUILDER=cluster``) asks the cluster to build:
a ``batch/v1`` Job in the build namespace whose pod (:mod:`twinme_ops.release.images.cluster_job`)
clones exactly the commit in an init container, runs ``buildah bud`` and ``buildah push --digestfile
/dev/termination-log`` as uid 1000, and so hands the pushed digest back in its container's
``state.terminated.message``. twinme_ops's ``Dockerfile.production`` travels as an immutable,
content-addressed ConfigMap; a Dockerfile of the repository is used from the clone. The Job is
followed with the official client (:mod:`twinme_ops.release.k8s_job`): the clone's and the build's
logs stream into the run's log, redacted.

Why buildah, and with which privileges. kaniko, the previous builder, was archived upstream in
2025 and must run as root, which kept a non-"restricted" exception in the build namespace.
buildah rootless needs no daemon and no root, but it does need a user namespace of its own for
``RUN`` steps (buildah re-executes itself in one; ``_BUILDAH_STARTED_IN_USERNS``, which the
rootful recipes set, tells it not to, so it is *not* set here). What the pod may do:

- no ``privileged``, no added capability, ``allowPrivilegeEscalation: false``: so no setuid
  ``newuidmap`` and no ``/etc/subuid`` range (the image's ``build:1:999`` is unusable); buildah
  falls back to a single-ID mapping (itself as root of its namespace, ``setgroups`` denied);
- ``--isolation chroot`` (``BUILDAH_ISOLATION=chroot``): ``RUN`` steps are chrooted processes,
  no OCI runtime, no cgroups, no network namespace to set up; ``--storage-driver vfs``: plain
  directory copies, no overlay or fuse mount, no ``/dev/fuse`` device;
- seccomp ``RuntimeDefault``: whether it lets an unprivileged process create a user namespace
  (``unshare(CLONE_NEWUSER)``) depends on the runtime: Docker-derived profiles (containerd's)
  allow ``unshare`` and namespace flags of ``clone`` only with ``CAP_SYS_ADMIN``; such nodes need
  a ``Localhost`` profile that allows them (still "restricted"). docs/release.md, 'Building in the
  cluster', says how to check.
  ``hostUsers: false`` (Kubernetes user namespaces, on by default from 1.33) adds
  a namespace of the pod's own under it: uid 1000 of the pod is an unmapped uid of the node.

Sources: buildah's issue containers/buildah#6947 and its fix #6961 (July 2026): under exactly
this single-ID, setgroups-denied mapping ("Kubernetes/OpenShift pods under a restricted SCC")
every ``RUN`` step failed with "error setting supplemental groups list" until then, so the
pinned image must include that fix; #2459/#2468 (chroot isolation with a single mapping);
the OpenShift Pipelines documentation ("Building of container images using Buildah as a
non-root user": user namespaces, or else ``allowPrivilegeEscalation: true`` with an SCC);
BuildKit's rootless documentation (its rootless mode wants ``seccomp``/``apparmor``
``unconfined`` and ``procMount: Unmasked``, which no Pod Security level but "privileged"
allows: hence buildah, not BuildKit). The pod therefore passes the "restricted" level
(checked in tests/deploy/test_deploy_build.py), and the build namespace stays "restricted" with no
exception. What remains is a property of the nodes, not of admission: the kernel must allow
unprivileged user namespaces (``user.max_user_namespaces`` > 0, not Ubuntu's
``kernel.apparmor_restrict_unprivileged_userns=1``); where it does not, the failure says so.
A single-ID build has one consequence for images: files a ``RUN`` step ``chown``s to another
uid are stored as root's (``vfs`` ignores what it cannot map); Dockerfile.production only
reads them as ``node``.

Failures (image pull, missing Secret, a commit that cannot be fetched, a failed ``RUN`` step,
refused push, timeout) raise :class:`~twinme_ops.release.images.local.ImageBuildError` naming the
Job, the
reason and the fix, with the last log lines (redacted). A Job that ran is kept
(``ttlSecondsAfterFinished``) for ``kubectl logs``; one that cannot start or runs out of time is
deleted.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import Field

from twinme_ops.common.log import Log
from twinme_ops.common.redact import redact
from twinme_ops.release import k8s_job
from twinme_ops.release.images.cluster_follow import BuildJobFollower
from twinme_ops.release.images.cluster_job import (
    BUILD_CONTAINER,
    BUILDAH_IMAGE,
    CLONE_CONTAINER,
    DOCKERFILE_MOUNT,
    GIT_IMAGE,
    BuildPod,
    build_script,
    clone_script,
    dockerfile_configmap_name,
    git_source,
    job_manifest,
    job_name_for,
    validate_pinned_image,
)
from twinme_ops.release.images.local import BuiltImage, ImageBuilderResource, ImageBuildError

if TYPE_CHECKING:
    from kubernetes import client

_TAIL_LINES = 25
_TIMEOUT = k8s_job.REQUEST_TIMEOUT_S
_IMAGE_VARIABLE = {CLONE_CONTAINER: "TWINME_BUILD_GIT_IMAGE", BUILD_CONTAINER: "TWINME_BUILD_IMAGE"}


class ClusterImageBuilder(BuildJobFollower, ImageBuilderResource):
    """Builds and pushes the release image as a rootless buildah Job (``tool="cluster"``).

    Same registry, repository, build args, TLS and timeout settings as the local builders.
    """

    tool: str = "cluster"
    namespace: str = Field(
        default="twinme-build",
        description="Namespace of the build Jobs (TWINME_BUILD_NAMESPACE): the build namespace "
        "of deploy/build/, Pod Security 'restricted'.",
    )
    build_image: str = Field(
        default=BUILDAH_IMAGE,
        description="Pinned buildah image (TWINME_BUILD_IMAGE); floating tags refused.",
    )
    git_image: str = Field(
        default=GIT_IMAGE,
        description="Pinned git image of the clone init container (TWINME_BUILD_GIT_IMAGE).",
    )
    service_account: str = Field(
        default="",
        description="ServiceAccount of the build pod (TWINME_BUILD_SERVICE_ACCOUNT), e.g. one "
        "bound to a cloud registry role; empty: the namespace's default. Its API token is never "
        "mounted.",
    )
    push_secret: str = Field(
        default="",
        description="Secret of type kubernetes.io/dockerconfigjson with push credentials, "
        "mounted as REGISTRY_AUTH_FILE (TWINME_BUILD_PUSH_SECRET). Empty: none.",
    )
    git_url: str = Field(
        default="",
        description="URL (https, http or git) of the application repository as the cluster "
        "reaches it (TWINME_BUILD_GIT_URL), without credentials. Empty: the git remote, "
        "credentials stripped.",
    )
    git_secret: str = Field(
        default="",
        description="Secret with GIT_USERNAME and GIT_PASSWORD (or GIT_TOKEN) for a private "
        "repository (TWINME_BUILD_GIT_SECRET), seen by the clone container only. Empty: none.",
    )
    kubeconfig: str = Field(
        default="",
        description="kubeconfig path. Empty: $KUBECONFIG, else the pod's service account.",
    )
    pod_resources: dict[str, dict[str, str]] = Field(
        default={"requests": {"cpu": "1", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
        description="Resources of the build container (npm ci, vfs layer copies).",
    )
    ttl_after_finished_s: int = Field(
        default=86400, description="How long a finished Job (and its log) stays for inspection."
    )
    poll_interval_s: float = Field(default=5.0, gt=0, description="Delay between two polls.")

    # --- the build ----------------------------------------------------------------------------

    def build_and_push(self, context_dir: Path, dockerfile: Path, tag: str, log: Log) -> BuiltImage:
        """Not available: the cluster builds a commit of the remote, see :meth:`build_from_git`."""
        raise ImageBuildError(
            "the cluster builder clones the commit itself: call build_from_git(remote, branch, "
            "commit, ...) (container_image does), not build_and_push with a local directory"
        )

    def build_commit(
        self,
        *,
        checkout: Path,
        dockerfile: Path,
        commit: str,
        remote: str,
        branch: str,
        log: Log,
        run_id: str = "",
    ) -> BuiltImage:
        """The cluster clones the commit itself: the checkout only locates the Dockerfile."""
        return self.build_from_git(
            remote=remote,
            branch=branch,
            commit=commit,
            dockerfile=dockerfile,
            checkout=checkout,
            log=log,
            run_id=run_id,
        )

    def build_from_git(
        self,
        *,
        remote: str,
        branch: str,
        commit: str,
        dockerfile: Path,
        log: Log,
        checkout: Path | None = None,
        tag: str = "",
        run_id: str = "",
    ) -> BuiltImage:
        """Build ``commit`` of ``remote`` in a buildah Job, push ``:<tag>`` (default: the commit).

        ``dockerfile`` inside ``checkout`` is used from the clone (same relative path); any other
        file is uploaded as a ConfigMap and mounted into the pod. ``branch`` only names the
        commit in the log: the pod fetches the commit itself.
        """
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        ref = self.tag_ref(tag or commit)
        validate_pinned_image(self.build_image, "TWINME_BUILD_IMAGE", BUILDAH_IMAGE)
        validate_pinned_image(self.git_image, "TWINME_BUILD_GIT_IMAGE", GIT_IMAGE)
        url = git_source(self.git_url or remote, commit)
        if remote and not self.git_url and "@" in urlsplit(remote).netloc and not self.git_secret:
            log.info(
                "the git remote carries credentials, which are not passed to the build pod: for "
                "a private repository set TWINME_BUILD_GIT_SECRET"
            )
        dockerfile_arg, configmap = self._dockerfile(Path(dockerfile), checkout)
        api = k8s_job.load_api_client(
            self.kubeconfig,
            lambda why: ImageBuildError(
                f"cannot reach the cluster for the image build through {why}. Fix: set "
                "KUBECONFIG, or run in the cluster, or use TWINME_IMAGE_BUILDER=buildah"
            ),
        )
        batch, core = client.BatchV1Api(api), client.CoreV1Api(api)
        if configmap is not None:
            self._ensure_configmap(core, configmap)
        name = job_name_for(commit)
        registry = self.registry.rstrip("/").split("/", 1)[0]
        pod = BuildPod(
            build_image=self.build_image,
            git_image=self.git_image,
            resources=self.pod_resources,
            service_account=self.service_account,
            push_secret=self.push_secret,
            git_secret=self.git_secret,
            dockerfile_configmap=configmap["metadata"]["name"] if configmap else "",
            labels={"twinme.ai/commit": commit, **({"dagster/run-id": run_id} if run_id else {})},
        )
        script = build_script(
            ref=ref,
            dockerfile=dockerfile_arg,
            build_args=self.build_args,
            registry=registry,
            tls_verify=self.tls_verify,
        )
        job = job_manifest(
            name,
            pod=pod,
            clone=clone_script(url, commit),
            build=script,
            timeout_s=self.timeout_s,
            ttl_s=self.ttl_after_finished_s,
        )
        started = time.time()
        try:
            batch.create_namespaced_job(self.namespace, job, _request_timeout=_TIMEOUT)
        except ApiException as exc:
            raise self._api_error(exc, f"creating the build Job {self.namespace}/{name}") from None
        log.info(
            f"build Job {self.namespace}/{name} ({self.build_image}) builds {redact(url)} at "
            f"{commit[:12]} ({branch}) with {dockerfile_arg} and pushes {ref}"
        )
        watch = self._follow(core, batch, name, started, log)
        return self._result(watch, name, ref, started, log)

    # --- cluster access -----------------------------------------------------------------------

    def _api_error(self, exc: Exception, what: str) -> ImageBuildError:
        """An API failure as an ImageBuildError with the HTTP status and the fix."""
        from kubernetes.client.exceptions import ApiException

        if not isinstance(exc, ApiException):
            inner = getattr(exc, "k8s_api_exception", None)  # dagster-k8s's retries gave up
            if not isinstance(inner, ApiException):
                return ImageBuildError(redact(f"{what} failed: {type(exc).__name__}: {exc}"))
            exc = inner
        fix = {
            401: "the cluster credentials were refused: renew the kubeconfig or the token",
            403: "grant the run's ServiceAccount the Role of BUILD_RBAC_RULES in namespace "
            f"{self.namespace} (deploy/dagster/rbac.yaml)",
            404: f"apply deploy/build/ (namespace {self.namespace}) or set TWINME_BUILD_NAMESPACE",
        }.get(exc.status or 0, "check the cluster and retry")
        detail = k8s_job.api_error_detail(exc)
        return ImageBuildError(
            redact(f"{what} failed: HTTP {exc.status} {exc.reason or ''}: {detail}. Fix: {fix}")
        )

    def _dockerfile(
        self, dockerfile: Path, checkout: Path | None
    ) -> tuple[str, dict[str, Any] | None]:
        """(``-f`` value, ConfigMap to create or ``None``)."""
        if checkout is not None:
            with contextlib.suppress(ValueError):
                relative = dockerfile.resolve().relative_to(Path(checkout).resolve())
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
        from kubernetes.client.exceptions import ApiException

        name = body["metadata"]["name"]
        try:
            core.create_namespaced_config_map(self.namespace, body, _request_timeout=_TIMEOUT)
            return
        except ApiException as exc:
            if exc.status != 409:
                raise self._api_error(exc, f"creating ConfigMap {self.namespace}/{name}") from None
        try:
            existing: Any = core.read_namespaced_config_map(
                name, self.namespace, _request_timeout=_TIMEOUT
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
