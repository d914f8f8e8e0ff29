"""A hung job is stopped at its maximum runtime, and the person on call is told that night.

The nightly backup hangs for real here: a transaction holds an ``ACCESS EXCLUSIVE`` lock on a
sandbox table (what a long migration does), so the dump waits for it. ``dagster dev`` runs the
repo's ``dagster.yaml`` (run monitoring on) with a one-second poll; the run is launched with a
short ``dagster/max_runtime`` tag, as an operator could for any launch. Then: run monitoring
fails the run, ``slack_on_run_failure_sensor`` sends the alert, no manifest is written, and no
``pg_dump`` is left waiting on the database.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from dagster import DagsterRunStatus

from tests.support.dagster_dev import LOCATION_NAME, REPO_ROOT, DagsterDev, sandbox_dagster_dev
from twinme_ops.definitions import build_definitions
from twinme_ops.defs.backups.assets import backup_partitions
from twinme_ops.defs.executors import MAX_RUNTIME_TAG
from twinme_ops.sandbox.servers import SandboxInfo

MAX_RUNTIME_S = 20
WAIT_S = 240.0

_RUN_QUERY = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      status
      startTime
      endTime
      tags { key value }
    }
  }
  logsForRun(runId: $runId, limit: 10000) {
    ... on EventConnection { events { __typename ... on MessageEvent { message } } }
  }
}
"""
_STEPS_QUERY = """
query Steps($runId: ID!) {
  runOrError(runId: $runId) { ... on Run { stepStats { stepKey status } } }
}
"""


@pytest.fixture(scope="module")
def monitored_dagster_dev(
    sandbox: SandboxInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DagsterDev]:
    # the repo's run monitoring, polled every second instead of every minute
    monitoring = {
        "run_monitoring": {
            "enabled": True,
            "start_timeout_seconds": 300,
            "max_resume_run_attempts": 0,
            "poll_interval_seconds": 1,
        }
    }
    with sandbox_dagster_dev(
        sandbox,
        tmp_path_factory.mktemp("dagster-dev-limits"),
        extra_env={"TWINME_DAGSTER_URL": "https://dagster.twinme.test"},
        instance_overrides=monitoring,
    ) as dev:
        yield dev


@pytest.fixture
def locked_users_table(sandbox: SandboxInfo) -> Iterator[psycopg.Connection]:
    """A transaction holding ACCESS EXCLUSIVE on ``users`` until the test ends: dumps wait."""
    conn = psycopg.connect(sandbox.database_url, application_name="twinme-test-migration")
    try:
        conn.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        yield conn
    finally:
        conn.rollback()
        conn.close()


def _dump_sessions(sandbox: SandboxInfo) -> list[str]:
    """The backup's sessions still working on the database (pg_dump's and the row counts')."""
    with psycopg.connect(sandbox.database_url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT application_name || ': ' || state || ' ' || coalesce(wait_event_type, '') "
            "FROM pg_stat_activity WHERE application_name LIKE 'twinme_ops%' AND state <> 'idle'"
        ).fetchall()
    return [r[0] for r in rows]


def test_the_repo_instance_enforces_every_jobs_max_runtime() -> None:
    # every job but the recovery carries a limit; the repo's instance runs run monitoring
    defs = build_definitions()
    limits = {
        job.name: job.tags.get(MAX_RUNTIME_TAG)
        for job in defs.get_repository_def().get_all_jobs()
        if not job.name.startswith("__")
    }
    unlimited = {name for name, limit in limits.items() if limit is None}
    assert unlimited == {"recover_job"}, limits
    # the tags only act where run monitoring runs: locally and in the Helm deployment
    local = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    assert local["run_monitoring"]["enabled"] is True
    values = yaml.safe_load((REPO_ROOT / "deploy" / "dagster" / "values.yaml").read_text())
    assert values["dagsterDaemon"]["runMonitoring"]["enabled"] is True
    # the nightly backup must end (or fail and alert) before the 04:00 drill and the morning
    assert 3600 <= int(limits["nightly_backup_job"] or 0) <= 6 * 3600


def _launch_hung_backup(dev: DagsterDev, sandbox: SandboxInfo, tags: dict[str, str]) -> str:
    """Tonight's backup, launched like the UI does, once its dump really waits on the lock and
    the other components are done (so that only the PostgreSQL step can be stopped)."""
    partition = backup_partitions.get_last_partition_key()
    assert partition is not None
    run_id = dev.client().submit_job_execution(
        "nightly_backup_job",
        repository_location_name=LOCATION_NAME,
        tags={"dagster/partition": partition, **tags},
    )
    deadline = time.monotonic() + WAIT_S
    while not any("pg_dump" in s and "Lock" in s for s in _dump_sessions(sandbox)):
        assert time.monotonic() < deadline, f"pg_dump never waited on the lock:\n{dev.log_tail()}"
        time.sleep(0.5)
    others = {"redis_backup", "files_backup"}
    while True:
        run = dev.graphql(_STEPS_QUERY, {"runId": run_id})["runOrError"]
        done = {s["stepKey"] for s in run.get("stepStats") or [] if s["status"] == "SUCCESS"}
        if others <= done:
            return run_id
        assert time.monotonic() < deadline, f"{others - done} never finished:\n{dev.log_tail()}"
        time.sleep(0.5)


def _finished(dev: DagsterDev, run_id: str) -> tuple[dict[str, Any], list[str]]:
    """The run once it has ended, and its event messages."""
    deadline = time.monotonic() + WAIT_S
    while True:
        data = dev.graphql(_RUN_QUERY, {"runId": run_id})
        run = data["runOrError"]
        if run["status"] in ("FAILURE", "SUCCESS", "CANCELED"):
            return run, [e.get("message") or "" for e in data["logsForRun"]["events"]]
        assert time.monotonic() < deadline, f"run still {run['status']}:\n{dev.log_tail()}"
        time.sleep(1)


def _the_alert(dev: DagsterDev, run_id: str) -> str:
    """The one Slack alert about this run (the freshness sensor may also speak of the store)."""
    assert dev.slack is not None
    link = f"https://dagster.twinme.test/runs/{run_id}"

    def run_alerts() -> list[str]:
        return [m for m in dev.slack.messages if link in m] if dev.slack else []

    deadline = time.monotonic() + WAIT_S
    while not run_alerts():
        assert time.monotonic() < deadline, f"no Slack alert for run {run_id}:\n{dev.log_tail()}"
        time.sleep(1)
    time.sleep(5)  # a second alert for the same run would arrive by now
    (alert,) = run_alerts()
    return alert


def _nothing_left_in_the_database(sandbox: SandboxInfo) -> None:
    """No session of the stopped backup keeps waiting on (or later holds) locks or a snapshot."""
    deadline = time.monotonic() + 30
    while _dump_sessions(sandbox):
        assert time.monotonic() < deadline, f"left waiting: {_dump_sessions(sandbox)}"
        time.sleep(0.5)


def test_a_hung_backup_is_failed_at_its_max_runtime_and_alerted(
    sandbox: SandboxInfo,
    monitored_dagster_dev: DagsterDev,
    locked_users_table: psycopg.Connection,
) -> None:
    dev = monitored_dagster_dev
    assert dev.backup_dir is not None
    run_id = _launch_hung_backup(dev, sandbox, {MAX_RUNTIME_TAG: str(MAX_RUNTIME_S)})

    run, messages = _finished(dev, run_id)
    assert run["status"] == DagsterRunStatus.FAILURE.value
    ran_for = run["endTime"] - run["startTime"]
    assert MAX_RUNTIME_S <= ran_for < MAX_RUNTIME_S + 60, ran_for
    assert any(f"maximum runtime of {MAX_RUNTIME_S} seconds" in m for m in messages), messages
    # a set without its manifest is not a backup: none was written
    assert not list(Path(dev.backup_dir).rglob("manifest.json"))

    # the person on call is told, once: the job, the set, why it stopped, the run
    alert = _the_alert(dev, run_id)
    headline = alert.splitlines()[0]
    partition = backup_partitions.get_last_partition_key()
    assert "nightly_backup_job FAILED" in headline and f"set {partition}" in headline, alert
    assert f"exceeded its maximum runtime of {MAX_RUNTIME_S} seconds" in alert, alert
    assert "No manifest was written for this set" in alert
    _nothing_left_in_the_database(sandbox)


def test_a_backup_terminated_from_the_ui_says_so_and_leaves_nothing_behind(
    sandbox: SandboxInfo,
    monitored_dagster_dev: DagsterDev,
    locked_users_table: psycopg.Connection,
) -> None:
    dev = monitored_dagster_dev
    assert dev.backup_dir is not None
    run_id = _launch_hung_backup(dev, sandbox, {})
    dev.client().terminate_run(run_id)  # the UI's Terminate button

    run, _ = _finished(dev, run_id)
    assert run["status"] == DagsterRunStatus.CANCELED.value
    assert not list(Path(dev.backup_dir).rglob("manifest.json"))
    alert = _the_alert(dev, run_id)
    headline = alert.splitlines()[0]
    assert headline.startswith(":warning: TwinMe nightly_backup_job CANCELED"), alert
    assert "component: PostgreSQL (step postgres_backup)" in headline, alert
    assert "the run was terminated (from the UI or the GraphQL API)" in alert, alert
    assert "No manifest was written for this set" in alert
    _nothing_left_in_the_database(sandbox)
