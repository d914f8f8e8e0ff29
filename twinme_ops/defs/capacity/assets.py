"""``capacity_report``: growth of the database, Redis, file storage and backup sets, read from the
nightly sets' manifests, and the day each limit is reached at that pace (Slack within 30 days).

The projection is plain Python in :mod:`twinme_ops.capacity`; this module reads the store,
passes the manifests on, and shows the result in the UI and on Slack.
"""

from datetime import date, datetime, timedelta

import dagster as dg
from pydantic import Field

from twinme_ops.alerting.alert import Where
from twinme_ops.alerting.messages import capacity_running_out
from twinme_ops.alerting.metrics import MetricsResource
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.backups.sets import read_set
from twinme_ops.backups.store.base import BackupStore, StoreError
from twinme_ops.backups.window import TIMEZONE
from twinme_ops.capacity.history import SetSample, sample_from_manifest
from twinme_ops.capacity.limits import CapacityLimits
from twinme_ops.capacity.report import (
    alert_lines,
    build_report,
    markdown_table,
    numeric_metadata,
    text_chart,
)
from twinme_ops.capacity.sizes import SizeError
from twinme_ops.common.log import Log
from twinme_ops.common.redact import redact

ADVICE = (
    "Grow the volume (or Redis's maxmemory, or the backup window) before the date, or find "
    "what grows: docs/slo-capacity.md, 'When the capacity report alerts'."
)


class CapacityConfig(dg.Config):
    """Run config of ``capacity_report``."""

    weeks: int = Field(
        default=8, gt=0, description="How many weeks of nightly sets the projection reads."
    )
    as_of: str = Field(
        default="",
        description="Project as of this day (YYYY-MM-DD, Europe/Paris). Empty: today.",
    )

    def today(self) -> date:
        if not self.as_of:
            return datetime.now(TIMEZONE).date()
        try:
            return date.fromisoformat(self.as_of)
        except ValueError:
            raise dg.Failure(
                description=f"as_of={self.as_of!r} is not a date. Fix: YYYY-MM-DD, or leave it "
                "empty for today."
            ) from None


def read_samples(store: BackupStore, since: date, until: date, log: Log) -> list[SetSample]:
    """The sizes recorded by every complete set from ``since`` to ``until`` (by set id)."""
    samples = []
    for set_id in sorted(store.list_sets()):
        try:
            day = date.fromisoformat(set_id)
        except ValueError:
            continue  # not a nightly set
        if not since <= day <= until:
            continue
        view = read_set(store, set_id)
        if view.manifest is None:
            if view.unreadable:
                log.warning(f"set {set_id} left out: {view.unreadable}")
            continue
        samples.append(sample_from_manifest(set_id, view.manifest))
    return samples


@dg.asset(
    group_name="capacity",
    kinds={"python"},
    description=(
        "Weekly capacity report: how the PostgreSQL database, Redis memory, file storage and "
        "backup sets grew over the last weeks (read from each nightly set's manifest), and the "
        "day each reaches its limit at that pace (a straight-line fit): the volumes "
        "(TWINME_POSTGRES_VOLUME_SIZE, TWINME_FILES_VOLUME_SIZE), Redis's maxmemory "
        "(TWINME_REDIS_MAXMEMORY) and the nightly backup window (TWINME_BACKUP_WINDOW_MINUTES, "
        "at the measured backup throughput). Alerts on Slack when a limit is reached within "
        "30 days, and pushes each resource's size, growth and days left to the Pushgateway."
    ),
)
def capacity_report(
    context: dg.AssetExecutionContext,
    config: CapacityConfig,
    backup_store: BackupStore,
    capacity_limits: CapacityLimits,
    slack: SlackNotifier,
    metrics: MetricsResource,
) -> dg.MaterializeResult:
    """Read the sets, project, report in the UI, alert when a limit is near."""
    try:
        limits = capacity_limits.resolve()
    except SizeError as exc:
        raise dg.Failure(description=str(exc)) from None
    today = config.today()
    since = today - timedelta(weeks=config.weeks)
    try:
        samples = read_samples(backup_store, since, today, context.log)
    except StoreError as exc:
        raise dg.Failure(
            description=f"capacity_report could not read {backup_store.describe()}: "
            f"{redact(exc)}. Fix: check TWINME_BACKUP_URL and the store's credentials."
        ) from None
    report = build_report(samples, limits, today)
    table = markdown_table(report)
    context.log.info(f"capacity as of {today} from {len(samples)} sets:\n{table}")

    metrics.push_capacity(
        [(p.resource, p.current, p.slope_per_day, p.days_left) for p in report.projections],
        log=context.log,
    )
    alerted = False
    if report.alarming:
        alert = capacity_running_out(alert_lines(report), limits.horizon_days, report.sets, ADVICE)
        alert.where = Where(job=context.run.job_name, run_id=context.run.run_id)
        alerted = slack.send(alert, log=context.log)

    charts = "\n\n".join(
        text_chart(samples, field, title)
        for field, title in (
            ("postgres_bytes", "PostgreSQL database"),
            ("redis_bytes", "Redis memory"),
            ("files_bytes", "File storage"),
            ("backup_bytes", "Backup set (stored)"),
        )
    )
    metadata: dict[str, dg.RawMetadataValue] = {
        "capacity": dg.MetadataValue.md(table),
        "growth": dg.MetadataValue.md(charts),
        "as_of": today.isoformat(),
        "alarming": dg.MetadataValue.json([p.resource for p in report.alarming]),
        "slack_alerted": alerted,
    }
    for name, value in numeric_metadata(report).items():
        metadata[name] = dg.MetadataValue.float(value)
    return dg.MaterializeResult(metadata=metadata)
