"""A backup is a copy of the present: a past partition is refused before any work starts.

Issue 11, defect 4: "Materialize all" on ``backup_set`` offers every day since 2026-01-01, and
each run would dump today's database into a set named after a past day. Checked here, on real
Dagster (no mocks):

- the rule (:func:`check_backup_partition`) with an injected clock: today, yesterday until 12:00
  Europe/Paris (the nightly schedule's catch-up window), nothing else;
- the instance's run coordinator (the repo's ``dagster.yaml``), in process: a backfill created
  with ``instance.add_backfill`` and run by the daemon's own backfill iteration, which submits
  its runs as in production; its runs fail before they are queued, with the reason;
- the step backstop, for ``execute_in_process``, which bypasses coordinators;
- ``dagster dev`` driven through the GraphQL calls the UI makes: a backfill of past partitions,
  a "Materialize" of one old partition, then today's partition backed up for real and an old
  set still drilled.

In every refused case no step starts, no ``pg_dump`` runs and nothing is written to the store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster._core.execution.backfill import BulkActionStatus, PartitionBackfill
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.test_utils import create_test_daemon_workspace_context
from dagster._core.utils import make_new_backfill_id
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon.backfill import execute_backfill_iteration

from tests.support.backup_helpers import run_backup
from tests.support.dagster_dev import LOCATION_NAME, REPO_ROOT, DagsterDev, sandbox_dagster_dev
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.backups.store.base import BackupStore
from twinme_ops.backups.window import (
    CATCH_UP_CLOSES,
    TIMEZONE,
    BackupPartitionRefused,
    check_backup_partition,
    frozen_backup_clock,
)
from twinme_ops.definitions import build_definitions
from twinme_ops.defs.alerts.sensors import slack_on_run_failure_sensor
from twinme_ops.defs.backups.assets import backup_partitions
from twinme_ops.instance.run_coordinator import REFUSED_TAG, TwinmeRunCoordinator, takes_backup
from twinme_ops.sandbox.servers import SandboxInfo

OLD = "2026-03-02"
BACKUP_ASSETS = ("postgres_backup", "redis_backup", "files_backup", "backup_set")
WAIT_S = 240.0


def paris(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=TIMEZONE)


def _refusal(partition: str, now: datetime) -> str:
    with pytest.raises(BackupPartitionRefused) as raised:
        check_backup_partition(partition, now)
    return str(raised.value)


def _today() -> str:
    today = backup_partitions.get_last_partition_key()
    assert today is not None
    return today


# --- the rule ------------------------------------------------------------------------------------


@pytest.mark.parametrize("at", ["2026-12-04T00:00", "2026-12-04T02:00", "2026-12-04T23:59:59"])
def test_today_may_be_backed_up_at_any_hour(at: str) -> None:
    check_backup_partition("2026-12-04", paris(at))


def test_yesterday_may_be_taken_until_noon_then_it_is_refused() -> None:
    # the 02:00 tick of 2026-12-03 launched late (daemon down, run queued) still lands
    check_backup_partition("2026-12-03", paris("2026-12-04T00:30"))
    check_backup_partition("2026-12-03", paris("2026-12-04T11:59:59"))
    message = _refusal("2026-12-03", paris("2026-12-04T12:00"))
    assert "a backup is a copy of the present" in message
    assert "catch-up window for partition 2026-12-03 closed at 2026-12-04 12:00" in message
    assert "Fix: launch today's partition (2026-12-04)" in message
    _refusal("2026-12-02", paris("2026-12-04T00:30"))  # the day before yesterday: never


def test_a_past_day_is_refused_saying_why_and_what_to_do() -> None:
    message = _refusal(OLD, paris("2026-12-04T19:00"))
    assert message.startswith(f"refusing to back up partition {OLD}: ")
    assert (
        f"a backup is a copy of the present; partition {OLD} would hold today's data "
        "(2026-12-04) under a past date" in message
    )
    assert "retention, which ages sets by their id" in message
    assert "Nothing was dumped and nothing was written to the backup store" in message
    assert "yesterday's until 12:00 Europe/Paris" in message
    assert f"recover_job or restore_drill_job with set_id: {OLD}" in message


def test_a_day_that_has_not_begun_is_refused() -> None:
    message = _refusal("2026-12-05", paris("2026-12-04T23:59"))
    assert "2026-12-05 is a day that has not begun in Europe/Paris" in message
    assert "not a YYYY-MM-DD day" in _refusal("latest", paris("2026-12-04T12:00"))


def test_the_day_is_the_paris_day_not_the_utc_day() -> None:
    # 23:30 UTC on the 4th is 00:30 on the 5th in Paris (winter, UTC+1)
    now = datetime.fromisoformat("2026-12-04T23:30+00:00")
    check_backup_partition("2026-12-05", now)
    check_backup_partition("2026-12-04", now)  # yesterday in Paris, before noon
    _refusal("2026-12-03", now)
    # summer time (UTC+2): 10:30 UTC is 12:30 in Paris, the window is closed
    _refusal("2026-07-01", datetime.fromisoformat("2026-07-02T10:30+00:00"))
    check_backup_partition("2026-07-01", datetime.fromisoformat("2026-07-02T09:59+00:00"))


def test_the_window_fits_the_schedule_and_the_partitions() -> None:
    defs = build_definitions()
    schedule = defs.resolve_schedule_def("nightly_backup_schedule")
    assert schedule.execution_timezone == "Europe/Paris" == backup_partitions.timezone
    assert str(TIMEZONE) == "Europe/Paris"
    minute, hour = schedule.cron_schedule.split()[:2]  # type: ignore[union-attr]
    # the tick targets its own day; a tick missed at 02:00 is caught up long before noon
    tick = paris(f"2026-12-04T{int(hour):02d}:{int(minute):02d}")
    assert tick.time() < CATCH_UP_CLOSES
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(scheduled_execution_time=tick, instance=instance)
        [request] = schedule.evaluate_tick(context).run_requests or []
    assert request.partition_key == "2026-12-04"
    check_backup_partition("2026-12-04", tick)
    check_backup_partition("2026-12-04", tick + timedelta(hours=33, minutes=59))  # 11:59 next day


def test_only_runs_that_take_a_backup_are_gated() -> None:
    keys = frozenset(dg.AssetKey(a) for a in BACKUP_ASSETS)
    check = dg.AssetCheckKey(dg.AssetKey("backup_set"), "restore_drill")
    assert takes_backup(DagsterRun(job_name="nightly_backup_job", run_id="r1"))
    assert takes_backup(DagsterRun(job_name="__ASSET_JOB", run_id="r2", asset_selection=keys))
    # the drill of an old set (the job, or the check alone) and a manifest-only re-execution
    assert not takes_backup(DagsterRun(job_name="restore_drill_job", run_id="r3"))
    only_check = DagsterRun(
        job_name="__ASSET_JOB",
        run_id="r4",
        asset_selection=frozenset(),
        asset_check_selection=frozenset({check}),
    )
    assert not takes_backup(only_check)
    manifest_only = DagsterRun(
        job_name="nightly_backup_job", run_id="r5", step_keys_to_execute=["backup_set"]
    )
    assert not takes_backup(manifest_only)
    assert takes_backup(
        DagsterRun(
            job_name="nightly_backup_job", run_id="r6", step_keys_to_execute=["files_backup"]
        )
    )


# --- the repo instance's run coordinator, in process ----------------------------------------------


@pytest.fixture(scope="module")
def gated(
    sandbox: SandboxInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkspaceProcessContext]:
    """The repo's dagster.yaml (SQLite in a temp DAGSTER_HOME) and the code location served by
    a code server, as the daemon has them."""
    home = tmp_path_factory.mktemp("gated-home")
    (home / "dagster.yaml").write_text((REPO_ROOT / "dagster.yaml").read_text())
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_coordinator, TwinmeRunCoordinator)
        target = ModuleTarget(
            module_name="twinme_ops.definitions",
            attribute=None,
            working_directory=str(REPO_ROOT),
            location_name=LOCATION_NAME,
        )
        with create_test_daemon_workspace_context(target, instance) as workspace:
            yield workspace


def _backfill(workspace: WorkspaceProcessContext, partitions: list[str]) -> list[DagsterRun]:
    """What the UI's "Materialize all" asks for, run by the daemon's backfill iteration."""
    instance = workspace.instance
    request = workspace.create_request_context()
    backfill = PartitionBackfill.from_asset_partitions(
        backfill_id=make_new_backfill_id(),
        asset_graph=request.asset_graph,
        partition_names=partitions,
        asset_selection=[dg.AssetKey(a) for a in BACKUP_ASSETS],
        backfill_timestamp=time.time(),
        tags={},
        dynamic_partitions_store=instance,
        all_partitions=False,
        title=None,
        description=None,
        run_config=None,
    )
    instance.add_backfill(backfill)
    logger = logging.getLogger("test_backup_window.backfill")
    deadline = time.monotonic() + WAIT_S
    while True:
        errors = [e for e in execute_backfill_iteration(workspace, logger) if e is not None]
        assert not errors, errors
        runs = instance.get_runs(filters=dg.RunsFilter.for_backfill(backfill.backfill_id))
        found = instance.get_backfill(backfill.backfill_id)
        assert found is not None
        if len(runs) == len(partitions) and not [
            r for r in runs if r.status == dg.DagsterRunStatus.NOT_STARTED
        ]:
            return sorted(runs, key=lambda r: r.tags["dagster/partition"])
        assert found.status == BulkActionStatus.REQUESTED, found.status
        assert time.monotonic() < deadline, f"backfill stuck: {len(runs)} runs"


def _messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    return [e.message or "" for e in instance.all_logs(run_id)]


def _assert_refused(instance: dg.DagsterInstance, run: DagsterRun, partition: str) -> str:
    """Failed before it was queued: the reason as an engine event and as the failure, no step."""
    assert run.status == dg.DagsterRunStatus.FAILURE, run.status
    assert run.tags[REFUSED_TAG] == "backup-partition"
    events = instance.all_logs(run.run_id)
    types = {e.dagster_event_type for e in events}
    assert dg.DagsterEventType.RUN_ENQUEUED not in types
    assert dg.DagsterEventType.RUN_START not in types
    assert dg.DagsterEventType.STEP_START not in types
    record = instance.get_run_record_by_id(run.run_id)
    assert record is not None and record.start_time is None
    [engine] = [e for e in events if e.dagster_event_type == dg.DagsterEventType.ENGINE_EVENT]
    assert (engine.message or "").startswith(f"refusing to back up partition {partition}: ")
    [failure] = [e for e in events if e.dagster_event_type == dg.DagsterEventType.RUN_FAILURE]
    assert (failure.message or "").startswith("run refused before it started: refusing to back up")
    return engine.message or ""


def test_a_backfill_of_past_days_is_refused_before_any_run_is_queued(
    gated: WorkspaceProcessContext,
) -> None:
    instance = gated.instance
    runs = _backfill(gated, [OLD, "2026-03-03"])
    for run, partition in zip(runs, [OLD, "2026-03-03"], strict=True):
        message = _assert_refused(instance, run, partition)
        assert "a backup is a copy of the present" in message
    # the daemon moves on: the backfill ends, failed, instead of waiting on queued runs
    deadline = time.monotonic() + 60
    backfill_id = runs[0].tags["dagster/backfill"]
    while True:
        list(execute_backfill_iteration(gated, logging.getLogger("test_backup_window")))
        found = instance.get_backfill(backfill_id)
        assert found is not None
        if found.status != BulkActionStatus.REQUESTED:
            break
        assert time.monotonic() < deadline
    assert found.status in (BulkActionStatus.COMPLETED_FAILED, BulkActionStatus.FAILED)


def test_yesterday_is_queued_before_noon_and_refused_after(gated: WorkspaceProcessContext) -> None:
    """The real partitions (today's exists), the coordinator's clock one day ahead."""
    today = _today()
    tomorrow = (datetime.fromisoformat(today) + timedelta(days=1)).date().isoformat()
    with frozen_backup_clock(paris(f"{tomorrow}T11:59")):
        [queued] = _backfill(gated, [today])
    assert queued.status == dg.DagsterRunStatus.QUEUED, queued.status
    assert REFUSED_TAG not in queued.tags
    gated.instance.report_run_canceled(queued)  # no daemon dequeues it here; leave nothing queued
    with frozen_backup_clock(paris(f"{tomorrow}T12:00")):
        [refused] = _backfill(gated, [today])
    message = _assert_refused(gated.instance, refused, today)
    assert f"catch-up window for partition {today} closed at {tomorrow} 12:00" in message


def test_a_refused_backfill_does_not_page_anyone_but_a_refused_single_run_does(
    gated: WorkspaceProcessContext, tmp_path: Path, slack_receiver: SlackReceiver
) -> None:
    instance = gated.instance
    slack = SlackNotifier(webhook_url=slack_receiver.url, backoff_s=0.05)
    store = BackupStore(url=f"file://{tmp_path}/backups")

    def evaluate(run: DagsterRun) -> str:
        [event] = [
            e.dagster_event
            for e in instance.all_logs(run.run_id)
            if e.dagster_event_type == dg.DagsterEventType.RUN_FAILURE
        ]
        assert event is not None
        with dg.build_run_status_sensor_context(
            sensor_name="slack_on_run_failure_sensor",
            dagster_event=event,
            dagster_instance=instance,
            dagster_run=run,
            resources={"slack": slack, "backup_store": store},
        ) as context:
            result = slack_on_run_failure_sensor(context.for_run_failure())
        assert isinstance(result, dg.SkipReason)
        return result.skip_message or ""

    [of_backfill] = _backfill(gated, ["2026-03-04"])
    assert "refused before it started (backup-partition): not alerted" in evaluate(of_backfill)
    assert slack_receiver.messages == []

    # one run, as a sensor or a script would submit it: one alert with the reason
    job = build_definitions().resolve_job_def("nightly_backup_job")
    single = instance.create_run_for_job(job, tags={"dagster/partition": OLD})
    single = _submit_as_created(gated, single)
    _assert_refused(instance, single, OLD)
    assert "alerted" in evaluate(single)
    (alert,) = slack_receiver.messages
    assert "nightly_backup_job FAILED — the run failed before it started" in alert.splitlines()[0]
    assert f"Error: run refused before it started: refusing to back up partition {OLD}" in alert
    assert "a backup is a copy of the present" in alert


def _submit_as_created(workspace: WorkspaceProcessContext, run: DagsterRun) -> DagsterRun:
    """Submit a run made outside a workspace (no remote origin) through the coordinator."""
    coordinator = workspace.instance.run_coordinator
    assert isinstance(coordinator, TwinmeRunCoordinator)
    from dagster._core.run_coordinator import SubmitRunContext

    return coordinator.submit_run(SubmitRunContext(run, workspace.create_request_context()))


# --- the step backstop: execute_in_process bypasses every coordinator ----------------------------


def _in_process_backup(partition: str) -> tuple[dg.ExecuteInProcessResult, dg.DagsterInstance]:
    instance = dg.DagsterInstance.ephemeral()
    job = build_definitions().resolve_job_def("nightly_backup_job")
    result = job.execute_in_process(
        partition_key=partition, instance=instance, raise_on_error=False
    )
    return result, instance


def test_an_in_process_backup_of_a_past_day_fails_before_any_dump(
    sandbox: SandboxInfo, backup_env: dict[str, str], tmp_path: Path
) -> None:
    result, instance = _in_process_backup(OLD)
    assert not result.success
    failures = {e.step_key: e for e in result.all_events if e.is_step_failure}
    assert set(failures) == {"postgres_backup", "redis_backup", "files_backup"}
    for event in failures.values():
        data = event.step_failure_data
        assert data is not None and data.user_failure_data is not None
        description = data.user_failure_data.description or ""
        assert description.startswith(f"refusing to back up partition {OLD}: a backup is a copy")
    text = "\n".join(_messages(instance, result.run_id))
    assert "backing up into" not in text  # no component started: no pg_dump, no snapshot
    assert not result.asset_materializations_for_node("postgres_backup")
    store = Path(backup_env["TWINME_BACKUP_URL"].removeprefix("file://"))
    assert not store.exists() or not any(store.rglob("*")), sorted(store.rglob("*"))


def test_in_process_yesterday_is_taken_before_noon_and_refused_after(
    sandbox: SandboxInfo, backup_env: dict[str, str]
) -> None:
    today = _today()
    tomorrow = (datetime.fromisoformat(today) + timedelta(days=1)).date().isoformat()
    store = Path(backup_env["TWINME_BACKUP_URL"].removeprefix("file://"))
    with frozen_backup_clock(paris(f"{tomorrow}T12:00")):
        late, _ = _in_process_backup(today)
    assert not late.success
    assert not (store / today).exists()
    with frozen_backup_clock(paris(f"{tomorrow}T11:59")):
        caught_up, _ = _in_process_backup(today)
    assert caught_up.success
    assert (store / today / "manifest.json").exists()


# --- dagster dev: the UI's own calls ------------------------------------------------------------

_LAUNCH_BACKFILL = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}
"""

_BACKFILL = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill {
      status
      runs { runId status tags { key value } }
    }
    ... on Error { message }
  }
}
"""

_LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on Error { message }
  }
}
"""

_RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status tags { key value } }
  }
  logsForRun(runId: $runId, limit: 10000) {
    ... on EventConnection { events { __typename ... on MessageEvent { message } } }
  }
}
"""


@pytest.fixture(scope="module")
def ui(sandbox: SandboxInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterDev]:
    """``dagster dev`` with the repo's dagster.yaml, its own backup store and Slack receiver."""
    with sandbox_dagster_dev(sandbox, tmp_path_factory.mktemp("dagster-dev-window")) as dev:
        yield dev


def _repository(dev: DagsterDev) -> str:
    data = dev.graphql("{ repositoriesOrError { ... on RepositoryConnection { nodes { name } } } }")
    [repo] = [n["name"] for n in data["repositoriesOrError"]["nodes"]]
    return repo


def _finished(dev: DagsterDev, run_id: str) -> tuple[dict[str, Any], list[str], list[str]]:
    """The run once it has ended, its event messages and event types."""
    deadline = time.monotonic() + WAIT_S
    while True:
        data = dev.graphql(_RUN, {"runId": run_id})
        run = data["runOrError"]
        if run["status"] in ("FAILURE", "SUCCESS", "CANCELED"):
            events = data["logsForRun"]["events"]
            return run, [e.get("message") or "" for e in events], [e["__typename"] for e in events]
        assert time.monotonic() < deadline, f"run still {run['status']}:\n{dev.log_tail()}"
        time.sleep(1)


def _store_files(dev: DagsterDev) -> list[Path]:
    return sorted(p for p in Path(dev.backup_dir).rglob("*") if p.is_file())


def _assert_refused_in_ui(dev: DagsterDev, run_id: str, partition: str) -> None:
    run, messages, types = _finished(dev, run_id)
    assert run["status"] == "FAILURE", run
    assert {"key": REFUSED_TAG, "value": "backup-partition"} in run["tags"]
    # never queued, never started, no step: no pg_dump, no snapshot, no tar
    never = {"RunEnqueuedEvent", "RunStartingEvent", "RunStartEvent", "ExecutionStepStartEvent"}
    assert not never & set(types), types
    reason = f"refusing to back up partition {partition}: a backup is a copy of the present"
    assert any(m.startswith(reason) for m in messages), messages
    assert any(m.startswith(f"run refused before it started: {reason}") for m in messages)


def test_ui_backfill_of_past_partitions_is_refused_and_writes_nothing(ui: DagsterDev) -> None:
    partitions = [OLD, "2026-03-03", "2026-03-04"]
    params = {
        "assetSelection": [{"path": [a]} for a in BACKUP_ASSETS],
        "partitionNames": partitions,
        "fromFailure": False,
        "tags": [],
    }
    launched = ui.graphql(_LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]
    deadline = time.monotonic() + WAIT_S
    while True:
        backfill = ui.graphql(_BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        if backfill["status"] not in ("REQUESTED",) and len(backfill["runs"]) == len(partitions):
            break
        assert time.monotonic() < deadline, f"backfill {backfill}:\n{ui.log_tail()}"
        time.sleep(1)
    assert backfill["status"] in ("COMPLETED_FAILED", "FAILED"), backfill["status"]
    by_partition = {
        next(t["value"] for t in r["tags"] if t["key"] == "dagster/partition"): r
        for r in backfill["runs"]
    }
    assert sorted(by_partition) == partitions
    for partition, run in by_partition.items():
        _assert_refused_in_ui(ui, run["runId"], partition)
    assert _store_files(ui) == []


def test_ui_materialize_of_one_old_partition_is_refused(ui: DagsterDev) -> None:
    """The asset graph's "Materialize" with partition 2026-03-02 selected (a single run)."""
    params = {
        "selector": {
            "repositoryLocationName": LOCATION_NAME,
            "repositoryName": _repository(ui),
            "pipelineName": "__ASSET_JOB",
            "assetSelection": [{"path": [a]} for a in BACKUP_ASSETS],
            "assetCheckSelection": [],
        },
        "mode": "default",
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": OLD}]},
        "runConfigData": {},
    }
    launched = ui.graphql(_LAUNCH_RUN, {"params": params})["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    _assert_refused_in_ui(ui, launched["run"]["runId"], OLD)
    # and the job from the launchpad, as the dagster-graphql client submits it
    run_id = ui.client().submit_job_execution(
        "nightly_backup_job",
        repository_location_name=LOCATION_NAME,
        tags={"dagster/partition": "2026-03-05"},
    )
    _assert_refused_in_ui(ui, run_id, "2026-03-05")
    assert _store_files(ui) == []


def test_ui_today_is_backed_up_and_an_old_set_can_still_be_drilled(
    ui: DagsterDev, monkeypatch: pytest.MonkeyPatch
) -> None:
    today = _today()
    run_id = ui.client().submit_job_execution(
        "nightly_backup_job",
        repository_location_name=LOCATION_NAME,
        tags={"dagster/partition": today},
    )
    run, messages, _ = _finished(ui, run_id)
    assert run["status"] == "SUCCESS", "\n".join(messages[-20:])
    assert (Path(ui.backup_dir) / today / "manifest.json").exists()

    # an old set, taken on its own day (this process's clock), into the same store
    for var in ("TWINME_HOME", "TWINME_BACKUP_URL"):
        monkeypatch.setenv(var, ui.env[var])
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    assert run_backup(OLD).success  # its clock reads 02:00 on OLD's day
    assert (Path(ui.backup_dir) / OLD / "manifest.json").exists()
    drill_id = ui.client().submit_job_execution(
        "restore_drill_job",
        repository_location_name=LOCATION_NAME,
        run_config={"ops": {"restore_drill_op": {"config": {"set_id": OLD}}}},
    )
    drill, messages, _ = _finished(ui, drill_id)
    assert drill["status"] == "SUCCESS", "\n".join(messages[-20:])
    assert any(f"restore drill of set {OLD} passed" in m for m in messages)


def test_cli_refuses_a_past_partition_in_one_line_before_any_run(
    sandbox, backup_env, capsys: pytest.CaptureFixture[str]
) -> None:
    from twinme_ops import cli

    assert cli.main(["backup", "--partition", "2026-01-05"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "a backup is a copy of the present" in lines[0]
    assert "2026-01-05" in lines[0] and not captured.out.strip()
    assert BackupStore(url=backup_env["TWINME_BACKUP_URL"]).list_sets() == []
