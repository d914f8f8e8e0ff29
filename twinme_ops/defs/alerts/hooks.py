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
    "backup_set_restore_drill": "restore drill",
    "restore_drill_op": "restore drill",
    "source_checkout": "release checkout",
    "app_tests": "release app tests",
    "recovery_preflight": "recovery preflight",
    "recovery_safety_backup": "recovery safety backup",
    "recovery_scale_down": "recovery: API scale down",
    "recovery_restore": "recovery restore",
    "recovery_scale_up_and_verify": "recovery: API scale up and verification",
}


_NO_MANIFEST = (
    "No manifest was written for this set: it is not a backup. Fix the cause and re-run the "
    "partition."
)
_DRILL_FAILED = (
    "This set did not restore: do not rely on it. Read the drill's failures in the run, then "
    "re-run the backup and restore_drill_job."
)
ADVICE = {
    "postgres_backup": _NO_MANIFEST,
    "redis_backup": _NO_MANIFEST,
    "files_backup": _NO_MANIFEST,
    "backup_set": _NO_MANIFEST,
    "backup_set_restore_drill": _DRILL_FAILED,
    "restore_drill_op": _DRILL_FAILED,
    "source_checkout": "Nothing was built or deployed.",
    "app_tests": "The release stopped before any build: fix the tests and push again.",
    "recovery_preflight": "Nothing was touched.",
    "recovery_restore": "Production may be partly restored and the API is scaled down: read the "
    "state above, then re-run recover_job or return to the safety backup.",
    "recovery_scale_up_and_verify": "Data is restored but the API is not confirmed healthy: "
    "check the Deployment and the services.",
}


def first_error_line(exc: BaseException | None) -> str:
    """The first meaningful line of an exception, redacted."""
    if exc is None:
        return "unknown error"
    text = getattr(exc, "description", None) or str(exc) or type(exc).__name__
    lines = [ln.strip() for ln in redact(text).splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


@dg.failure_hook(required_resource_keys={"slack"})
def slack_on_failure(context: dg.HookContext) -> None:
    """Alert Slack when a step fails, naming the component that failed."""
    run = context.instance.get_run_by_id(context.run_id)
    tags = run.tags if run else {}
    # what the run is about: a backup set (partition) or a release (commit)
    subject = (
        f"set {tags['dagster/partition']}"
        if "dagster/partition" in tags
        else f"commit {tags['twinme/sha'][:12]}"
        if "twinme/sha" in tags
        else f"run {context.run_id[:8]}"
    )
    step = context.op.name
    label = STEP_LABELS.get(step, step)
    slack: SlackNotifier = context.resources.slack
    slack.send(
        f":red_circle: TwinMe {context.job_name} FAILED — component: {label} (step {step}), "
        f"{subject}, job {context.job_name}, run {context.run_id[:8]}.\n"
        f"Error: {first_error_line(context.op_exception)}\n"
        + ADVICE.get(step, "Fix the cause, then re-run the job."),
        log=context.log,
    )
