"""``session_events`` monthly partitions converged on a real PostgreSQL 18.

Fixtures (``pg``, ``db``, ``conn``) and helpers are in ``tests/support/pg_fixtures.py``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from tests.support.pg_fixtures import AHEAD, assert_converged, converge_all, scalar
from twinme_ops.database.postgres import partitions as pg_partitions
from twinme_ops.database.postgres.partitions import (
    PartitionLayoutError,
    converge_partitions,
    current_month,
    partition_months,
    partitions_drift,
)
from twinme_ops.scratch.postgres import PostgresServer

# --------------------------------------------------------------------------------------------
# Partitions


def test_partition_months_follow_today_not_2024() -> None:
    months = partition_months(3, dt.date(2026, 11, 30))
    assert [m.name for m in months] == [
        "session_events_2026_11",
        "session_events_2026_12",
        "session_events_2027_01",
        "session_events_2027_02",
    ]
    assert months[1].start == dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert months[1].end == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    assert len(partition_months(0, dt.date(2030, 5, 2))) == 1
    assert current_month(dt.date(2030, 5, 20)) == dt.date(2030, 5, 1)
    # no date: the Paris month; the list starts at the UTC month while Paris is already ahead
    late = dt.datetime(2026, 12, 31, 23, 30, tzinfo=dt.UTC)  # 00:30 on 1 January in Paris
    assert current_month(now=late) == dt.date(2027, 1, 1)
    names = [m.name for m in partition_months(1, now=late)]
    assert names == ["session_events_2026_12", "session_events_2027_01", "session_events_2027_02"]
    noon = dt.datetime(2026, 12, 15, 12, tzinfo=dt.UTC)
    assert [m.name for m in partition_months(1, now=noon)] == names[:2]
    with pytest.raises(ValueError):
        partition_months(-1)


def test_dropped_future_partition_is_recreated(conn: Any) -> None:
    converge_all(conn)
    gone = partition_months(AHEAD)[5]
    conn.execute(f"DROP TABLE {gone.name}".encode())
    assert partitions_drift(conn, AHEAD) == [
        f"missing partition {gone.name} for {gone.start:%Y-%m} (FOR VALUES {gone.bounds_sql})"
    ]
    report = converge_partitions(conn, months_ahead=AHEAD)
    assert report.statements() == [
        f"CREATE TABLE public.{gone.name} PARTITION OF public.session_events "
        f"FOR VALUES {gone.bounds_sql}"
    ]
    assert_converged(conn)


def test_partitions_for_another_today_across_a_year(conn: Any) -> None:
    today = dt.date(2031, 12, 15)
    drift = partitions_drift(conn, 2, today)
    assert [d.split()[2] for d in drift] == [
        "session_events_2031_12",
        "session_events_2032_01",
        "session_events_2032_02",
    ]
    assert len(converge_partitions(conn, months_ahead=2, today=today).changes) == 3
    assert partitions_drift(conn, 2, today) == []
    assert not converge_partitions(conn, months_ahead=2, today=today).changed


def test_months_covered_otherwise_and_blocked_months(conn: Any) -> None:
    today = dt.date(2035, 1, 10)
    # a quarterly partition covers three months: nothing to create for them
    conn.execute(
        "CREATE TABLE session_events_2035_q1 PARTITION OF session_events "
        "FOR VALUES FROM ('2035-01-01 00:00:00+00') TO ('2035-04-01 00:00:00+00')"
    )
    assert partitions_drift(conn, 2, today) == []
    # a partition with Paris bounds only partly covers two UTC months: reported, never overlapped
    conn.execute(
        "CREATE TABLE session_events_2035_05 PARTITION OF session_events "
        "FOR VALUES FROM ('2035-05-01 00:00:00+02') TO ('2035-06-01 00:00:00+02')"
    )
    # and a plain table holds the name another month needs
    conn.execute("CREATE TABLE session_events_2035_06 (id bigint)")
    drift = partitions_drift(conn, 6, today)
    assert len(drift) == 4
    assert drift[0].startswith("missing partition session_events_2035_07 for 2035-07")
    for month, text in zip(("04", "05"), drift[1:3], strict=True):
        assert text.startswith(
            f"2035-{month} is only partly covered by public.session_events_2035_05: a monthly "
            f"partition session_events_2035_{month} would overlap it"
        )
    assert drift[3].startswith(
        "2035-06 has no partition and the name session_events_2035_06 is taken by a relation"
    )
    before = scalar(conn, "SELECT count(*) FROM pg_inherits")
    with pytest.raises(PartitionLayoutError, match="cannot create the monthly partitions"):
        converge_partitions(conn, months_ahead=6, today=today)
    assert scalar(conn, "SELECT count(*) FROM pg_inherits") == before  # nothing created


def _session_id(conn: Any) -> int:
    return int(scalar(conn, "SELECT min(id) FROM sessions"))


def _insert_events(conn: Any, at: dt.datetime, n: int) -> None:
    conn.execute(
        "INSERT INTO session_events (session_id, event_type, occurred_at) "
        "SELECT %s, 'late', %s + i * interval '1 minute' FROM generate_series(1, %s) i",
        (_session_id(conn), at, n),
    )


def _where_events(conn: Any) -> dict[int, str]:
    rows = conn.execute("SELECT id, tableoid::regclass::text FROM session_events").fetchall()
    return {int(r[0]): str(r[1]) for r in rows}


@pytest.mark.parametrize("race", [False, True], ids=["counted", "appeared-after-count"])
def test_rows_in_default_move_to_the_new_partition(
    conn: Any, race: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    converge_all(conn)
    months = partition_months(8)
    target, beyond = months[8], months[8].end
    _insert_events(conn, target.start + dt.timedelta(days=3), 25)
    _insert_events(conn, beyond + dt.timedelta(days=3), 4)  # stays in DEFAULT: no partition
    before = _where_events(conn)
    assert sum(t == "session_events_default" for t in before.values()) == 29
    assert any(f"missing partition {target.name}" in d for d in partitions_drift(conn, 8))
    if race:
        # rows that reach DEFAULT between the check and the CREATE: the CREATE fails, then moves
        monkeypatch.setattr(pg_partitions, "_default_has_rows", lambda *a: False)

    report = converge_partitions(conn, months_ahead=8)

    sql = report.statements()
    assert sql[-4:] == [
        "ALTER TABLE public.session_events DETACH PARTITION public.session_events_default",
        f"CREATE TABLE public.{target.name} PARTITION OF public.session_events "
        f"FOR VALUES {target.bounds_sql}",
        sql[-2],
        "ALTER TABLE public.session_events ATTACH PARTITION public.session_events_default DEFAULT",
    ]
    assert sql[-2].startswith("WITH moved AS (DELETE FROM public.session_events_default")
    assert report.changes[-2].detail == "25 rows moved out of public.session_events_default"
    after = _where_events(conn)
    assert after.keys() == before.keys()  # same rows, same ids
    assert sum(t == target.name for t in after.values()) == 25
    assert sum(t == "session_events_default" for t in after.values()) == 4
    assert (
        scalar(
            conn,
            "SELECT partdefid::regclass::text FROM pg_partitioned_table "
            "WHERE partrelid = 'session_events'::regclass",
        )
        == "session_events_default"
    )
    assert partitions_drift(conn, 8) == []
    assert not converge_partitions(conn, months_ahead=8).changed


def test_plain_session_events_is_a_clear_error(pg: PostgresServer) -> None:
    with pg.connect("postgres") as admin:
        admin.execute("DROP DATABASE IF EXISTS plain_events")
        admin.execute("CREATE DATABASE plain_events")
    try:
        with pg.connect("plain_events") as conn:
            conn.execute(
                "CREATE TABLE session_events (id bigint PRIMARY KEY, occurred_at timestamptz)"
            )
            for call in (
                lambda: converge_partitions(conn),
                lambda: partitions_drift(conn),
            ):
                with pytest.raises(PartitionLayoutError) as err:
                    call()
                assert "session_events is a plain table: partitioning needs a migration" in str(
                    err.value
                )
    finally:
        with pg.connect("postgres") as admin:
            admin.execute("DROP DATABASE plain_events WITH (FORCE)")
