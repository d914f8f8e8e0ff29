"""Pushed code never sees production, on this machine: real pushes, real npm, real servers.

The pushed commit is ``tests/support/app_probe`` (committed to a real bare repository, released by
``release_job``'s ``source_checkout`` and ``app_tests`` with the runner ``defs/resources.py``
builds). Its test script prints its whole environment, hex-encoded so that no redaction can hide
a leak, and tries to reach the embedded sandbox's PostgreSQL and Redis at their real addresses,
PostgreSQL's Unix socket, a file under ``$TWINME_HOME``, the kubeconfig, twinme_ops's own
``/proc/<pid>/environ``, and the internet; a dependency's install script does the same. This
process holds fake but realistic production secrets in its environment meanwhile. Its
integration script logs into the throwaway PostgreSQL (SCRAM, a vector query) and pings the
throwaway Redis with nothing but Node.

Needs root (namespaces, system users), Node >= 18 and npm, like CI.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.app_probe_run import (
    ALLOWED_NAMES,
    FILE_SECRET,
    KUBE_TOKEN,
    PROBE_APP,
    SECRET_VALUES,
    SECRETS,
    environments,
    probe_lines,
    push_probe,
    release,
)
from tests.support.git_repos import Repo
from tests.support.list_log import ListLog
from tests.support.unprivileged import run_unprivileged
from twinme_ops.defs.release.resources import make_app_test_runner
from twinme_ops.release.app_tests.isolation import TESTS_USER, hidden_paths
from twinme_ops.release.app_tests.k8s import KubernetesAppTestRunner
from twinme_ops.release.app_tests.local import LocalAppTestRunner, Step, plan
from twinme_ops.release.app_tests.runner import OFFLINE_COMMANDS, AppTestsFailed
from twinme_ops.sandbox.servers import SandboxInfo
from twinme_ops.scratch.postgres import PostgresServer

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("npm") is None, reason="needs root and npm"
)


def reachable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((host, port)) == 0


@pytest.fixture(scope="module")
def probed(
    sandbox: SandboxInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """One release of the probe, with production-like secrets around it (module-wide)."""
    root = tmp_path_factory.mktemp("probe")
    pg = PostgresServer.attach(sandbox.home / "sandbox" / "postgres")
    socket_path = pg.socket_dir / f".s.PGSQL.{pg.port}"
    (sandbox.home / "probe-secret.txt").write_text(FILE_SECRET)
    (sandbox.home / "probe-secret.txt").chmod(0o644)  # only hiding keeps it from pushed code
    kubeconfig = sandbox.home.parent / "kubeconfig-probe.yaml"
    kubeconfig.write_text(f"users: [{{name: x, user: {{token: {KUBE_TOKEN}}}}}]\n")
    kubeconfig.chmod(0o644)
    targets = {
        "tcp": [
            {"name": "sandbox-pg", "host": "127.0.0.1", "port": sandbox.postgres_port},
            {"name": "sandbox-redis", "host": "127.0.0.1", "port": sandbox.redis_port},
            {"name": "internet", "host": "1.1.1.1", "port": 443},
        ],
        "unix": [{"name": "sandbox-pg-socket", "path": str(socket_path)}],
        "files": [
            {"name": "twinme-home", "path": str(sandbox.home / "probe-secret.txt")},
            {"name": "kubeconfig", "path": str(kubeconfig)},
            {"name": "ops-environ", "path": f"/proc/{os.getpid()}/environ"},
        ],
    }
    # the servers are up and these addresses work from here: what fails inside is isolation
    assert reachable("127.0.0.1", sandbox.postgres_port)
    assert reachable("127.0.0.1", sandbox.redis_port)
    assert socket_path.exists()
    repo = Repo(root / "git")
    sha = push_probe(repo, targets)
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SECRETS.items():
            patch.setenv(name, value)
        patch.setenv("KUBECONFIG", str(kubeconfig))
        runner = make_app_test_runner("local", str(sandbox.home))
        assert isinstance(runner, LocalAppTestRunner) and runner.isolation == "namespaces"
        result, messages = release(repo, root / "checkouts", sha, runner)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    yield {"messages": messages, "sha": sha, "targets": targets, "result": result}


def test_pushed_code_gets_no_secret_and_only_the_allowlisted_environment(
    probed: dict[str, Any],
) -> None:
    envs = environments(probed["messages"])
    assert set(envs) == {"test", "install"}, "the probe ran as a test and as an install script"
    for who, env in envs.items():
        names = {n for n in env if not n.startswith("npm_")}
        assert names <= ALLOWED_NAMES, (who, sorted(names - ALLOWED_NAMES))
        text = json.dumps(env)
        for secret in [*SECRET_VALUES, KUBE_TOKEN, FILE_SECRET]:
            assert secret not in text, (who, secret)
        for name in ("AWS_ACCESS_KEY_ID", "SLACK_WEBHOOK_URL", "KUBECONFIG", "TWINME_HOME"):
            assert name not in env, (who, name)
        assert env["HOME"].startswith(tempfile_root()) and env["CI"] == "true"
    # the offline steps got the throwaway servers, not production's
    assert envs["test"]["DATABASE_URL"].startswith("postgresql://app_tests:")
    assert "@127.0.0.1:" in envs["test"]["DATABASE_URL"]
    # nothing of it in the run's log either (no redaction is configured in this test)
    everything = "\n".join(probed["messages"])
    for secret in [*SECRET_VALUES, KUBE_TOKEN, FILE_SECRET]:
        assert secret not in everything, secret


def tempfile_root() -> str:
    import tempfile

    return str(Path(tempfile.gettempdir()) / "twinme-app-tests-")


def test_pushed_code_reaches_neither_the_sandbox_nor_the_network_nor_ops_files(
    probed: dict[str, Any],
) -> None:
    probes = probe_lines(probed["messages"], "PROBE")
    for who in ("", "install-"):  # the test script and a dependency's install script alike
        assert probes[f"{who}uid"] not in ("0", ""), "pushed code runs unprivileged"
        for target in ("sandbox-pg", "sandbox-redis", "internet", "sandbox-pg-socket"):
            outcome = probes[f"{who}{target}"]
            assert outcome.startswith("ERR "), (who, target, outcome)
        for target in ("twinme-home", "kubeconfig", "ops-environ"):
            outcome = probes[f"{who}{target}"]
            # hidden: a directory becomes an empty tmpfs, a file /dev/null
            assert outcome.startswith("ERR ") or outcome == "READ 0", (who, target, outcome)
        # its own PID namespace: a handful of processes, not the machine's
        count = probes[f"{who}proc"]
        assert count.startswith("PIDS ") and int(count.split()[1]) < 10, count


def test_the_integration_tests_use_their_own_postgres_and_redis(probed: dict[str, Any]) -> None:
    found = probe_lines(probed["messages"], "PG")
    # logged in as the non-superuser app_tests role, pgvector and pg_trgm already created
    assert found["app_tests"] == "app_tests f pg_trgm,plpgsql,vector"
    assert found["vector-nearest"] == "1"
    assert found["copy-to-program"].startswith("REFUSED"), "no way to run a program as the server"
    assert probe_lines(probed["messages"], "REDIS") == {"+PONG": ""}
    tests = probed["result"].asset_materializations_for_node("app_tests")[0].metadata
    assert tests["sha"].value == probed["sha"]
    for command in OFFLINE_COMMANDS:
        assert f"duration_s: {command}" in tests
    # npm ci ran in its two phases, the scripts without network
    messages = probed["messages"]
    assert "$ npm ci --ignore-scripts" in messages
    assert "$ npm rebuild --foreground-scripts" in messages


def test_a_failing_test_fails_the_asset_with_its_last_lines(
    sandbox: SandboxInfo, tmp_path: Path
) -> None:
    repo = Repo(tmp_path / "git")
    failing = "'use strict';\nconsole.log('checking the cache: boom-41c9');\nprocess.exit(3);\n"
    empty = {"tcp": [], "unix": [], "files": []}
    sha = push_probe(repo, empty, {"test/integration.js": failing})
    runner = make_app_test_runner("local", str(sandbox.home))
    result, messages = release(repo, tmp_path / "checkouts", sha, runner)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "app_tests"
    error = failure.step_failure_data.error
    assert error is not None
    assert "`npm run test:integration` exited with code 3" in error.message
    assert "boom-41c9" in error.message and sha in error.message
    assert any("boom-41c9" in m for m in messages)  # streamed to the run's log as it ran


def test_without_root_it_refuses_and_names_the_fix(tmp_path: Path) -> None:
    checkout = tmp_path / "app"
    shutil.copytree(PROBE_APP, checkout)
    ran = ListLog()

    def attempt() -> str:
        LocalAppTestRunner().run(checkout, sha="0" * 40, commands=["npm ci"], log=ran)
        return "ran unisolated"

    outcome = run_unprivileged(attempt)
    assert outcome.startswith("IsolationUnavailable: isolating pushed code needs root"), outcome
    assert "TWINME_APP_TESTS_ISOLATION=none" in outcome and "Fix:" in outcome
    assert not any(m.startswith("$ ") for m in ran), "no command may run unisolated"


def test_the_opt_out_is_loud_and_the_probe_does_see_through_it(
    sandbox: SandboxInfo, tmp_path: Path
) -> None:
    """The control experiment: without namespaces the same probe reaches the sandbox, so the
    errors above are isolation's doing, not the probe's. The environment stays clean."""
    checkout = tmp_path / "app"
    shutil.copytree(PROBE_APP, checkout)
    (sandbox.home / "probe-secret.txt").write_text(FILE_SECRET)
    targets = {
        "tcp": [{"name": "sandbox-pg", "host": "127.0.0.1", "port": sandbox.postgres_port}],
        "unix": [],
        "files": [{"name": "twinme-home", "path": str(sandbox.home / "probe-secret.txt")}],
    }
    (checkout / "test" / "targets.json").write_text(json.dumps(targets))
    lines: list[str] = []
    warnings: list[str] = []

    class Log:
        def debug(self, msg: str) -> None:
            lines.append(msg)

        def info(self, msg: str) -> None:
            lines.append(msg)

        def warning(self, msg: str) -> None:
            warnings.append(msg)

    with pytest.MonkeyPatch.context() as patch:
        for name, value in SECRETS.items():
            patch.setenv(name, value)
        runner = LocalAppTestRunner(isolation="none", services=False)
        runner.run(checkout, sha="0" * 40, commands=["npm run test:ci"], log=Log())
    assert len(warnings) == 1 and "NOT ISOLATED" in warnings[0]
    probes = probe_lines(lines, "PROBE")
    assert probes["sandbox-pg"] == "CONNECTED"
    assert probes["twinme-home"] == f"READ {len(FILE_SECRET)}"
    env = environments(lines)["test"]
    assert not any(secret in json.dumps(env) for secret in SECRET_VALUES)
    assert "AWS_SECRET_ACCESS_KEY" not in env and "DATABASE_URL" not in env


def test_npm_ci_is_split_so_no_package_script_runs_with_the_network(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text('{"scripts": {"prepare": "tsc"}}')
    assert plan("npm ci", tmp_path) == [
        Step("npm ci --ignore-scripts", online=True),
        Step("npm rebuild --foreground-scripts", online=False),
        Step("npm run prepare", online=False),
    ]
    assert plan("npm audit --audit-level moderate", tmp_path) == [
        Step("npm audit --audit-level moderate", online=True)
    ]
    assert plan("npm run test:integration", tmp_path) == [
        Step("npm run test:integration", online=False)
    ]
    assert plan("npm ci", tmp_path, install_scripts_network=True)[1].online


def test_the_environment_switch_picks_the_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TWINME_APP_TESTS_RUNNER", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    local = make_app_test_runner("local", str(tmp_path / "home"))
    assert isinstance(local, LocalAppTestRunner) and local.isolation == "namespaces"
    for path in ("home", "kubeconfig", "dagster"):
        assert str(tmp_path / path) in local.hidden_paths
    production = make_app_test_runner("production", str(tmp_path))
    assert isinstance(production, KubernetesAppTestRunner)
    assert production.namespace == "twinme-build"
    monkeypatch.setenv("TWINME_APP_TESTS_RUNNER", "local")
    monkeypatch.setenv("TWINME_APP_TESTS_ISOLATION", "none")
    forced = make_app_test_runner("production", str(tmp_path))
    assert isinstance(forced, LocalAppTestRunner) and forced.isolation == "none"
    monkeypatch.setenv("TWINME_APP_TESTS_RUNNER", "docker")
    with pytest.raises(ValueError, match="TWINME_APP_TESTS_RUNNER"):
        make_app_test_runner("local", str(tmp_path))


def test_hiding_never_hides_the_sandbox_itself(tmp_path: Path) -> None:
    (tmp_path / "home" / "sub").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    chosen = hidden_paths(
        [tmp_path / "home", tmp_path / "home" / "sub", tmp_path, tmp_path / "absent", "/"],
        keep=[tmp_path / "work"],
    )
    # tmp_path holds the work directory: not hidden; home/sub is inside home: hidden with it
    assert chosen == [tmp_path / "home"]
    assert TESTS_USER == "twinme-app-tests"


def test_a_command_over_its_time_limit_is_killed_with_everything_it_started(
    tmp_path: Path,
) -> None:
    """A daemon the pushed code detached (its own session) dies with its PID namespace."""
    checkout = tmp_path / "app"
    shutil.copytree(PROBE_APP, checkout)
    marker = "twinme-leftover-41c9"
    daemon = f'setsid node -e "setTimeout(() => {{}}, 300000)" {marker}'
    hang = f"sh -c '{daemon} & sleep 300'"
    runner = LocalAppTestRunner(services=False)
    started = time.monotonic()
    with pytest.raises(AppTestsFailed, match="timed out after 1 s"):
        runner.run(checkout, sha="0" * 40, commands=[hang], log=logging.getLogger("t"), timeout_s=1)
    assert time.monotonic() - started < 30
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _processes_named(marker):
        time.sleep(0.1)
    assert _processes_named(marker) == []


def _processes_named(name: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if name.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
