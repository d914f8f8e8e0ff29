"""capacity_report on real stores (a local folder and moto's S3 server) holding real sets of
several simulated weeks, alerting a real Slack receiver over HTTP."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import dagster as dg
import pytest

from tests.support.capacity_sets import GIB, MIB, write_nightly_set
from tests.support.pushgateway import Gateway, names, value
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.alerting.metric_specs import METRICS
from twinme_ops.alerting.metrics import MetricsResource
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.backups.store.base import BackupStore
from twinme_ops.capacity.limits import CapacityLimits
from twinme_ops.defs.capacity.assets import capacity_report

TODAY = date(2026, 12, 7)


def write_weeks(
    store: BackupStore,
    days: int,
    *,
    postgres: tuple[float, float] = (10 * GIB, 0),
    redis: tuple[float, float] = (1 * GIB, 0),
    files: tuple[float, float] = (5 * GIB, 0),
    read: tuple[float, float] = (10 * GIB, 0),
    throughput: float = 50 * MIB,
    redis_from_day: int = 0,
) -> None:
    """One set a night for ``days`` nights up to TODAY: each size is (start, growth a day)."""
    for i in range(days):
        day = TODAY - timedelta(days=days - 1 - i)
        read_bytes = int(read[0] + read[1] * i)
        write_nightly_set(
            store,
            day,
            postgres_bytes=int(postgres[0] + postgres[1] * i),
            redis_bytes=int(redis[0] + redis[1] * i) if i >= redis_from_day else None,
            files_bytes=int(files[0] + files[1] * i),
            read_bytes=read_bytes,
            duration_s=read_bytes / throughput,
        )


def materialize(
    store: BackupStore, slack: SlackReceiver | None, gateway_url: str = "", **limits: Any
) -> tuple[dg.ExecuteInProcessResult, dict[str, Any], dg.DagsterInstance]:
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [capacity_report],
        resources={
            "backup_store": store,
            "capacity_limits": CapacityLimits(**limits),
            "slack": SlackNotifier(webhook_url=slack.url if slack else ""),
            "metrics": MetricsResource(pushgateway_url=gateway_url, environment="production"),
        },
        run_config={"ops": {"capacity_report": {"config": {"as_of": TODAY.isoformat()}}}},
        instance=instance,
        raise_on_error=False,
    )
    metadata: dict[str, Any] = {}
    if result.success:
        (mat,) = result.asset_materializations_for_node("capacity_report")
        metadata = {k: v.value for k, v in mat.metadata.items()}
    return result, metadata, instance


def test_a_volume_full_within_30_days_pages_slack(
    store: BackupStore, slack_receiver: SlackReceiver, gateway: Gateway
) -> None:
    # 5 weeks: PostgreSQL 10 GiB + 0.5 GiB a night (27 GiB today) on a 40 GiB volume: full on
    # the 60th night, 26 days from now. Redis flat, files slow, backups well inside the window.
    # Redis's used_memory is only in the last 4 weeks' manifests (recorded since then).
    write_weeks(
        store,
        35,
        postgres=(10 * GIB, 0.5 * GIB),
        files=(5 * GIB, 100 * MIB),
        read=(10 * GIB, 0.5 * GIB),
        redis_from_day=7,
    )
    result, meta, instance = materialize(
        store,
        slack_receiver,
        gateway.url,
        postgres_volume_size="40Gi",
        files_volume_size="1Ti",
        redis_maxmemory="2gb",
        backup_window_minutes="240",
    )
    assert result.success
    assert meta["sets"] == 35
    assert meta["postgres_bytes"] == 27 * GIB
    assert meta["postgres_growth_bytes_per_day"] == pytest.approx(0.5 * GIB)
    assert meta["postgres_days_left"] == pytest.approx(26, abs=0.01)
    assert meta["redis_bytes"] == GIB and "redis_days_left" not in meta  # flat
    assert meta["files_days_left"] > 30
    assert meta["backup_throughput_bytes_per_s"] == pytest.approx(50 * MIB)
    assert meta["alarming"] == ["postgres"] and meta["slack_alerted"] is True

    table = meta["capacity"]
    row = "| PostgreSQL database | 27.0 GiB | +3.5 GiB | 40.0 GiB | **2027-01-02 (26 days)** |"
    assert row in table
    assert "| Redis memory | 1.0 GiB | +0 B | 2.0 GiB | not growing |" in table
    # the window in minutes at the measured 50 MiB/s: 27 GiB read takes 9.2 minutes
    assert "| Nightly backup window | 9.2 min |" in table and "| 240.0 min |" in table
    chart = meta["growth"]
    assert chart.count("\n2026-") >= 4 * 28 - 7  # a bar per night, Redis since it is recorded
    assert "██████████████████████████████ 27.0 GiB" in chart  # the largest, full width

    (message,) = slack_receiver.messages
    assert "TwinMe capacity: PostgreSQL database reaches its limit within 30 days" in message
    assert "27.0 GiB of 40.0 GiB (TWINME_POSTGRES_VOLUME_SIZE)" in message
    assert "2027-01-02 (26 days)" in message and "35 nightly backup sets" in message
    assert "Redis memory" not in message
    # Prometheus gets the same figures (operation="capacity")
    got = gateway.samples()
    assert value(got, "twinme_capacity_days_left", resource="postgres") == pytest.approx(26)
    assert value(got, "twinme_capacity_used_bytes", resource="redis") == GIB
    assert value(got, "twinme_capacity_growth_bytes_per_day", resource="files") == pytest.approx(
        100 * MIB
    )
    days_left = {dict(labels)["resource"] for (n, labels) in got if n.endswith("_days_left")}
    assert days_left == {"postgres", "files", "backup_window"}  # Redis is flat: no date
    assert names(got) <= set(METRICS)
    # the webhook's token is in no log line or metadata
    logs = "\n".join(repr(e) for e in instance.all_logs(result.run_id))
    assert "secrettoken" not in logs


def test_flat_growth_reports_without_alerting(
    store: BackupStore, slack_receiver: SlackReceiver
) -> None:
    write_weeks(store, 21)
    result, meta, _ = materialize(
        store, slack_receiver, postgres_volume_size="11Gi", redis_maxmemory="1.5gb"
    )
    assert result.success
    assert meta["alarming"] == [] and meta["slack_alerted"] is False
    assert "not growing" in meta["capacity"]
    assert "postgres_days_left" not in meta
    assert slack_receiver.messages == []


def test_too_little_history_gives_no_date_and_no_alert(
    store: BackupStore, slack_receiver: SlackReceiver
) -> None:
    # two nights growing fast toward a small volume: two points are not a trend
    write_weeks(store, 2, postgres=(10 * GIB, 5 * GIB))
    result, meta, _ = materialize(store, slack_receiver, postgres_volume_size="20Gi")
    assert result.success
    assert "too little history (2 sets; needs 3 over 2 days)" in meta["capacity"]
    assert meta["alarming"] == [] and slack_receiver.messages == []


def test_the_backup_window_running_out_alerts_in_minutes(
    store: BackupStore, slack_receiver: SlackReceiver
) -> None:
    # 2 weeks: 100 GiB read + 2 GiB a night at 20 MiB/s: 85 min the first night, 107.5 min today:
    # the 120 min window is hit about 7 days from now
    write_weeks(store, 14, read=(100 * GIB, 2 * GIB), throughput=20 * MIB)
    result, meta, _ = materialize(store, slack_receiver, backup_window_minutes="120")
    assert result.success
    assert meta["alarming"] == ["backup_window"]
    assert meta["backup_window_days_left"] == pytest.approx(7.3, abs=0.1)
    (message,) = slack_receiver.messages
    assert "Nightly backup window" in message
    assert "107.5 min of 120.0 min (TWINME_BACKUP_WINDOW_MINUTES)" in message


def test_an_empty_store_reports_no_data(tmp_path, slack_receiver: SlackReceiver) -> None:
    store = BackupStore(url=f"file://{tmp_path}/backups")
    result, meta, _ = materialize(store, slack_receiver, postgres_volume_size="20Gi")
    assert result.success and meta["sets"] == 0
    assert "not recorded by these sets" in meta["capacity"]
    assert slack_receiver.messages == []


def test_a_bad_limit_fails_the_run_with_the_fix(tmp_path) -> None:
    store = BackupStore(url=f"file://{tmp_path}/backups")
    result, _, _ = materialize(store, None, files_volume_size="100 gigs")
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    text = str(failure.step_failure_data.error)  # type: ignore[union-attr]
    assert "TWINME_FILES_VOLUME_SIZE='100 gigs' is not a size" in text and "Fix: " in text
