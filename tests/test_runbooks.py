"""docs/runbooks.md, run exactly as written: each ``<!-- runbook: NAME -->`` bash block.

The blocks run with ``bash -euo pipefail`` in a fresh shell, with the environment an operator
would have: a private sandbox (``TWINME_HOME``), a Kubernetes API (kmock) through ``KUBECONFIG``,
a local app as ``TWINME_API_URL``, and a Slack receiver. A runbook that drifts from the code fails
here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support.api_app import ControlledApp
from tests.support.k8s_emulator import INITIAL_IMAGE, DeploymentController
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.cli import today_partition
from twinme_ops.sandbox.servers import DATABASE, SandboxInfo, ensure_sandbox, stop_sandbox
from twinme_ops.servers.kube import KubernetesResource

RUNBOOKS = Path(__file__).resolve().parents[1] / "docs" / "runbooks.md"
NEW_IMAGE = "127.0.0.1:5000/twinme-api@sha256:" + "3" * 64


def runbook(name: str) -> str:
    """The bash block that follows ``<!-- runbook: name -->`` in docs/runbooks.md."""
    match = re.search(
        rf"<!-- runbook: {re.escape(name)} -->\s*```bash\n(.*?)```", RUNBOOKS.read_text(), re.S
    )
    assert match, f"docs/runbooks.md has no runbook block {name!r}"
    return match.group(1)


def run_block(
    name: str, env: dict[str, str], cwd: Path, script: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a runbook block (or ``script``) as an operator would paste it, venv tools on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    full_env = {**env, "PATH": f"{bin_dir}:{env.get('PATH', os.environ['PATH'])}"}
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script or runbook(name)],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def home(server_tmp_root: Path) -> Iterator[Path]:
    """A private sandbox for the runbooks (they back up, drill and recover it)."""
    home = server_tmp_root / "runbook-home"
    home.mkdir(mode=0o755)
    try:
        yield home
    finally:
        stop_sandbox(home)


@pytest.fixture(scope="module")
def sandbox_env(home: Path) -> tuple[dict[str, str], SandboxInfo]:
    info = ensure_sandbox(home)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TWINME_", "DAGSTER_", "SLACK_")) and k != "KUBECONFIG"
    }
    env["TWINME_HOME"] = str(home)
    return env, info


def _ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    return proc.stdout + proc.stderr


def test_backup_then_drill_runbooks(sandbox_env: tuple[dict[str, str], SandboxInfo]) -> None:
    env, info = sandbox_env
    env = {**env, "SET_ID": today_partition()}
    out = _ok(run_block("backup", env, info.home))
    assert f"backup set {env['SET_ID']} complete" in out
    assert "restore drill passed" in out
    out = _ok(run_block("drill", env, info.home))
    assert out.count("RUN_SUCCESS") == 2  # the newest set, then the given one
    # without SET_ID the block stops before running anything, naming the variable
    del env["SET_ID"]
    proc = run_block("drill", env, info.home)
    assert proc.returncode != 0 and "export SET_ID" in proc.stderr


def test_recover_runbook_restores_the_backup(
    sandbox_env: tuple[dict[str, str], SandboxInfo],
) -> None:
    env, info = sandbox_env
    _ok(run_block("backup", {**env, "SET_ID": today_partition()}, info.home))
    with psycopg.connect(info.database_url, autocommit=True) as conn:
        before = conn.execute("SELECT count(*) FROM document_chunks").fetchone()
        conn.execute(
            "DELETE FROM document_chunks WHERE id IN (SELECT id FROM document_chunks LIMIT 5)"
        )
    # the wrong confirmation touches nothing
    proc = run_block("recover", {**env, "CONFIRM_DB": "not-the-db"}, info.home)
    assert proc.returncode != 0
    with psycopg.connect(info.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM document_chunks").fetchone() != before
    out = _ok(run_block("recover", {**env, "CONFIRM_DB": DATABASE}, info.home))
    assert "RUN_SUCCESS" in out
    with psycopg.connect(info.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM document_chunks").fetchone() == before


def test_rollback_runbook_goes_back_to_the_previous_image(
    k8s_emulator,
    deployment_controller: DeploymentController,
    app: ControlledApp,
    slack_receiver: SlackReceiver,
    sandbox_env: tuple[dict[str, str], SandboxInfo],
    tmp_path: Path,
) -> None:
    env, info = sandbox_env
    kubeconfig = k8s_emulator[0]
    kube = KubernetesResource(kubeconfig=str(kubeconfig), rollout_timeout_s=30, poll_interval_s=0.2)
    kube.set_image("api", NEW_IMAGE, change_cause="twinme release " + "a" * 40)
    kube.wait_for_rollout()
    env = {
        **env,
        "KUBECONFIG": str(kubeconfig),
        "TWINME_API_URL": app.url,
        "SLACK_WEBHOOK_URL": slack_receiver.url,
    }
    out = _ok(run_block("rollback", env, tmp_path))
    assert kube.current_image("api") == INITIAL_IMAGE
    assert f"rolled back to {INITIAL_IMAGE}: healthy" in out
    (message,) = slack_receiver.messages
    assert "rollback" in message and INITIAL_IMAGE in message
    assert "kmock-dummy-token" not in out + message


def test_deployment_tests_runbook(
    app: ControlledApp, sandbox_env: tuple[dict[str, str], SandboxInfo], tmp_path: Path
) -> None:
    env, _ = sandbox_env
    env = {**env, "TWINME_API_URL": app.url}
    cfg = tmp_path / "short.yaml"
    # the spec's 30 s load test, shortened for the suite through the job's own config
    cfg.write_text("ops:\n  deployment_tests:\n    config:\n      load_duration_s: 3\n")
    block = runbook("deployment-tests")
    assert block.strip() == "dagster job execute -m twinme_ops.definitions -j deployment_tests_job"
    # the block as written, plus the shortened config
    command = block.strip() + f" -c {cfg}"
    assert "RUN_SUCCESS" in _ok(run_block("deployment-tests", env, tmp_path, command))
    app.delay_s = 0.3  # a slow API fails the job
    proc = run_block("deployment-tests", env, tmp_path, command)
    assert proc.returncode != 0 and "p95" in proc.stdout + proc.stderr


def test_restore_by_hand_runbook_reads_an_age_set_with_stock_tools(
    sandbox_env: tuple[dict[str, str], SandboxInfo], server_tmp: Path
) -> None:
    """An age-encrypted set, restored by age | zstd -d | psql / pg_restore onto another server."""
    import pyrage

    from twinme_ops.common.pgtools import pg_bin_dir
    from twinme_ops.scratch.postgres import PostgresServer

    env, info = sandbox_env
    identity = pyrage.x25519.Identity.generate()
    key = server_tmp / "key.txt"
    key.write_text(f"# public key: {identity.to_public()}\n{identity}\n")
    set_id = today_partition()
    backup_env = {
        **env,
        "SET_ID": set_id,
        "TWINME_BACKUP_AGE_RECIPIENTS": str(identity.to_public()),
        "TWINME_BACKUP_AGE_IDENTITY_FILE": str(key),
    }
    _ok(run_block("backup", backup_env, info.home))
    target = PostgresServer.start(server_tmp / "restore-target")
    try:
        by_hand = {
            **env,
            "SET_DIR": str(info.home / "backups" / set_id),
            "AGE_KEY": str(key),
            "RESTORE_URL": target.url("postgres"),
            "PATH": f"{pg_bin_dir()}:{env.get('PATH', os.environ['PATH'])}",
        }
        proc = run_block("restore-by-hand", by_hand, info.home)
        out = _ok(proc)
        assert "restored into database twinme_restored_" in out
        expected, got = [ln for ln in proc.stdout.splitlines() if ln.strip().isdigit()][-2:]
        assert expected == got and int(got) > 0
        assert str(identity) not in out
    finally:
        target.stop(mode="immediate")
