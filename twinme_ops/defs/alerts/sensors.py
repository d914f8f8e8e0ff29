"""Alert sensors: things no step failure reports, such as backups that silently stopped."""

import json
from datetime import UTC, datetime

import dagster as dg

from twinme_ops.lib.drill import backup_freshness
from twinme_ops.lib.slack import SlackNotifier
from twinme_ops.lib.store import BackupStore

FRESHNESS_MAX_AGE_HOURS = 26.0
# while backups stay stale, remind at most this often instead of on every tick
REALERT_AFTER_HOURS = 6.0


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
def backup_freshness_sensor(
    context: dg.SensorEvaluationContext, backup_store: BackupStore, slack: SlackNotifier
) -> dg.SkipReason:
    now = datetime.now(UTC)
    state = json.loads(context.cursor) if context.cursor else {}
    status = backup_freshness(backup_store, now, FRESHNESS_MAX_AGE_HOURS)
    if status.fresh:
        if state.get("alerted_at"):
            slack.send(f":large_green_circle: TwinMe backups are fresh again: {status.message}")
        context.update_cursor(json.dumps({}))
        return dg.SkipReason(status.message)
    last = state.get("alerted_at")
    hours_since = (now.timestamp() - last) / 3600 if last else None
    if hours_since is not None and hours_since < REALERT_AFTER_HOURS:
        return dg.SkipReason(f"stale, alerted {hours_since:.1f} h ago: {status.message}")
    slack.send(
        f":warning: TwinMe backups are stale: {status.message}. Check the last runs of "
        "nightly_backup_job and restore_drill_job."
    )
    context.update_cursor(json.dumps({"alerted_at": now.timestamp()}))
    return dg.SkipReason(f"alerted: {status.message}")
