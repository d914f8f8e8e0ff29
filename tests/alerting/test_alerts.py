"""Slack alerts that help at 3 a.m., delivered to a real HTTP receiver on 127.0.0.1.

Every alert kind goes through the one formatter (twinme_ops.alerting.messages) and SlackNotifier:
backup
and drill failures (with the last good set's id, size and age read from the store), releases
rolled back to a healthy or an unhealthy version, a recovery that stopped half-way, runs that no
step reported (never started; a job without the hook), rate limits, a Slack that keeps failing,
secrets and the run link.
"""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from tests.support.backup_helpers import (
    read_manifest,
    run_backup,
    run_drill_job,
    run_text,
    store_for,
)
from tests.support.production import recover
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.alerting.alert import ALERTED_TAG, Where
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.alerting.slack_delivery import retry_after_seconds
from twinme_ops.backups.pitr.archive import WalArchive
from twinme_ops.backups.store.base import MIB, BackupStore
from twinme_ops.common.redact import register_secret
from twinme_ops.definitions import build_definitions
from twinme_ops.defs.alerts.sensors import (
    slack_on_run_canceled_sensor,
    slack_on_run_failure_sensor,
)
from twinme_ops.defs.alerts.steps import release_failure, step_failure
from twinme_ops.defs.backups.retention import backup_retention, retention_job
from twinme_ops.defs.backups.wal_retention import wal_archive_retention
from twinme_ops.defs.resources import build_resources
from twinme_ops.release.rollback import RollbackOutcome
from twinme_ops.sandbox.servers import DATABASE

DAGSTER_URL = "https://dagster.twinme.example"
SHA = "0123456789abcdef0123456789abcdef01234567"
NEW_IMAGE = "registry.example/twinme-api@sha256:" + "2" * 64
OLD_IMAGE = "registry.example/twinme-api@sha256:" + "1" * 64
GOOD_SET, BAD_SET = "2026-11-23", "2026-11-24"


def _fast(receiver: SlackReceiver, **kw: Any) -> SlackNotifier:
    """A notifier on the receiver with short backoffs (the retry logic is the production one)."""
    return SlackNotifier(webhook_url=receiver.url, backoff_s=0.05, **kw)


def _sensor(
    instance: dg.DagsterInstance,
    run_id: str,
    event: dg.DagsterEvent,
    slack: SlackNotifier,
    store: BackupStore,
) -> str:
    """Evaluate slack_on_run_failure_sensor on one failed run, as the daemon would."""
    run = instance.get_run_by_id(run_id)
    assert run is not None
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


def _outcome(healthy: bool) -> RollbackOutcome:
    detail = "rollout complete and verification passed" if healthy else "p95 950 ms > 200 ms"
    return RollbackOutcome(OLD_IMAGE, healthy, detail)


# --- the formatter and the delivery, straight to the receiver -------------------------------


@pytest.mark.parametrize("healthy", [True, False])
def test_release_failure_says_sha_image_and_whether_the_rollback_is_healthy(
    healthy: bool, slack_receiver: SlackReceiver
) -> None:
    where = Where(job="release_job", run_id="r-1234567890", step="api_deployment", sha=SHA)
    reason = f"rollout of {SHA[:12]} failed: ProgressDeadlineExceeded"
    alert = release_failure(where, reason, NEW_IMAGE, _outcome(healthy), OLD_IMAGE)
    assert _fast(slack_receiver, dagster_url=DAGSTER_URL).send(alert)

    (text,) = slack_receiver.messages
    headline = text.splitlines()[0]  # what a locked phone shows
    assert SHA[:12] in headline and "FAILED" in headline
    assert ("rollback healthy" if healthy else "rollback NOT healthy") in headline
    assert f"Commit: {SHA}" in text and f"Image: {NEW_IMAGE}" in text
    state = "healthy" if healthy else "NOT healthy"
    assert f"Rollback: rolled back to {OLD_IMAGE}: {state}" in text
    assert "ProgressDeadlineExceeded" in text
    assert ("passed verification" in text) is healthy
    assert f"{DAGSTER_URL}/runs/r-1234567890" in text
    # the channel shows the same facts as blocks, with a button to the run
    blocks = slack_receiver.payloads[0]["blocks"]
    rendered = json.dumps(blocks)
    assert NEW_IMAGE in rendered and f"rolled back to {OLD_IMAGE}: {state}" in rendered
    (actions,) = [b for b in blocks if b["type"] == "actions"]
    assert actions["elements"][0]["url"] == f"{DAGSTER_URL}/runs/r-1234567890"


def test_run_link_only_when_the_dagster_url_is_set(slack_receiver: SlackReceiver) -> None:
    where = Where(job="release_job", run_id="abcdef12-3456", step="api_deployment", sha=SHA)
    alert = release_failure(where, "verification failed", NEW_IMAGE, _outcome(True))
    assert _fast(slack_receiver, dagster_url=DAGSTER_URL + "/").send(alert)
    assert _fast(slack_receiver).send(alert)
    with_url, without = slack_receiver.messages
    assert f"Run: {DAGSTER_URL}/runs/abcdef12-3456" in with_url
    assert "/runs/" not in without and "Run: abcdef12 (job release_job)" in without
    assert not [b for b in slack_receiver.payloads[1]["blocks"] if b["type"] == "actions"]


def test_a_dagster_url_that_is_not_a_url_drops_the_link_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad link setting must not stop the code location, and so the backups, from loading."""
    monkeypatch.setenv("TWINME_DAGSTER_URL", "dagster.internal:3000")
    with caplog.at_level(logging.WARNING, logger="twinme_ops.slack"):
        slack = build_resources()["slack"]
    assert slack.dagster_url == ""
    assert "TWINME_DAGSTER_URL='dagster.internal:3000' is not an http(s) URL" in caplog.text
    assert "Fix:" in caplog.text


def test_no_secret_reaches_slack_or_the_log(
    slack_receiver: SlackReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    register_secret("registered-S3cret-value")
    error = (
        "connection to postgresql://twinme:Db-Passw0rd@db.internal:5432/twinme failed; "
        f"password=Kv-Secret-9 token=tok-Secret-1 registered-S3cret-value {slack_receiver.url}"
    )
    where = Where(job="release_job", run_id="r1", step="api_deployment", sha=SHA)
    alert = release_failure(where, error, NEW_IMAGE, _outcome(False))
    assert _fast(slack_receiver, dagster_url=DAGSTER_URL).send(alert)
    with caplog.at_level(logging.INFO, logger="twinme_ops.slack"):
        assert not SlackNotifier().send(alert)  # not configured: logged instead
    everything = b"".join(slack_receiver.raw).decode() + caplog.text
    assert "db.internal" in everything  # the message is still there...
    for secret in (
        "Db-Passw0rd",
        "Kv-Secret-9",
        "tok-Secret-1",
        "registered-S3cret",
        "secrettoken",
    ):
        assert secret not in everything, secret  # ...without its secrets


def test_a_429_is_retried_after_retry_after_and_delivered_once(
    slack_receiver: SlackReceiver,
) -> None:
    slack_receiver.fail_next = [429]
    slack_receiver.retry_after = "1"
    started = time.monotonic()
    assert _fast(slack_receiver).send("rate limited, then fine")
    assert time.monotonic() - started >= 1.0  # waited as Slack asked
    assert len(slack_receiver.raw) == 2
    assert slack_receiver.messages == ["rate limited, then fine"]


def test_retry_after_is_capped_and_every_5xx_is_retried(slack_receiver: SlackReceiver) -> None:
    slack_receiver.fail_next = [429, 502, 504]
    slack_receiver.retry_after = "3600"  # a job must not hang an hour on Slack
    started = time.monotonic()
    assert _fast(slack_receiver, max_retry_after_s=0.2).send("eventually")
    assert time.monotonic() - started < 5
    assert len(slack_receiver.raw) == 4 and slack_receiver.messages == ["eventually"]


def test_retry_after_header_forms() -> None:
    now = time.time()
    assert retry_after_seconds("7") == 7
    assert retry_after_seconds(" 1.5 ") == 1.5
    in_a_minute = format_datetime(datetime.fromtimestamp(now, UTC) + timedelta(seconds=60), True)
    assert 58 <= (retry_after_seconds(in_a_minute, now) or 0) <= 61
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_an_undeliverable_alert_is_logged_and_never_raises(
    slack_receiver: SlackReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    slack_receiver.fail_next = [500] * 10
    with caplog.at_level(logging.WARNING, logger="twinme_ops.slack"):
        assert not _fast(slack_receiver, max_retries=2).send("lost alert")
        assert not _fast(slack_receiver, max_retries=0).send("x")
        assert not SlackNotifier(webhook_url="http://127.0.0.1:1/hook", max_retries=0).send("y")
    assert len(slack_receiver.raw) == 4  # 1 + 2 retries, then 1 without retries
    assert "HTTP 500 after 2 retries" in caplog.text and "alert was: lost alert" in caplog.text
    assert "Connection refused" in caplog.text or "Errno 111" in caplog.text
    assert slack_receiver.messages == []


# --- through the real jobs ------------------------------------------------------------------


def test_backup_and_drill_failures_name_the_set_and_the_last_good_one(
    sandbox,
    backup_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    slack_receiver: SlackReceiver,
) -> None:
    monkeypatch.setenv("TWINME_DAGSTER_URL", DAGSTER_URL)
    store = store_for(backup_env["TWINME_BACKUP_URL"])

    # 1. a good set, while Slack answers 500 to everything: the run succeeds, the loss is logged
    slack_receiver.fail_next = [500] * 4
    instance = dg.DagsterInstance.ephemeral()
    good = run_backup(GOOD_SET, instance=instance)
    assert good.success
    assert slack_receiver.messages == [] and len(slack_receiver.raw) == 4  # 1 + 3 retries
    logs = run_text(instance, good)
    assert "Slack alert not delivered (HTTP 500 after 3 retries" in logs
    assert "TwinMe backup completed successfully" in logs and "secrettoken" not in logs
    total_mb = f"{read_manifest(store, GOOD_SET)['total_bytes'] / MIB:,.1f} MB"

    # 2. the next night Redis is unreachable: one alert, naming the set and the last good set
    secret = "Redis-Pa55-word"
    monkeypatch.setenv("REDIS_URL", f"redis://:{secret}@127.0.0.1:1/0")
    instance = dg.DagsterInstance.ephemeral()
    bad = run_backup(BAD_SET, instance=instance)
    assert not bad.success
    (alert,) = slack_receiver.messages
    headline = alert.splitlines()[0]
    assert "nightly_backup_job FAILED" in headline and "component: Redis" in headline
    assert f"set {BAD_SET}" in headline
    assert re.search(rf"Last good set: {GOOD_SET}, {re.escape(total_mb)}, \d+ min old", alert)
    assert f"Run: {DAGSTER_URL}/runs/{bad.run_id}" in alert
    assert "Next: No manifest was written" in alert
    assert secret not in alert + json.dumps(slack_receiver.payloads) + run_text(instance, bad)
    # the hook reported it: the run-failure sensor stays silent for this run
    run = instance.get_run_by_id(bad.run_id)
    assert run is not None and run.tags[ALERTED_TAG] == f"{bad.run_id}:redis_backup"
    slack = build_resources()["slack"]
    verdict = _sensor(instance, bad.run_id, bad.get_run_failure_event(), slack, store)
    assert "already alerted" in verdict and len(slack_receiver.messages) == 1

    # 3. the good set's Redis artifact rots: its drill fails, and no good set is left
    monkeypatch.delenv("REDIS_URL")
    artifact = Path(backup_env["TWINME_BACKUP_URL"].removeprefix("file://")) / GOOD_SET
    name = read_manifest(store_for(backup_env["TWINME_BACKUP_URL"]), GOOD_SET)["artifacts"]
    rdb = artifact / name["redis"]["name"]
    data = bytearray(rdb.read_bytes())
    data[len(data) // 2] ^= 0x01
    rdb.write_bytes(bytes(data))
    drill = run_drill_job(GOOD_SET)
    assert not drill.success
    alert = slack_receiver.messages[-1]
    assert "restore_drill_job FAILED — component: restore drill" in alert.splitlines()[0]
    assert f"Error: restore drill of set {GOOD_SET} FAILED" in alert and "redis" in alert
    assert f"set {GOOD_SET}" in alert.splitlines()[0]
    assert "Did not restore: redis\n" in alert and "Restored:" not in alert
    assert "Last good set: none" in alert
    assert f"{DAGSTER_URL}/runs/{drill.run_id}" in alert


def test_recovery_failure_says_what_was_restored_and_where_to_return(
    production: dict[str, Any],  # noqa: F811 (fixture)
    backup_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    slack_receiver: SlackReceiver,
) -> None:
    from tests.support.production import PROD_REDIS_PASSWORD

    assert run_backup(GOOD_SET).success
    slack_receiver.messages.clear()
    monkeypatch.setenv("TWINME_DAGSTER_URL", DAGSTER_URL)

    def replay_breaks(*args: Any, **kwargs: Any) -> None:
        url = production["redis"].url(with_password=True)
        raise ConnectionError(f"lost {url} during the replay")

    monkeypatch.setattr("twinme_ops.defs.recovery.jobs.restore_redis", replay_breaks)
    config = {"set_id": GOOD_SET, "confirm": DATABASE}
    result = recover(config, dg.DagsterInstance.ephemeral())
    assert not result.success
    (alert,) = [m for m in slack_receiver.messages if "FAILED" in m]
    headline = alert.splitlines()[0]
    assert "recover_job FAILED — component: recovery restore" in headline
    assert f"set {GOOD_SET}" in headline
    port = production["redis"].port
    # the state is laid out as facts below, not repeated in the error line
    assert f"Error: recovery of redis failed: lost redis://:***@127.0.0.1:{port}/0 " in alert
    assert "during the replay\n" in alert
    assert "Restored: postgres\n" in alert and "Not restored: redis, files\n" in alert
    assert re.search(r"Safety backup: set safety-\S+ \(recover_job with set_id safety-", alert)
    assert f"Run: {DAGSTER_URL}/runs/{result.run_id}" in alert
    assert "Next: Production may be partly restored and the API is scaled down" in alert
    assert PROD_REDIS_PASSWORD not in "".join(slack_receiver.messages)


def test_a_run_that_never_started_is_alerted_by_the_sensor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slack_receiver: SlackReceiver
) -> None:
    monkeypatch.setenv("TWINME_DAGSTER_URL", DAGSTER_URL)
    monkeypatch.setenv("SLACK_WEBHOOK_URL", slack_receiver.url)
    defs = build_definitions()
    sensor = defs.get_sensor_def("slack_on_run_failure_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    store = BackupStore(url=f"file://{tmp_path}/backups")
    with dg.instance_for_test() as instance:
        job = defs.resolve_job_def("nightly_backup_job")
        # a retry of a run whose step failure was alerted: it carries its parent's tags
        parent_tag = {ALERTED_TAG: "0f0f0f0f-parent-run:redis_backup"}
        run = instance.create_run_for_job(job, tags={"dagster/partition": BAD_SET, **parent_tag})
        # what run monitoring reports when the run worker's pod never comes up
        event = instance.report_run_failed(
            run,
            message="run worker pod failed: ImagePullBackOff pulling the code location image\n"
            "env DATABASE_URL=postgresql://twinme:Pg-Secret-42@db/twinme",
        )
        slack = build_resources()["slack"]
        verdict = _sensor(instance, run.run_id, event, slack, store)
    assert "alerted" in verdict
    (alert,) = slack_receiver.messages
    headline = alert.splitlines()[0]
    assert "nightly_backup_job FAILED — the run failed before it started" in headline
    assert f"set {BAD_SET}" in headline
    assert "Error: run worker pod failed: ImagePullBackOff" in alert
    assert "Last good set: none" in alert
    assert f"Run: {DAGSTER_URL}/runs/{run.run_id}" in alert
    assert "Pg-Secret-42" not in alert


def test_a_step_failure_no_hook_reported_is_alerted_by_the_sensor(
    tmp_path: Path, slack_receiver: SlackReceiver
) -> None:
    # retention_job has no failure hook: a store that cannot be listed is reported by the sensor
    (tmp_path / "not-a-dir").write_text("a file where the store should be")
    store = BackupStore(url=f"file://{tmp_path}/not-a-dir")
    slack = _fast(slack_receiver, dagster_url=DAGSTER_URL)
    defs = dg.Definitions(
        assets=[backup_retention, wal_archive_retention],
        jobs=[retention_job],
        resources={"backup_store": store, "wal_archive": WalArchive(engine="off")},
    )
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def("retention_job").execute_in_process(
        instance=instance, raise_on_error=False
    )
    assert not result.success and slack_receiver.messages == []
    verdict = _sensor(instance, result.run_id, result.get_run_failure_event(), slack, store)
    assert "alerted" in verdict
    (alert,) = slack_receiver.messages
    assert "retention_job FAILED — component: backup retention" in alert.splitlines()[0]
    assert "Error: retention could not read the store" in alert
    assert "Last good set: unknown: the backup store could not be read" in alert
    assert f"{DAGSTER_URL}/runs/{result.run_id}" in alert


def test_a_run_canceled_while_queued_is_reported_as_nothing_changed(
    tmp_path: Path, slack_receiver: SlackReceiver
) -> None:
    # a queued recovery someone thought better of: no step ran, production is untouched
    defs = build_definitions()
    slack = _fast(slack_receiver, dagster_url=DAGSTER_URL)
    store = BackupStore(url=f"file://{tmp_path}/backups")
    with dg.instance_for_test() as instance:
        config = {"ops": {"recovery_preflight": {"config": {"set_id": BAD_SET}}}}
        run = instance.create_run_for_job(defs.resolve_job_def("recover_job"), run_config=config)
        instance.report_run_canceling(run, message="Sending run termination request.")
        instance.report_run_canceled(run)
        record = instance.get_records_for_run(
            run_id=run.run_id, of_type=dg.DagsterEventType.RUN_CANCELED
        ).records[-1]
        event = record.event_log_entry.dagster_event
        assert event is not None
        canceled = instance.get_run_by_id(run.run_id)
        assert canceled is not None and canceled.status == dg.DagsterRunStatus.CANCELED
        with dg.build_run_status_sensor_context(
            sensor_name="slack_on_run_canceled_sensor",
            dagster_event=event,
            dagster_instance=instance,
            dagster_run=canceled,
            resources={"slack": slack, "backup_store": store},
        ) as context:
            verdict = slack_on_run_canceled_sensor(context)
    assert isinstance(verdict, dg.SkipReason) and "alerted" in (verdict.skip_message or "")
    (alert,) = slack_receiver.messages
    assert alert.splitlines()[0] == ":warning: TwinMe recover_job CANCELED — before any step ran"
    assert "Error: stopped: the run was terminated (from the UI or the GraphQL API)" in alert
    assert "Next: Nothing was changed by this run" in alert
    assert f"Run: {DAGSTER_URL}/runs/{run.run_id}" in alert


def test_a_release_stopped_mid_rollout_says_it_was_not_rolled_back() -> None:
    # its own failures roll back; a release terminated from outside does not
    where = Where("release_job", "0123456789abcdef", "api_deployment", "", "9f3c2a1b" * 5)
    stopped = step_failure(where, "stopped: the run was terminated", canceled=True)
    failed = step_failure(where, "rollout failed")
    assert stopped.severity == "warning" and "CANCELED" in stopped.headline
    assert "NOT rolled back" in stopped.advice and "twinme-ops rollback" in stopped.advice
    assert "NOT rolled back" not in failed.advice and "FAILED" in failed.headline
    # stopped at its max runtime: a failure, with what the stop leaves behind
    timed_out = step_failure(where, "stopped: exceeding maximum runtime", stopped=True)
    assert "FAILED" in timed_out.headline and timed_out.severity == "failure"
    assert "NOT rolled back" in timed_out.advice


def test_wal_archive_alert_words_from_plain_facts() -> None:
    from twinme_ops.alerting.alert import Fact
    from twinme_ops.alerting.messages import wal_archive_behind, wal_archive_caught_up

    facts = [Fact("RPO", "300 s (heartbeat; alert above 120 s)"), Fact("Receiver", "not running")]
    first = wal_archive_behind(["the WAL receiver is not running"], facts, "Restart it.")
    assert first.severity == "warning" and first.headline.startswith(
        "TwinMe WAL archive falls behind: the WAL receiver is not running"
    )
    text = first.text()
    assert "RPO: 300 s" in text and "Receiver: not running" in text and "Restart it." in text
    reminder = wal_archive_behind(["x"], facts, "", reminder=True)
    assert "still behind" in reminder.headline
    resolved = wal_archive_caught_up(0.0, "2026-12-05T12:00:00+00:00")
    assert resolved.severity == "info" and "caught up: RPO 0.0 s" in resolved.headline
