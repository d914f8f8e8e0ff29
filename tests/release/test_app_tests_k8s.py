"""app_tests in production: a Job in the build namespace, on kmock, with its pod really run.

The runner (``KubernetesAppTestRunner``) talks to kmock's emulator through the official client;
``tests/support/app_tests_kubelet.py`` plays admission, the Job controller and a kubelet that runs
the
pod for real: the ``source`` init container unpacks the ConfigMaps, PostgreSQL (the wheel's, with
a stand-in of the pgvector image's entrypoint) and Redis run as native sidecars in the pod's own
network namespace, and the ``tests`` container runs npm and node as uid 1000. The pushed commit
is ``tests/support/app_probe`` (see tests/release/test_app_tests_isolation.py).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.support.app_probe_run import (
    KUBE_TOKEN,
    SECRET_VALUES,
    SECRETS,
    environments,
    probe_lines,
    push_probe,
    release,
)
from tests.support.app_tests_kubelet import AppTestsKubelet
from tests.support.git_repos import Repo
from tests.support.k8s_emulator import EmulatorHandle
from tests.support.k8s_job_cluster import restricted_violations
from tests.support.kubernetes_versions import VERSIONS
from tests.support.list_log import ListLog
from twinme_ops.release.app_tests.job import MARKER
from twinme_ops.release.app_tests.k8s import (
    POSTGRES_IMAGE,
    REDIS_IMAGE,
    TEST_IMAGE,
    KubernetesAppTestRunner,
)
from twinme_ops.release.app_tests.runner import (
    OFFLINE_COMMANDS,
    AppTestsFailed,
    AppTestsUnavailable,
)
from twinme_ops.release.git import GitRepoResource

NAMESPACE = "twinme-build"
pytestmark = pytest.mark.skipif(shutil.which("npm") is None, reason="needs npm and node")
NO_TARGETS: dict[str, Any] = {"tcp": [], "unix": [], "files": []}
ALLOWED_TEST_ENV = {"HOME", "TMPDIR", "npm_config_cache", "CI", "NODE_ENV", "LANG", "TZ"}
ALLOWED_TEST_ENV |= {"FORCE_COLOR", "NO_COLOR", "npm_config_audit", "npm_config_fund"}
ALLOWED_TEST_ENV |= {"npm_config_update_notifier", "DATABASE_URL", "TEST_DATABASE_URL"}
ALLOWED_TEST_ENV |= {"REDIS_URL", "TEST_REDIS_URL", "PGHOST", "PGPORT", "PGUSER", "PGPASSWORD"}
ALLOWED_TEST_ENV |= {"PGDATABASE"}


@pytest.fixture
def kubelet(k8s_emulator: tuple[Path, EmulatorHandle]) -> Iterator[AppTestsKubelet]:
    kubeconfig, handle = k8s_emulator
    fake = AppTestsKubelet(
        kubeconfig, handle, namespace=NAMESPACE, service_accounts=("default", "twinme-app-tests")
    ).start()
    try:
        yield fake
    finally:
        fake.stop()


def runner(kubeconfig: Path, **overrides: Any) -> KubernetesAppTestRunner:
    return KubernetesAppTestRunner(
        kubeconfig=str(kubeconfig), poll_interval_s=0.1, start_timeout_s=60, **overrides
    )


def checkout_of(tmp_path: Path, files: dict[str, str] | None = None) -> tuple[str, Path]:
    repo = Repo(tmp_path / "git")
    sha = push_probe(repo, NO_TARGETS, files)
    git = GitRepoResource(remote=str(repo.bare), workdir_root=str(tmp_path / "co"))
    return sha, git.checkout(sha, tmp_path / "co" / sha)


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    """Every (path, value) of a JSON document."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")


def assert_nothing_left(kubelet: AppTestsKubelet) -> None:
    """The runner deleted the Job and the ConfigMaps; the pod goes with the Job (the garbage
    collector's part, asynchronous as in a cluster)."""
    assert kubelet.jobs() == {} and kubelet.configmaps() == {}
    deadline = time.monotonic() + 5
    while kubelet.pods() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert kubelet.pods() == []


def test_a_release_tests_the_commit_in_a_locked_down_job_and_cleans_up(
    k8s_emulator: tuple[Path, EmulatorHandle],
    kubelet: AppTestsKubelet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    repo = Repo(tmp_path / "git")
    sha = push_probe(repo, NO_TARGETS)
    result, messages = release(repo, tmp_path / "co", sha, runner(k8s_emulator[0]))
    assert result.success, [e.message for e in result.all_events if e.is_failure]

    run = kubelet.wait_done()
    job = run.job
    spec = job["spec"]["template"]["spec"]
    # the pod holds nothing of production
    assert restricted_violations(spec) == []
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["serviceAccountName"] == "twinme-app-tests"
    for where, value in walk(job):
        assert not where.endswith(("secretKeyRef", "envFrom", ".secret")), where
        if isinstance(value, str):
            assert not any(s in value for s in [*SECRET_VALUES, KUBE_TOKEN]), where
    for container in [*spec["initContainers"], *spec["containers"]]:
        ctx = container["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True and ctx["runAsUser"] != 0
        assert ":latest" not in container["image"]
    # throwaway PostgreSQL and Redis as native sidecars, held back until they answer
    assert [c["name"] for c in spec["initContainers"]] == ["source", "postgres", "redis"]
    for sidecar, image in (("postgres", POSTGRES_IMAGE), ("redis", REDIS_IMAGE)):
        [c] = [c for c in spec["initContainers"] if c["name"] == sidecar]
        assert c["restartPolicy"] == "Always" and "exec" in c["startupProbe"]
        assert c["image"] == image
    [tests] = spec["containers"]
    assert tests["image"] == TEST_IMAGE
    assert {e["name"] for e in tests["env"]} <= ALLOWED_TEST_ENV
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] > 0
    assert job["metadata"]["labels"]["twinme.ai/commit"] == sha
    for version in VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)
    # the source came from the ConfigMaps, checked against its sha256
    assert any(line.endswith(": OK") for line in run.logs["source"]), run.logs["source"]
    assert f"source of {sha} unpacked into " in run.logs["source"][-1]

    # what the tests found, streamed into the run's log (markers hidden)
    assert probe_lines(messages, "PG")["app_tests"] == "app_tests f pg_trgm,plpgsql,vector"
    assert probe_lines(messages, "REDIS") == {"+PONG": ""}
    assert probe_lines(messages, "PROBE")["uid"] == "1000"
    env = environments(messages)["test"]
    assert not any(s in json.dumps(env) for s in SECRET_VALUES)
    assert not any(MARKER in m for m in messages)
    metadata = result.asset_materializations_for_node("app_tests")[0].metadata
    for command in OFFLINE_COMMANDS:
        assert f"duration_s: {command}" in metadata
    # the Job, its pod and the source ConfigMaps are gone
    assert any(m.startswith(f"deleted Job {job['metadata']['name']}") for m in messages)
    assert_nothing_left(kubelet)


def test_a_failing_test_fails_with_the_same_text_as_locally(
    k8s_emulator: tuple[Path, EmulatorHandle], kubelet: AppTestsKubelet, tmp_path: Path
) -> None:
    failing = "'use strict';\nconsole.log('checking the cache: boom-41c9');\nprocess.exit(3);\n"
    sha, checkout = checkout_of(tmp_path, {"test/integration.js": failing})
    log = ListLog()
    with pytest.raises(AppTestsFailed) as excinfo:
        runner(k8s_emulator[0]).run(checkout, sha=sha, commands=OFFLINE_COMMANDS, log=log)
    error = excinfo.value
    assert str(error).startswith(
        "app tests failed: `npm run test:integration` exited with code 3 after"
    )
    assert "boom-41c9" in str(error) and "checking the cache: boom-41c9" in error.failed.tail
    assert [r.command for r in error.results] == list(OFFLINE_COMMANDS)
    assert [r.ok for r in error.results] == [True, True, False]
    assert any("boom-41c9" in m for m in log.lines)
    assert_nothing_left(kubelet)


def test_each_command_has_its_time_limit(
    k8s_emulator: tuple[Path, EmulatorHandle], kubelet: AppTestsKubelet, tmp_path: Path
) -> None:
    sha, checkout = checkout_of(tmp_path)
    hang = "node -e 'setTimeout(() => {}, 60000)'"
    with pytest.raises(AppTestsFailed, match="timed out after 1 s") as excinfo:
        runner(k8s_emulator[0]).run(
            checkout, sha=sha, commands=["node --version", hang], log=ListLog(), timeout_s=1
        )
    assert excinfo.value.failed.command == hang and excinfo.value.failed.timed_out
    assert_nothing_left(kubelet)


def test_a_pod_the_namespace_refuses_fails_at_once_with_the_reason(
    k8s_emulator: tuple[Path, EmulatorHandle], tmp_path: Path
) -> None:
    kubeconfig, handle = k8s_emulator
    fake = AppTestsKubelet(kubeconfig, handle, namespace=NAMESPACE).start()  # no ServiceAccount
    try:
        sha, checkout = checkout_of(tmp_path)
        with pytest.raises(AppTestsUnavailable) as excinfo:
            runner(kubeconfig).run(checkout, sha=sha, commands=["node --version"], log=ListLog())
        message = str(excinfo.value)
        assert "cannot create its pod" in message
        assert 'serviceaccount "twinme-app-tests" not found' in message
        assert "apply deploy/build/" in message
        assert_nothing_left(fake)
    finally:
        fake.stop()


def test_an_image_that_cannot_be_pulled_fails_at_once_and_names_its_variable(
    k8s_emulator: tuple[Path, EmulatorHandle], kubelet: AppTestsKubelet, tmp_path: Path
) -> None:
    kubelet.pull_errors.add(POSTGRES_IMAGE)
    sha, checkout = checkout_of(tmp_path)
    with pytest.raises(AppTestsUnavailable) as excinfo:
        runner(k8s_emulator[0]).run(checkout, sha=sha, commands=["node --version"], log=ListLog())
    message = str(excinfo.value)
    assert "container postgres cannot start: ErrImagePull" in message
    assert "TWINME_APP_TESTS_POSTGRES_IMAGE" in message
    assert_nothing_left(kubelet)


def test_the_restricted_check_catches_what_admission_would_refuse() -> None:
    """The checker the fake admission and the tests rely on does refuse the usual mistakes."""
    from twinme_ops.release.app_tests.job import PodSettings, job_manifest

    job = job_manifest(
        "j",
        sha="0" * 40,
        commands=["npm ci"],
        configmaps=["j-src-0"],
        source_sha256="0" * 64,
        password="p",
        settings=PodSettings(TEST_IMAGE, POSTGRES_IMAGE, REDIS_IMAGE, {}),
        timeout_s=60,
        labels={},
    )
    spec = job["spec"]["template"]["spec"]
    assert restricted_violations(spec) == []
    spec["initContainers"][1]["securityContext"]["capabilities"] = {"add": ["SYS_ADMIN"]}
    spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    spec["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    problems = restricted_violations(spec)
    assert len(problems) == 4, problems
