"""Linear growth and the day it reaches a limit (``statistics.linear_regression``).

A straight line through a few weeks of nightly sizes is crude but honest: it says when a volume,
Redis's maxmemory or the backup window runs out if growth goes on as it did, and it needs no
model to train. Too little history gives no date rather than a wild one.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Literal

# at least this many sets, spread over at least this many days, before a line is drawn
MIN_POINTS = 3
MIN_SPAN_DAYS = 2
# the capacity_report alerts when a limit is reached within this many days
DEFAULT_HORIZON_DAYS = 30

Status = Literal[
    "no data", "too little history", "exceeded", "within horizon", "later", "flat", "no limit"
]


@dataclass(frozen=True)
class Projection:
    """Where one resource stands and when it reaches its limit."""

    resource: str
    label: str
    status: Status
    points: int
    current: float | None = None
    slope_per_day: float | None = None
    limit: float | None = None
    limit_setting: str = ""
    reaches_on: date | None = None
    days_left: float | None = None

    @property
    def alarming(self) -> bool:
        """Exceeded already, or reached within the horizon: someone should act."""
        return self.status in ("exceeded", "within horizon")


def project(
    resource: str,
    label: str,
    points: list[tuple[date, float]],
    *,
    limit: float | None,
    limit_setting: str = "",
    today: date,
    horizon_days: int = DEFAULT_HORIZON_DAYS,
) -> Projection:
    """Fit a line through ``points`` (day, value) and find when it crosses ``limit``."""
    points = sorted(points)
    if not points:
        return Projection(resource, label, "no data", 0, limit=limit, limit_setting=limit_setting)
    current = points[-1][1]
    first = points[0][0]
    xs = [float((day - first).days) for day, _ in points]
    ys = [value for _, value in points]
    enough = len(points) >= MIN_POINTS and xs[-1] - xs[0] >= MIN_SPAN_DAYS
    slope, intercept = statistics.linear_regression(xs, ys) if enough else (None, None)
    common = {"resource": resource, "label": label, "points": len(points), "current": current}
    common |= {"slope_per_day": slope, "limit": limit, "limit_setting": limit_setting}
    if limit is not None and current >= limit:
        return Projection(**common, status="exceeded", reaches_on=points[-1][0], days_left=0.0)
    if slope is None or intercept is None:
        return Projection(**common, status="too little history")
    if limit is None:
        return Projection(**common, status="no limit")
    # growth under a thousandth of the remaining headroom per year counts as flat
    if slope <= (limit - current) / 365_000:
        return Projection(**common, status="flat")
    x_reach = (limit - intercept) / slope
    days_left = max(0.0, x_reach - (today - first).days)
    if days_left > 100 * 365:  # beyond any plan (and beyond what a date can hold)
        return Projection(**common, status="later", days_left=days_left)
    reaches_on = first + timedelta(days=x_reach)
    status: Status = "within horizon" if days_left <= horizon_days else "later"
    return Projection(**common, status=status, reaches_on=reaches_on, days_left=days_left)
