"""The straight-line projection: dates it gives, and the ones it refuses to give."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

import pytest

from twinme_ops.capacity.projection import project

DAY0 = date(2026, 11, 1)
GIB = 1024**3


def days(values: Sequence[float]) -> list[tuple[date, float]]:
    return [(DAY0 + timedelta(days=i), v) for i, v in enumerate(values)]


def test_steady_growth_reaches_the_limit_on_the_right_day() -> None:
    # 10 GiB growing 1 GiB a day for 10 days (day 9: 19 GiB); the 50 GiB volume fills on day 40
    points = days([(10 + i) * GIB for i in range(10)])
    today = DAY0 + timedelta(days=9)
    p = project("postgres", "PostgreSQL database", points, limit=50 * GIB, today=today)
    assert p.slope_per_day == pytest.approx(GIB)
    assert p.reaches_on == DAY0 + timedelta(days=40)
    assert p.days_left == pytest.approx(31)
    assert p.status == "later" and not p.alarming
    # with a 40 GiB volume: day 30, 21 days from now: within the 30-day horizon
    p = project("postgres", "PostgreSQL database", points, limit=40 * GIB, today=today)
    assert p.status == "within horizon" and p.alarming
    assert p.days_left == pytest.approx(21)


def test_noisy_growth_is_fitted_not_read_from_two_points() -> None:
    # +1 GiB a day with the last night 3 GiB high: the fit barely moves
    values = [(10 + i) * GIB for i in range(14)]
    values[-1] += 3 * GIB
    p = project("x", "x", days(values), limit=100 * GIB, today=DAY0 + timedelta(days=13))
    assert 1.0 < p.slope_per_day / GIB < 1.2  # type: ignore[operator]


def test_flat_and_shrinking_never_reach_the_limit() -> None:
    for values in ([5 * GIB] * 10, [(20 - i) * GIB for i in range(10)]):
        p = project("redis", "Redis", days(values), limit=30 * GIB, today=DAY0 + timedelta(9))
        assert p.status == "flat" and p.reaches_on is None and not p.alarming


def test_too_little_history_gives_no_date() -> None:
    # two sets, or none
    for values in ([GIB, 2 * GIB], []):
        p = project("files", "Files", days(values), limit=3 * GIB, today=DAY0 + timedelta(5))
        assert p.status in ("too little history", "no data")
        assert p.reaches_on is None and not p.alarming


def test_already_over_the_limit_is_alarming_whatever_the_history() -> None:
    p = project("redis", "Redis", days([9 * GIB]), limit=8 * GIB, today=DAY0)
    assert p.status == "exceeded" and p.alarming and p.days_left == 0


def test_no_limit_reports_growth_only() -> None:
    p = project("backup_set", "Backups", days([1, 2, 3, 4.0]), limit=None, today=DAY0)
    assert p.status == "no limit" and p.slope_per_day == pytest.approx(1)


def test_a_far_future_does_not_overflow_dates() -> None:
    # 10 MB a day into a 1 TiB headroom: 300 years, past any plan but not flat
    values = [GIB + i * 10**7 for i in range(3)]
    p = project("x", "x", days(values), limit=1024 * GIB, today=DAY0 + timedelta(2))
    assert p.status == "later" and p.reaches_on is None
    assert p.days_left is not None and p.days_left > 100 * 365
    # a byte a day is flat
    p = project("x", "x", days([GIB, GIB + 1, GIB + 2]), limit=1024 * GIB, today=DAY0)
    assert p.status == "flat"
