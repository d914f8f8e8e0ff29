"""The image build Job of :mod:`twinme_ops.release.images.cluster`: its pod, scripts and checks.

Pure functions, no cluster: what runs in the build pod and with which privileges.

The pod (``restricted`` Pod Security level, nothing more):

- init container ``clone`` (:data:`GIT_IMAGE`): ``git fetch`` of exactly the commit into an
  ``emptyDir``; credentials, if any, only from the optional git Secret through the environment
  (``GIT_USERNAME``/``GIT_PASSWORD`` or ``GIT_TOKEN``), read by a credential helper, never in
  the Job spec or a URL;
- container ``build`` (:data:`BUILDAH_IMAGE`): ``buildah bud --isolation chroot
  --storage-driver vfs --format docker``, then ``buildah push --digestfile
  /dev/termination-log``: the kubelet copies that file into ``state.terminated.message``,
  which is how the digest leaves the pod;
- both as uid/gid 1000 (the buildah image's ``build`` user), ``runAsNonRoot``,
  ``allowPrivilegeEscalation: false``, every capability dropped, seccomp ``RuntimeDefault``
  (the clone's root filesystem read-only; the build's writable, as buildah's defaults in the
  image may write under ``/var/tmp``: "restricted" does not ask for it); ``hostUsers: false``
  (a user namespace of the pod's own where the cluster supports it, Kubernetes >= 1.33 by
  default); no ServiceAccount token, no service links; no volume but ``emptyDir``s, the
  Dockerfile's ConfigMap and the optional registry push Secret (as ``REGISTRY_AUTH_FILE``).
"""

from __future__ import annotations

import hashlib
import re
import secrets
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twinme_ops.common.redact import redact
from twinme_ops.release.images.local import ImageBuildError

# quay.io/buildah/stable is the buildah project's own image (Fedora, buildah from Fedora's
# updates). Pinned by tag and digest: a floating tag would change the builder under a release.
# Refresh: pick a release (https://github.com/containers/buildah/releases) that contains
# containers/buildah#6961 (RUN steps in a setgroups-denied user namespace, i.e. an unprivileged
# pod), then `skopeo inspect --format '{{.Digest}}' docker://quay.io/buildah/stable:vX.Y.Z`,
# and put "quay.io/buildah/stable:vX.Y.Z@<digest>" here (or in TWINME_BUILD_IMAGE).
BUILDAH_IMAGE = (
    "quay.io/buildah/stable:v1.43.2"
    "@sha256:836f1db7d8a21dc26d63f6c4ef930cde3f2a69f3e9f4cae9cc6751ec7b7a40dc"
)
# The buildah image has no git: the clone runs in an init container of its own. Refresh the same
# way: `skopeo inspect --format '{{.Digest}}' docker://docker.io/alpine/git:vX.Y.Z`.
GIT_IMAGE = (
    "docker.io/alpine/git:v2.47.1"
    "@sha256:39ac44ff6c6f659ee55eedd221a6b7e4cdfcf9d17ea2be024f588c3ddcd3ce7d"
)
BUILD_CONTAINER = "build"
CLONE_CONTAINER = "clone"
BUILD_UID = 1000  # the buildah image's "build" user
DIGEST_FILE = "/dev/termination-log"
SOURCE_DIR = "/twinme/source"  # emptyDir: the clone, in SOURCE_DIR/repo
WORK_DIR = "/twinme/work"  # emptyDir: buildah's storage, HOME, temporary files
DOCKERFILE_DIR = "/twinme/dockerfile"  # the Dockerfile's ConfigMap
DOCKERFILE_MOUNT = f"{DOCKERFILE_DIR}/Dockerfile"
AUTH_DIR = "/twinme/registry"  # the push Secret, as a containers-auth.json
JOB_PREFIX = "twinme-build-"
POD_LABELS = {
    "app.kubernetes.io/name": "twinme-image-build",
    "app.kubernetes.io/part-of": "twinme-ops",
}
GIT_SCHEMES = ("https", "http", "git")
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_SHA_RE = re.compile(r"[0-9a-f]{40}")
_FLOATING_TAGS = {"latest", "stable", "edge", "debug", "slim", "testing", "upstream"}
CLONE_FAILED = "twinme-build: cannot fetch commit"

# What the code calls in the build namespace: the Role the Dagster run's ServiceAccount needs
# there (deploy/dagster/rbac.yaml; docs/release.md, "Building in the cluster"). Secrets are
# mounted by the kubelet and never read by twinme_ops.
BUILD_RBAC_RULES: list[dict[str, list[str]]] = [
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create", "delete"]},
    {"apiGroups": ["batch"], "resources": ["jobs/status"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get"]},
]


def validate_pinned_image(image: str, variable: str, example: str) -> str:
    """Return ``image`` if it is pinned (a version tag or a digest); raise otherwise."""
    image = (image or "").strip()
    if not image:
        raise ImageBuildError(f"no image configured. Fix: set {variable}")
    if "@sha256:" in image:
        return image
    last = image.rsplit("/", 1)[-1]
    tag = last.split(":", 1)[1] if ":" in last else ""
    if not tag or tag.lower() in _FLOATING_TAGS:
        raise ImageBuildError(
            f"refusing the image {image!r}: {'no tag' if not tag else f':{tag}'} is a floating "
            "tag, so the builder could change under a release. Fix: pin a version and a digest "
            f"(e.g. {example}) in {variable}"
        )
    return image


def git_source(remote: str, commit: str) -> str:
    """The URL the clone container fetches ``commit`` from: credentials dropped, scheme checked."""
    if not _SHA_RE.fullmatch(commit or ""):
        raise ImageBuildError(f"commit {commit!r} is not a full sha (40 lowercase hex digits)")
    shown = redact(remote) or "(none)"
    try:
        parts = urlsplit((remote or "").strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        parts, host, port = None, None, None
    if parts is None or parts.scheme not in GIT_SCHEMES or not host:
        raise ImageBuildError(
            f"the build pod clones over {', '.join(GIT_SCHEMES)}, and the git remote {shown} is "
            "none of them. Fix: set TWINME_BUILD_GIT_URL to the repository's URL as the cluster "
            "reaches it (credentials, if needed, in the Secret named by TWINME_BUILD_GIT_SECRET)"
        )
    if not parts.path.strip("/") or parts.query or parts.fragment:
        raise ImageBuildError(
            f"the git URL {shown} has no repository path, or has a query or fragment. Fix: "
            "TWINME_BUILD_GIT_URL=https://host/org/repo.git"
        )
    netloc = f"[{host}]" if ":" in host else host
    netloc += f":{port}" if port else ""
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def clone_script(url: str, commit: str) -> str:
    """Fetch exactly ``commit`` (and nothing else) into SOURCE_DIR/repo, check it out."""
    q_url, q_sha = shlex.quote(url), shlex.quote(commit)
    return "\n".join(
        [
            "set -eu",
            f"export HOME={SOURCE_DIR}/home GIT_TERMINAL_PROMPT=0",
            'mkdir -p "$HOME"',
            # credentials from the optional Secret's variables, never from the spec or the URL
            'if [ -n "${GIT_PASSWORD:-}${GIT_TOKEN:-}" ]; then',
            "  git config --global credential.helper "
            '\'!f() { [ "$1" = get ] || exit 0; echo "username=${GIT_USERNAME:-x-access-token}"; '
            'echo "password=${GIT_PASSWORD:-$GIT_TOKEN}"; }; f\'',
            "fi",
            f"git init -q {SOURCE_DIR}/repo && cd {SOURCE_DIR}/repo",
            f"git remote add origin {q_url}",
            f"if ! git fetch --no-tags --depth=1 origin {q_sha}; then",
            f'  echo "{CLONE_FAILED} {commit} from {url}" >&2',
            "  exit 3",
            "fi",
            "git -c advice.detachedHead=false checkout -q --detach FETCH_HEAD",
            f'[ "$(git rev-parse HEAD)" = {q_sha} ]',
            f'echo "fetched {commit[:12]} from {url}"',
        ]
    )


def registries_conf(registry: str, tls_verify: bool) -> str:
    """containers-registries.conf(5): plain HTTP for the push registry only, if asked."""
    lines = ['unqualified-search-registries = ["docker.io"]', 'short-name-mode = "permissive"']
    if not tls_verify:
        lines += ["", "[[registry]]", f'location = "{registry}"', "insecure = true"]
    return "\n".join(lines) + "\n"


def build_script(
    *, ref: str, dockerfile: str, build_args: Mapping[str, str], registry: str, tls_verify: bool
) -> str:
    """buildah bud + push; the digest goes to the termination log, nothing else does."""
    storage = f"--root {WORK_DIR}/storage --runroot {WORK_DIR}/run --storage-driver vfs"
    args = " ".join(f"--build-arg {shlex.quote(f'{k}={v}')}" for k, v in sorted(build_args.items()))
    q_ref = shlex.quote(ref)
    return "\n".join(
        [
            "set -eu",
            f"mkdir -p {WORK_DIR}/home {WORK_DIR}/tmp {WORK_DIR}/run",
            # storage of its own: not the image's storage.conf (fuse-overlayfs, shared stores)
            f"cat > {WORK_DIR}/storage.conf <<'EOF'",
            "[storage]",
            'driver = "vfs"',
            f'runroot = "{WORK_DIR}/run"',
            f'graphroot = "{WORK_DIR}/storage"',
            "EOF",
            f"cat > {WORK_DIR}/registries.conf <<'EOF'",
            registries_conf(registry, tls_verify).rstrip("\n"),
            "EOF",
            f"cd {SOURCE_DIR}/repo",
            f"buildah {storage} bud --isolation chroot --format docker --pull=missing"
            + (f" {args}" if args else "")
            + f" -f {shlex.quote(dockerfile)} -t {q_ref} .",
            f"buildah {storage} push --digestfile {DIGEST_FILE} {q_ref} docker://{ref}",
            f'echo "pushed {ref} as $(cat {DIGEST_FILE})"',
        ]
    )


def _restricted(read_only: bool = True) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": BUILD_UID,
        "runAsGroup": BUILD_UID,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": read_only,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


@dataclass(frozen=True)
class BuildPod:
    """What the Job's pod is made of (the builder's settings for one build)."""

    build_image: str
    git_image: str
    resources: dict[str, dict[str, str]]
    service_account: str = ""
    push_secret: str = ""
    git_secret: str = ""
    dockerfile_configmap: str = ""
    labels: dict[str, str] = field(default_factory=dict)


def job_manifest(
    name: str, *, pod: BuildPod, clone: str, build: str, timeout_s: float, ttl_s: int
) -> dict[str, Any]:
    """The ``batch/v1`` Job (camelCase, as the API takes it)."""
    volumes: list[dict[str, Any]] = [
        {"name": "source", "emptyDir": {}},
        {"name": "work", "emptyDir": {}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "source", "mountPath": SOURCE_DIR},
        {"name": "work", "mountPath": WORK_DIR},
    ]
    env = {
        "HOME": f"{WORK_DIR}/home",
        "TMPDIR": f"{WORK_DIR}/tmp",
        "XDG_RUNTIME_DIR": f"{WORK_DIR}/run",
        "BUILDAH_ISOLATION": "chroot",
        "BUILDAH_FORMAT": "docker",
        "STORAGE_DRIVER": "vfs",
        "CONTAINERS_REGISTRIES_CONF": f"{WORK_DIR}/registries.conf",
        "CONTAINERS_STORAGE_CONF": f"{WORK_DIR}/storage.conf",
    }
    if pod.dockerfile_configmap:
        volumes.append({"name": "dockerfile", "configMap": {"name": pod.dockerfile_configmap}})
        mounts.append({"name": "dockerfile", "mountPath": DOCKERFILE_DIR, "readOnly": True})
    if pod.push_secret:
        volumes.append(
            {
                "name": "registry-auth",
                "secret": {
                    "secretName": pod.push_secret,
                    "items": [{"key": ".dockerconfigjson", "path": "auth.json"}],
                },
            }
        )
        mounts.append({"name": "registry-auth", "mountPath": AUTH_DIR, "readOnly": True})
        env["REGISTRY_AUTH_FILE"] = f"{AUTH_DIR}/auth.json"
    clone_container: dict[str, Any] = {
        "name": CLONE_CONTAINER,
        "image": pod.git_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", clone],
        "volumeMounts": [{"name": "source", "mountPath": SOURCE_DIR}],
        "securityContext": _restricted(),
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
    }
    if pod.git_secret:
        clone_container["envFrom"] = [{"secretRef": {"name": pod.git_secret}}]
    build_container = {
        "name": BUILD_CONTAINER,
        "image": pod.build_image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/bin/sh", "-c", build],
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        "volumeMounts": mounts,
        "securityContext": _restricted(read_only=False),
        "resources": pod.resources,
        # the digest travels in the termination message: never replace it by the log tail
        "terminationMessagePath": DIGEST_FILE,
        "terminationMessagePolicy": "File",
    }
    labels = {**POD_LABELS, **pod.labels}
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        # the application's build steps get no token for the Kubernetes API, no service links
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        # a user namespace of its own where the cluster supports it (dropped by older ones)
        "hostUsers": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": BUILD_UID,
            "runAsGroup": BUILD_UID,
            "fsGroup": BUILD_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [clone_container],
        "containers": [build_container],
        "volumes": volumes,
    }
    if pod.service_account:
        spec["serviceAccountName"] = pod.service_account
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            # the cluster stops the build even if this process is gone; a minute later than
            # this process would, which reports it better (log tail)
            "activeDeadlineSeconds": int(timeout_s) + 60,
            "ttlSecondsAfterFinished": ttl_s,
            "template": {"metadata": {"labels": labels}, "spec": spec},
        },
    }


def digest_from_termination_message(message: str | None) -> str | None:
    """The ``sha256:...`` digest ``buildah push --digestfile`` wrote, or ``None``."""
    text = (message or "").strip()
    return text if _DIGEST_RE.fullmatch(text) else None


def dockerfile_configmap_name(content: bytes) -> str:
    """Content-addressed ConfigMap name: the same Dockerfile is uploaded once, then reused."""
    return f"twinme-dockerfile-{hashlib.sha256(content).hexdigest()[:16]}"


def job_name_for(commit: str) -> str:
    """``twinme-build-<sha12>-<random>``: unique per attempt, readable, under 63 characters."""
    return f"{JOB_PREFIX}{commit[:12]}-{secrets.token_hex(3)}"


def failure_hint(
    container: str, tail: str, *, push_secret: str, git_secret: str, registry: str
) -> str:
    """The most likely fix for a failed container, from its last log lines."""
    low = tail.lower()
    if container == CLONE_CONTAINER:
        secret = (
            f"the credentials in Secret {git_secret}"
            if git_secret
            else "TWINME_BUILD_GIT_SECRET (a Secret with GIT_USERNAME/GIT_PASSWORD or GIT_TOKEN) "
            "for a private repository"
        )
        return (
            "the build pod could not fetch the commit: check TWINME_BUILD_GIT_URL (the "
            f"repository as the cluster reaches it), that the commit was pushed, and {secret}"
        )
    if "error setting supplemental groups list" in low:
        return (
            "the buildah of TWINME_BUILD_IMAGE cannot run RUN steps as a non-root user without "
            "subordinate ids (it predates containers/buildah#6961): pin a newer "
            "quay.io/buildah/stable by tag and digest"
        )
    if "user namespace" in low and ("not permitted" in low or "not enabled" in low):
        return (
            "the node refused the unprivileged user namespace buildah needs (kernel "
            "user.max_user_namespaces, Ubuntu's apparmor_restrict_unprivileged_userns, or the "
            "runtime's default seccomp/AppArmor profile): run the build pods on nodes that allow "
            "it (a nodeSelector, or a Localhost seccomp profile that allows unshare and clone "
            "of namespaces; docs/release.md, 'Building in the cluster')"
        )
    if any(word in low for word in ("unauthorized", "denied", "authentication required")):
        secret = (
            f"Secret {push_secret} (type kubernetes.io/dockerconfigjson) holds credentials for "
            f"{registry}"
            if push_secret
            else "the registry accepts pushes from the build pod: set TWINME_BUILD_PUSH_SECRET "
            f"to a kubernetes.io/dockerconfigjson Secret with credentials for {registry}"
        )
        return f"the registry refused the push or a pull: check that {secret}"
    if "building at step" in low:
        return (
            "a Dockerfile step failed (see the log lines above): fix the application or the "
            "Dockerfile, then re-run release_job"
        )
    if "no such file or directory" in low and "dockerfile" in low:
        return "the Dockerfile is not where -f says: fix the container_image config"
    return "read the whole log of the Job (command above) and fix what it reports"
