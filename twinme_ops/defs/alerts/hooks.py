"""Slack hooks: a failed step alerts with the component, the set and the first line of the error."""

from __future__ import annotations

import dagster as dg

from twinme_ops.lib.redact import redact
from twinme_ops.lib.slack import SlackNotifier

STEP_LABELS = {
    "postgres_backup": "PostgreSQL",
    "redis_backup": "Redis",
    "files_backup": "file storage",
    "backup_set": "backup set manifest",
}


def first_error_line(exc: BaseException | None) -> str:
    """The first meaningful line of an exception, redacted."""
    if exc is None:
        return "unknown error"
    text = getattr(exc, "description", None) or str(exc) or type(exc).__name__
    lines = [ln.strip() for ln in redact(text).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


@dg.failure_hook(required_resource_keys={"slack"})
def slack_on_backup_failure(context: dg.HookContext) -> None:
    """Alert Slack when a backup step fails, naming the component that failed."""
    run = context.instance.get_run_by_id(context.run_id)
    partition = run.tags.get("dagster/partition", "unpartitioned") if run else "unknown"
    step = context.op.name
    label = STEP_LABELS.get(step, step)
    slack: SlackNotifier = context.resources.slack
    slack.send(
        f":red_circle: TwinMe backup FAILED — component: {label} (step {step}), "
        f"set {partition}, job {context.job_name}, run {context.run_id[:8]}.\n"
        f"Error: {first_error_line(context.op_exception)}\n"
        "No manifest was written for this set: it is not a backup. Fix the cause and re-run "
        "the partition.",
        log=context.log,
    )
