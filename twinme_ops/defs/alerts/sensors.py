"""Alert sensors: what no step failure reports, such as backups that silently stopped or a run
that failed before (or outside) its steps."""

import json
import re
from datetime import UTC, datetime

import dagster as dg
from dagster._core.storage.tags import BACKFILL_ID_TAG

from twinme_ops.alerting.alert import Alert, Fact, Where, first_line
from twinme_ops.alerting.messages import (
    backups_fresh_again,
    backups_stale,
    run_canceled,
    run_failure,
    wal_archive_behind,
    wal_archive_caught_up,
)
from twinme_ops.alerting.metrics import MetricsResource
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.backups.advice import WAL_ARCHIVE_ADVICE
from twinme_ops.backups.drill import FRESHNESS_MAX_AGE_HOURS, backup_freshness
from twinme_ops.backups.pitr.archive import WalArchive
from twinme_ops.backups.pitr.receiver import receiver_state
from twinme_ops.backups.pitr.rpo import RpoReading, measure_rpo
from twinme_ops.backups.store.base import BackupStore
from twinme_ops.common.redact import redact
from twinme_ops.defs.alerts.hooks import alerted_steps
from twinme_ops.defs.alerts.steps import BACKUP_JOBS, last_good_fact, step_failure
from twinme_ops.defs.logs.ticks import logged_tick
from twinme_ops.instance.run_coordinator import REFUSED_TAG
from twinme_ops.servers.postgres import PostgresResource

# the error class of a step Dagster interrupted (run terminated, or past its max runtime)
INTERRUPTED = "DagsterExecutionInterruptedError"
# while backups stay stale, remind at most this often instead of on every tick
REALERT_AFTER_HOURS = 6.0
# while the WAL archive stays behind (or its receiver down), remind this often
WAL_REALERT_AFTER_S = 3600.0
CNPG_RPO_SKIP = (
    "the WAL archive engine is cloudnative-pg: production's RPO comes from the Barman Cloud "
    "plugin's metrics (cnpg_pg_stat_archiver_seconds_since_last_archival), alerted by "
    "Prometheus' TwinmeCnpgWalArchiveBehind, not by this sensor"
)


@dg.sensor(
    name="backup_freshness_sensor",
    minimum_interval_seconds=900,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every 15 minutes: alerts Slack when no backup set younger than 26 h has passed its "
        "restore drill (backups stopped, or every recent set failed its drill). Reminds every "
        "6 h while it lasts and says when it is resolved."
    ),
)
@logged_tick
def backup_freshness_sensor(
    context: dg.SensorEvaluationContext, backup_store: BackupStore, slack: SlackNotifier
) -> dg.SkipReason:
    now = datetime.now(UTC)
    state = json.loads(context.cursor) if context.cursor else {}
    status = backup_freshness(backup_store, now, FRESHNESS_MAX_AGE_HOURS)
    if status.fresh:
        if state.get("alerted_at"):
            slack.send(backups_fresh_again(status.message), log=context.log)
        context.update_cursor(json.dumps({}))
        return dg.SkipReason(status.message)
    last = state.get("alerted_at")
    hours_since = (now.timestamp() - last) / 3600 if last else None
    if hours_since is not None and hours_since < REALERT_AFTER_HOURS:
        return dg.SkipReason(f"stale, alerted {hours_since:.1f} h ago: {status.message}")
    alert = backups_stale(
        status.message, last_good_fact(backup_store, now), backup_store.describe()
    )
    slack.send(alert, log=context.log)
    context.update_cursor(json.dumps({"alerted_at": now.timestamp()}))
    return dg.SkipReason(f"alerted: {status.message}")


def _rpo_facts(reading: RpoReading, threshold_s: float) -> list[Fact]:
    s = reading.status
    rpo = "unknown" if reading.rpo_s is None else f"{reading.rpo_s:.0f} s"
    facts = [
        Fact("RPO", f"{rpo} ({reading.basis}; alert above {threshold_s:.0f} s)"),
        Fact(
            "Receiver",
            f"running, pid {s.receiver_pid}" if s.receiver_alive else "not running",
        ),
        Fact(
            "Slot",
            f"{s.slot}: "
            + (
                "missing"
                if not s.slot_exists
                else f"{'active' if s.slot_active else 'inactive'}, wal_status "
                f"{s.slot_wal_status or '?'}, safe_wal_size "
                + ("unlimited" if s.slot_safe_wal_size is None else f"{s.slot_safe_wal_size:,} B")
            ),
        ),
        Fact("Archive", s.root),
    ]
    if s.lag_bytes is not None:
        facts.append(Fact("Not archived", f"{s.lag_bytes:,} bytes of WAL"))
    if reading.archived_up_to:
        facts.append(Fact("Archived up to", reading.archived_up_to))
    if s.server_error:
        facts.append(Fact("Source", s.server_error))
    if s.receiver_log_tail:
        facts.append(Fact("Receiver log", s.receiver_log_tail.splitlines()[-1]))
    return facts


@dg.sensor(
    name="wal_archive_rpo_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Every 30 s, for the local WAL archive engine: measures the RPO (0 when the archive "
        "holds everything the server wrote, else the age of the newest heartbeat it holds), "
        "whether pg_receivewal runs and the slot's health; pushes twinme_wal_archive_rpo_seconds "
        "and twinme_wal_archive_receiver_up. Alerts Slack once when the RPO exceeds the "
        "threshold (120 s) or the receiver is down, reminds every hour, and says when it is "
        "resolved. Skips for cloudnative-pg (Prometheus alerts on the plugin's metrics)."
    ),
)
@logged_tick
def wal_archive_rpo_sensor(
    context: dg.SensorEvaluationContext,
    wal_archive: WalArchive,
    postgres: PostgresResource,
    slack: SlackNotifier,
    metrics: MetricsResource,
) -> dg.SkipReason:
    engine = wal_archive.check_engine()
    if engine == "off":
        return dg.SkipReason("continuous archiving is off (TWINME_WAL_ARCHIVE=off)")
    if engine == "cloudnative-pg":
        return dg.SkipReason(CNPG_RPO_SKIP)
    layout = wal_archive.layout()
    if receiver_state(layout) is None:
        return dg.SkipReason(
            f"no WAL receiver was ever started into {layout.root}: continuous archiving is not "
            "set up here (`twinme-ops sandbox up` starts it for the sandbox, "
            "`twinme-ops wal-archive start` for DATABASE_URL's server)"
        )
    url = postgres.running_url()
    if url is None:
        return dg.SkipReason("the sandbox is not running: nothing to archive")
    now = datetime.now(UTC)
    reading = measure_rpo(layout, url, slot=wal_archive.slot)
    metrics.push_wal_archive(reading.rpo_s, reading.receiver_alive, log=context.log)
    threshold = float(wal_archive.rpo_alert_s)
    problems = reading.problems(threshold)
    state = json.loads(context.cursor) if context.cursor else {}
    rpo = "unknown" if reading.rpo_s is None else f"{reading.rpo_s:.1f} s"
    if not problems:
        if state.get("alerted_at"):
            first = state.get("first_alerted_at") or state["alerted_at"]
            since = datetime.fromtimestamp(first, UTC).isoformat(timespec="seconds")
            slack.send(wal_archive_caught_up(reading.rpo_s, since), log=context.log)
        context.update_cursor(json.dumps({}))
        return dg.SkipReason(
            redact(f"RPO {rpo} ({reading.basis}), receiver streaming, slot {reading.status.slot}")
        )
    summary = redact("; ".join(problems))
    last = state.get("alerted_at")
    if last and now.timestamp() - last < WAL_REALERT_AFTER_S:
        minutes = (now.timestamp() - last) / 60
        return dg.SkipReason(f"alerted {minutes:.0f} min ago, still: {summary} (RPO {rpo})")
    alert = wal_archive_behind(
        problems, _rpo_facts(reading, threshold), WAL_ARCHIVE_ADVICE, reminder=bool(last)
    )
    delivered = slack.send(alert, log=context.log)
    # a reminder keeps the first alert's time, so the resolved message says since when
    first = state.get("first_alerted_at") or now.timestamp()
    context.update_cursor(json.dumps({"alerted_at": now.timestamp(), "first_alerted_at": first}))
    return dg.SkipReason(
        f"{'alerted' if delivered else 'alert not delivered (see the log)'}: {summary} (RPO {rpo})"
    )


def _termination_reason(instance: dg.DagsterInstance, run_id: str) -> str:
    """Why a run's steps were interrupted: its max runtime, or someone terminated it ("" if not).

    Dagster runs no failure hook for an interrupted step, and the step's error only names the
    interruption; the reason is in the run's canceling events (run monitoring writes "Canceling
    due to exceeding maximum runtime of N seconds.", a termination from the UI or the API only
    "Sending run termination request.").
    """
    records = instance.get_records_for_run(
        run_id=run_id, of_type=dg.DagsterEventType.RUN_CANCELING
    ).records
    reasons = [r.event_log_entry.message or "" for r in records]
    limits = [m for m in (re.search(r"maximum runtime of (\d+) seconds", r) for r in reasons) if m]
    if limits:
        return (
            f"stopped: the run exceeded its maximum runtime of {limits[0].group(1)} seconds (the "
            "job's dagster/max_runtime tag). Something made it hang: a lock, an unreachable "
            "server, a full disk"
        )
    if reasons:
        return "stopped: the run was terminated (from the UI or the GraphQL API)"
    return ""


def _deliver(
    context: dg.RunStatusSensorContext, slack: SlackNotifier, alert: Alert, what: str
) -> dg.SkipReason:
    """Send the alert; the tick's skip reason says whether Slack took it."""
    delivered = slack.send(alert, log=context.log)
    return dg.SkipReason(
        f"{what}: {'alerted' if delivered else 'alert not delivered (see the log)'}"
    )


def _run_failure_alert(context: dg.RunFailureSensorContext, backup_store: BackupStore) -> Alert:
    run = context.dagster_run
    facts: list[Fact] = [last_good_fact(backup_store)] if run.job_name in BACKUP_JOBS else []
    step_failures = context.get_step_failure_events()
    if step_failures:
        # a step failed in a job without the failure hook, or whose hook could not deliver
        event = step_failures[0]
        data = event.step_failure_data
        user = data.user_failure_data
        error = first_line(user.description) if user and user.description else ""
        interrupted = data.error is not None and data.error.cls_name == INTERRUPTED
        if not error and interrupted:
            error = _termination_reason(context.instance, run.run_id)
        if not error and data.error:
            # "package.module.SomeError: text" -> "SomeError: text"
            error = first_line(re.sub(r"^[\w.]*\.(\w+: )", r"\1", data.error.message))
        where = Where.from_tags(run.job_name, run.run_id, run.tags, step=event.step_key or "")
        metadata = user.metadata if user else None
        return step_failure(
            where, error or "step failed", facts, metadata=metadata, stopped=interrupted
        )
    event = context.failure_event
    job_failure = event.job_failure_data if event.is_run_failure else None
    error = ""
    if job_failure is not None and job_failure.error is not None:
        error = first_line(job_failure.error.message)
    where = Where.from_tags(run.job_name, run.run_id, run.tags)
    reason = run.tags.get("dagster/failure_reason") or (
        job_failure.failure_reason.value if job_failure and job_failure.failure_reason else None
    )
    record = context.instance.get_run_record_by_id(run.run_id)
    if not reason and record is not None and record.start_time is None:
        reason = "NEVER_STARTED"
    return run_failure(where, reason, error or first_line(event.message or "run failed"), facts)


@dg.run_failure_sensor(
    name="slack_on_run_failure_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Alerts Slack for every failed run of this code location whose failure no step alert "
        "reported: runs that never started or failed before any step (launcher, pod, resources), "
        "crashed run workers, steps of jobs without the failure hook, and step alerts Slack "
        "refused (a second chance). Runs tagged twinme/slack-alerted were already reported; runs "
        "of a backfill the run coordinator refused (twinme/refused) are not alerted."
    ),
)
@logged_tick
def slack_on_run_failure_sensor(
    context: dg.RunFailureSensorContext, slack: SlackNotifier, backup_store: BackupStore
) -> dg.SkipReason:
    run = context.dagster_run
    if run.tags.get(REFUSED_TAG) and run.tags.get(BACKFILL_ID_TAG):
        # a backfill of past backup days: each of its runs was refused before it started, and
        # the backfill's page says why; one message per day would only bury real alerts
        return dg.SkipReason(
            f"run {run.run_id[:8]} of backfill {run.tags[BACKFILL_ID_TAG]} was refused before it "
            f"started ({run.tags[REFUSED_TAG]}): not alerted"
        )
    already = alerted_steps(context.instance, run.run_id)
    if already:
        return dg.SkipReason(f"run {run.run_id[:8]} already alerted for {', '.join(already)}")
    try:
        alert = _run_failure_alert(context, backup_store)
    except Exception as exc:  # still tell someone, with what is known for sure
        context.log.warning(f"run failure alert built without details: {redact(exc)}")
        alert = run_failure(Where.from_tags(run.job_name, run.run_id, run.tags), None, "")
    return _deliver(context, slack, alert, f"run {run.run_id[:8]} of {run.job_name}")


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.CANCELED,
    name="slack_on_run_canceled_sensor",
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Tells Slack when a run of this code location was terminated (from the UI or the API) "
        "before it finished: which step was stopped and what that leaves behind (a backup set "
        "without a manifest, a recovery half done, a rollout not rolled back). Runs stopped at "
        "their max runtime are failures, reported by slack_on_run_failure_sensor."
    ),
)
@logged_tick
def slack_on_run_canceled_sensor(
    context: dg.RunStatusSensorContext, slack: SlackNotifier, backup_store: BackupStore
) -> dg.SkipReason:
    run = context.dagster_run
    reason = _termination_reason(context.instance, run.run_id) or "stopped: the run was canceled"
    facts = [last_good_fact(backup_store)] if run.job_name in BACKUP_JOBS else []
    failures = context.instance.get_records_for_run(
        run_id=run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE
    ).records
    stopped = next((r.event_log_entry.step_key for r in failures if r.event_log_entry.step_key), "")
    where = Where.from_tags(run.job_name, run.run_id, run.tags, step=stopped)
    if where.step:
        alert = step_failure(where, reason, facts, canceled=True)
    else:
        alert = run_canceled(where, reason, facts)
    return _deliver(context, slack, alert, f"canceled run {run.run_id[:8]} of {run.job_name}")
