"""Slack failure hooks, and the helpers steps use to alert by the same rules.

A failed step alerts once: either the step sent its own, richer alert (a release rolled back,
see :func:`send_step_alert`) or the hook sends the one
:func:`~twinme_ops.defs.alerts.steps.step_failure`
builds. Either way the step is recorded in the run's ``twinme/slack-alerted`` tag, which tells
``slack_on_run_failure_sensor`` that this run's failure has been reported.
"""

from dataclasses import replace

import dagster as dg

from twinme_ops.alerting.alert import ALERTED_TAG, Alert, Where, first_error_line, first_line
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.backups.store.base import BackupStore
from twinme_ops.common.redact import redact
from twinme_ops.defs.alerts.steps import last_good_fact, step_failure

StepContext = dg.AssetExecutionContext | dg.AssetCheckExecutionContext | dg.OpExecutionContext


def _op_context(context: StepContext) -> dg.OpExecutionContext:
    if isinstance(context, dg.AssetExecutionContext | dg.AssetCheckExecutionContext):
        return context.op_execution_context
    return context


def step_where(context: StepContext, sha: str = "") -> Where:
    """Job, run, step, backup set and commit of the step being executed."""
    op_context = _op_context(context)
    tags = op_context.run.tags
    where = Where.from_tags(op_context.job_name, op_context.run_id, tags, step=op_context.op.name)
    return replace(where, sha=sha or where.sha)


def alerted_steps(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """Steps of the run whose failure Slack already heard about.

    The tag's value is ``<run_id>:<step>,<step>``: a re-execution copies its parent's tags, and
    must not inherit the parent's "already alerted".
    """
    run = instance.get_run_by_id(run_id)
    owner, _, steps = (run.tags.get(ALERTED_TAG, "") if run else "").partition(":")
    return [s for s in steps.split(",") if s] if owner == run_id else []


def mark_alerted(instance: dg.DagsterInstance, run_id: str, step: str) -> None:
    """Record in the run's tags that ``step``'s failure has been reported."""
    steps = alerted_steps(instance, run_id)
    if step not in steps:
        instance.add_run_tags(run_id, {ALERTED_TAG: f"{run_id}:{','.join([*steps, step])}"})


def send_step_alert(context: StepContext, slack: SlackNotifier, alert: Alert) -> bool:
    """Send a failure alert from inside a step, so that the failure hook does not repeat it.

    The step is marked alerted when Slack took the alert (or Slack is not configured): an alert
    Slack refused is left to the run-failure sensor, a second chance minutes later.
    """
    op_context = _op_context(context)
    delivered = slack.send(alert, log=op_context.log)
    if delivered or not slack.webhook_url:
        try:
            mark_alerted(op_context.instance, op_context.run_id, alert.where.step)
        except Exception as exc:  # bookkeeping must not fail the step
            op_context.log.warning(f"could not tag the run as alerted: {redact(exc)}")
    return delivered


def _check_failure_line(context: dg.HookContext) -> str:
    """A failed blocking check's own description (the exception only says "check failed")."""
    records = context.instance.get_records_for_run(
        run_id=context.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ).records
    for record in reversed(records):
        event = record.event_log_entry.dagster_event
        if event is None or event.step_key != context.step_key:
            continue
        data = event.asset_check_evaluation_data
        if not data.passed:
            return first_line(f"check {data.check_name} failed: {data.description or ''}")
    return ""


def report_step_failure(context: dg.HookContext, store: BackupStore | None) -> None:
    """Alert for the failed step unless it alerted itself; never raises."""
    try:
        if context.step_key in alerted_steps(context.instance, context.run_id):
            return  # the step sent its own alert, with more context than this hook has
        run = context.instance.get_run_by_id(context.run_id)
        where = Where.from_tags(
            context.job_name, context.run_id, run.tags if run else {}, step=context.step_key
        )
        exc = context.op_exception
        error = ""
        if not isinstance(exc, dg.Failure):
            error = _check_failure_line(context)  # a blocking check failed: say which and why
        facts = [last_good_fact(store)] if store is not None else []
        metadata = getattr(exc, "metadata", None)
        alert = step_failure(where, error or first_error_line(exc), facts, metadata=metadata)
        slack: SlackNotifier = context.resources.slack
        delivered = slack.send(alert, log=context.log)
        if delivered or not slack.webhook_url:
            mark_alerted(context.instance, context.run_id, context.step_key)
    except Exception as exc:  # an alert must never fail the job it reports on
        context.log.warning(f"Slack failure alert not sent: {redact(exc)}")


@dg.failure_hook(required_resource_keys={"slack"})
def slack_on_failure(context: dg.HookContext) -> None:
    """Alert Slack when a step fails: component, set or commit, error, run link, what to do."""
    report_step_failure(context, None)


@dg.failure_hook(required_resource_keys={"slack", "backup_store"})
def slack_on_backup_failure(context: dg.HookContext) -> None:
    """Like ``slack_on_failure``, plus the id, size and age of the last set that restored."""
    report_step_failure(context, context.resources.backup_store)
