"""The capacity report: one projection per resource, as a person reads it (Markdown table and a
text chart in the UI, facts for Slack) and as numbers the UI plots over time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from twinme_ops.capacity.history import SetSample, measured_throughput, series
from twinme_ops.capacity.limits import (
    BACKUP_WINDOW,
    FILES_VOLUME,
    POSTGRES_VOLUME,
    REDIS_MAXMEMORY,
    Limits,
)
from twinme_ops.capacity.projection import Projection, project
from twinme_ops.capacity.sizes import human_bytes

_CHART_WIDTH = 30
_CHART_ROWS = 28


@dataclass(frozen=True)
class CapacityReport:
    """Every projection, and the throughput the backup window projection used."""

    today: date
    sets: int
    projections: list[Projection]
    throughput: float | None  # bytes read per second of backup

    @property
    def alarming(self) -> list[Projection]:
        return [p for p in self.projections if p.alarming]


def build_report(samples: Sequence[SetSample], limits: Limits, today: date) -> CapacityReport:
    """Project each resource over the sets' history."""
    throughput = measured_throughput(samples)

    def one(resource: str, label: str, field: str, limit: float | None, setting: str):
        return project(
            resource,
            label,
            series(samples, field),
            limit=limit,
            limit_setting=setting,
            today=today,
            horizon_days=limits.horizon_days,
        )

    window_bytes = (
        limits.backup_window_s * throughput
        if limits.backup_window_s is not None and throughput
        else None
    )
    projections = [
        one(
            "postgres",
            "PostgreSQL database",
            "postgres_bytes",
            limits.postgres_bytes,
            POSTGRES_VOLUME,
        ),
        one("redis", "Redis memory", "redis_bytes", limits.redis_bytes, REDIS_MAXMEMORY),
        one("files", "File storage", "files_bytes", limits.files_bytes, FILES_VOLUME),
        one("backup_set", "Backup set (stored)", "backup_bytes", None, ""),
        # the data a backup reads, against what the window lets it read at the measured speed
        one("backup_window", "Nightly backup window", "read_bytes", window_bytes, BACKUP_WINDOW),
    ]
    return CapacityReport(today, len(samples), projections, throughput)


def _value(p: Projection, value: float | None, throughput: float | None) -> str:
    if value is None:
        return "-"
    if p.resource == "backup_window":
        return f"{value / throughput / 60:.1f} min" if throughput else human_bytes(value)
    return human_bytes(value)


def _when(p: Projection) -> str:
    if p.status == "exceeded":
        return "**exceeded now**"
    if p.status in ("within horizon", "later"):
        day = p.reaches_on.isoformat() if p.reaches_on else "after 100 years"
        days = f"{p.days_left:.0f} days" if p.days_left is not None else ""
        return f"**{day} ({days})**" if p.status == "within horizon" else f"{day} ({days})"
    return {
        "flat": "not growing",
        "no limit": f"no limit set{f' ({p.limit_setting})' if p.limit_setting else ''}",
        "too little history": f"too little history ({p.points} sets; needs 3 over 2 days)",
        "no data": "not recorded by these sets",
    }[p.status]


def growth_per_week(p: Projection, throughput: float | None) -> str:
    if p.slope_per_day is None:
        return "-"
    weekly = p.slope_per_day * 7
    text = _value(p, abs(weekly), throughput)
    return ("+" if weekly >= 0 else "-") + text


def markdown_table(report: CapacityReport) -> str:
    """One row per resource: now, growth, limit, when it is reached."""
    rows = ["| Resource | Now | Growth / week | Limit | Limit reached |", "|---|---|---|---|---|"]
    for p in report.projections:
        rows.append(
            f"| {p.label} | {_value(p, p.current, report.throughput)} "
            f"| {growth_per_week(p, report.throughput)} "
            f"| {_value(p, p.limit, report.throughput)} | {_when(p)} |"
        )
    if report.throughput:
        rows.append("")
        rows.append(
            f"Backup throughput (median of the last sets): {human_bytes(report.throughput)}/s "
            "read; the window row converts bytes to minutes at that speed."
        )
    return "\n".join(rows)


def text_chart(samples: Sequence[SetSample], field: str, title: str) -> str:
    """Bars of one field over the last sets, scaled to the largest, as a Markdown code block."""
    points = series(samples, field)[-_CHART_ROWS:]
    if not points:
        return f"{title}: no data"
    top = max(v for _, v in points) or 1.0
    lines = [f"{title}"]
    for day, value in points:
        width = value / top * _CHART_WIDTH
        bar = "█" * int(width) + ("▌" if width - int(width) >= 0.5 else "")
        lines.append(f"{day.isoformat()} {bar:<{_CHART_WIDTH}} {human_bytes(value)}")
    return "```\n" + "\n".join(lines) + "\n```"


def numeric_metadata(report: CapacityReport) -> dict[str, float]:
    """Numbers the UI plots across materializations: sizes now, growth a day, days left."""
    out: dict[str, float] = {"sets": float(report.sets)}
    for p in report.projections:
        if p.current is not None:
            out[f"{p.resource}_bytes"] = p.current
        if p.slope_per_day is not None:
            out[f"{p.resource}_growth_bytes_per_day"] = p.slope_per_day
        if p.days_left is not None:
            out[f"{p.resource}_days_left"] = p.days_left
    if report.throughput:
        out["backup_throughput_bytes_per_s"] = report.throughput
    return out


def alert_lines(report: CapacityReport) -> list[tuple[str, str]]:
    """``(label, what)`` of each alarming projection, for the Slack alert's facts."""
    lines = []
    for p in report.alarming:
        now = _value(p, p.current, report.throughput)
        limit = _value(p, p.limit, report.throughput)
        when = "exceeded now" if p.status == "exceeded" else _when(p).strip("*")
        lines.append((p.label, f"{now} of {limit} ({p.limit_setting}); limit reached: {when}"))
    return lines
