"""capacity_report_job as the code location builds it from the environment, and on a set the
real nightly backup wrote (Redis's used_memory is recorded at backup time)."""

from __future__ import annotations

import json
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import pytest

from tests.support.backup_helpers import ENV_VARS, PARTITION, run_backup, store_for
from tests.support.capacity_sets import GIB, MIB, write_nightly_set
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.capacity.limits import (
    BACKUP_WINDOW,
    FILES_VOLUME,
    POSTGRES_VOLUME,
    REDIS_MAXMEMORY,
)
from twinme_ops.definitions import build_definitions

TODAY = date(2026, 12, 7)


def run_job(as_of: date) -> tuple[dg.ExecuteInProcessResult, dict]:
    job = build_definitions().resolve_job_def("capacity_report_job")
    result = job.execute_in_process(
        run_config={"ops": {"capacity_report": {"config": {"as_of": as_of.isoformat()}}}},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    meta = {}
    if result.success:
        (mat,) = result.asset_materializations_for_node("capacity_report")
        meta = {k: v.value for k, v in mat.metadata.items()}
    return result, meta


@pytest.fixture
def capacity_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slack_receiver: SlackReceiver
) -> str:
    for var in (*ENV_VARS, BACKUP_WINDOW, FILES_VOLUME, POSTGRES_VOLUME, REDIS_MAXMEMORY):
        monkeypatch.delenv(var, raising=False)
    url = f"file://{tmp_path}/backups"
    monkeypatch.setenv("TWINME_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("TWINME_BACKUP_URL", url)
    monkeypatch.setenv("SLACK_WEBHOOK_URL", slack_receiver.url)
    return url


def test_the_job_reads_its_limits_from_the_environment(
    capacity_env: str, monkeypatch: pytest.MonkeyPatch, slack_receiver: SlackReceiver
) -> None:
    store = store_for(capacity_env)
    for i in range(10):  # Redis 1 GiB + 100 MiB a night: 1924 MiB today
        write_nightly_set(
            store,
            TODAY - timedelta(days=9 - i),
            postgres_bytes=5 * GIB,
            redis_bytes=GIB + i * 100 * MIB,
            files_bytes=GIB,
            read_bytes=GIB,
            duration_s=60,
        )
    monkeypatch.setenv(REDIS_MAXMEMORY, "3gb")
    result, meta = run_job(TODAY)
    assert result.success
    assert meta["alarming"] == ["redis"]
    # (3072 - 1924 MiB) / 100 MiB a day
    assert meta["redis_days_left"] == pytest.approx(11.48, abs=0.01)
    (message,) = slack_receiver.messages
    assert "Redis memory reaches its limit" in message and "TWINME_REDIS_MAXMEMORY" in message

    # a typo fails the run and says how to write it
    monkeypatch.setenv(REDIS_MAXMEMORY, "3 gigabytes")
    result, _ = run_job(TODAY)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    text = str(failure.step_failure_data.error)  # type: ignore[union-attr]
    assert "TWINME_REDIS_MAXMEMORY='3 gigabytes' is not a size" in text and "Fix: " in text


def test_the_schedule_runs_the_job_weekly() -> None:
    defs = build_definitions()
    schedule = defs.resolve_schedule_def("capacity_report_schedule")
    assert schedule.job_name == "capacity_report_job"
    assert schedule.cron_schedule == "0 7 * * 1"
    assert schedule.execution_timezone == "Europe/Paris"


def test_a_real_nightly_set_feeds_the_report(backup_env: dict[str, str]) -> None:
    """One set taken by nightly_backup_job from the sandbox's PostgreSQL, Redis and files."""
    result = run_backup(PARTITION)
    assert result.success
    store = store_for(backup_env["TWINME_BACKUP_URL"])
    manifest = json.loads(store.get_bytes(PARTITION, "manifest.json"))
    used = manifest["artifacts"]["redis"]["source"]["used_memory"]
    assert used > 100_000  # Redis's INFO memory: a real server uses some
    result, meta = run_job(date.fromisoformat(PARTITION))
    assert result.success and meta["sets"] == 1
    assert meta["redis_bytes"] == used
    assert meta["postgres_bytes"] == manifest["artifacts"]["postgres"]["source"]["database_size"]
    assert meta["files_bytes"] == manifest["artifacts"]["files"]["source"]["bytes"]
    assert "too little history (1 sets" in meta["capacity"]
