"""``session_events`` monthly range partitions as converged state.

Monthly partitions from the current month (Europe/Paris) to N months ahead (the spec hard-coded
2024): :func:`converge_partitions` creates the missing ones, moving rows out of the DEFAULT
partition when needed; :func:`partitions_drift` changes nothing. The connection must be in
autocommit mode (see :mod:`twinme_ops.database.postgres.objects`). No Dagster in this module.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from twinme_ops.common.log import Log
from twinme_ops.database.convergence import ConvergeReport
from twinme_ops.database.postgres.objects import (
    LOCK_TIMEOUT,
    Conn,
    PgObjectsError,
    qualified_table,
    require_autocommit,
    require_tables,
)

PARTITIONED_TABLE = "session_events"
PARTITION_MONTHS_AHEAD = 3
# "Today" is a Paris date (the product's time zone). Month bounds stay UTC midnights, the
# convention of the schema and the seed: mixing conventions would make partitions overlap.
PARTITION_TIMEZONE = "Europe/Paris"


class PartitionLayoutError(PgObjectsError):
    """``session_events`` is not partitioned the way monthly partitions need."""


@dataclass(frozen=True)
class MonthPartition:
    """One monthly partition: its name and its bounds, UTC midnights ``[start, end)``."""

    name: str
    start: dt.datetime
    end: dt.datetime

    @property
    def bounds_sql(self) -> str:
        return f"FROM ('{self.start:%Y-%m-%d} 00:00:00+00') TO ('{self.end:%Y-%m-%d} 00:00:00+00')"


def current_month(today: dt.date | None = None, *, now: dt.datetime | None = None) -> dt.date:
    """First day of the current month: ``today``'s, else the month of ``now`` (default: the
    clock) in Europe/Paris."""
    if today is not None:
        return today.replace(day=1)
    now = now or dt.datetime.now(dt.UTC)
    return now.astimezone(ZoneInfo(PARTITION_TIMEZONE)).date().replace(day=1)


def partition_months(
    months_ahead: int = PARTITION_MONTHS_AHEAD,
    today: dt.date | None = None,
    *,
    now: dt.datetime | None = None,
) -> list[MonthPartition]:
    """The partitions wanted: the current month (Paris) and ``months_ahead`` more.

    Without ``today``, the list starts at the UTC month when it is earlier: in the hour or two
    after midnight on the 1st, Paris is in the new month while the rows written now (bounds are
    UTC) still belong to the old one.
    """
    if months_ahead < 0:
        raise ValueError(f"months_ahead must be >= 0, got {months_ahead}")
    last = current_month(today, now=now)
    first = last
    if today is None:
        first = min(
            first, (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC).date().replace(day=1)
        )
    start = first.year * 12 + first.month - 1
    stop = last.year * 12 + last.month - 1 + months_ahead
    months: list[MonthPartition] = []
    for index in range(start, stop + 1):
        y, m = divmod(index, 12)
        ny, nm = divmod(index + 1, 12)
        months.append(
            MonthPartition(
                f"{PARTITIONED_TABLE}_{y:04d}_{m + 1:02d}",
                dt.datetime(y, m + 1, 1, tzinfo=dt.UTC),
                dt.datetime(ny, nm + 1, 1, tzinfo=dt.UTC),
            )
        )
    return months


@dataclass
class _Layout:
    """How ``session_events`` is partitioned right now."""

    schema: str
    parent: str  # schema-qualified, quoted
    key: str  # partition key column, quoted
    default: str | None  # schema-qualified DEFAULT partition
    # attached range partitions: (qualified name, lower, upper); None = MINVALUE / MAXVALUE
    ranges: list[tuple[str, dt.datetime | None, dt.datetime | None]]


_BOUND_RE = re.compile(r"^FOR VALUES FROM \((.+)\) TO \((.+)\)$", re.S)


def _layout(conn: Conn) -> _Layout:
    require_tables(conn, [PARTITIONED_TABLE])
    schema, parent = qualified_table(conn, PARTITIONED_TABLE)
    row = conn.execute(
        "SELECT c.relkind, p.partstrat, p.partnatts, quote_ident(a.attname), "
        "format_type(a.atttypid, a.atttypmod), "
        "(SELECT format('%%I.%%I', dn.nspname, d.relname) FROM pg_class d "
        " JOIN pg_namespace dn ON dn.oid = d.relnamespace WHERE d.oid = p.partdefid) "
        "FROM pg_class c LEFT JOIN pg_partitioned_table p ON p.partrelid = c.oid "
        "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = p.partattrs[0] "
        "WHERE c.oid = to_regclass(%s)",
        (PARTITIONED_TABLE,),
    ).fetchone()
    assert row is not None  # require_tables checked it
    relkind, strategy, natts, key, key_type, default = row
    if relkind != "p":
        raise PartitionLayoutError(
            f"{PARTITIONED_TABLE} is a plain table: partitioning needs a migration (create a "
            f"table PARTITION BY RANGE (occurred_at) with a DEFAULT partition, copy the rows, "
            f"swap the names in one transaction), which this tuning step does not do. Fix: run "
            f"that migration, or apply the TwinMe schema to a new database."
        )
    if strategy != "r" or natts != 1 or key is None:
        raise PartitionLayoutError(
            f"{PARTITIONED_TABLE} is not partitioned BY RANGE on one column: monthly partitions "
            f"cannot be added. Fix: migrate it to PARTITION BY RANGE (occurred_at)."
        )
    if key_type != "timestamp with time zone":
        raise PartitionLayoutError(
            f"{PARTITIONED_TABLE} is partitioned on {key} of type {key_type}; monthly partitions "
            f"are declared for a timestamptz key. Fix: migrate the key to timestamptz."
        )
    bounds = conn.execute(
        "SELECT format('%%I.%%I', n.nspname, c.relname), pg_get_expr(c.relpartbound, c.oid) "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE i.inhparent = to_regclass(%s) ORDER BY 1",
        (PARTITIONED_TABLE,),
    ).fetchall()
    names: list[str] = []
    literals: list[str | None] = []
    for name, bound in bounds:
        match = _BOUND_RE.match(bound or "")
        if match is None:  # DEFAULT
            continue
        names.append(name)
        literals += [_bound_literal(match.group(1)), _bound_literal(match.group(2))]
    # the server parses its own literals: no guessing at DateStyle or TimeZone here
    values = [
        r[0]
        for r in conn.execute(
            "SELECT v::timestamptz FROM unnest(%s::text[]) WITH ORDINALITY AS u(v, i) ORDER BY i",
            (literals,),
        ).fetchall()
    ]
    ranges = [(n, values[2 * i], values[2 * i + 1]) for i, n in enumerate(names)]
    return _Layout(schema, parent, key, default, ranges)


def _bound_literal(text: str) -> str | None:
    text = text.strip()
    if text.upper() in ("MINVALUE", "MAXVALUE"):
        return None
    if text.startswith("'") and text.endswith("'"):
        return text[1:-1].replace("''", "'")
    return text


def _coverage(layout: _Layout, month: MonthPartition) -> tuple[str, list[str]]:
    """``("missing" | "covered" | "partial", overlapping partitions)`` for one month."""
    overlapping = [
        (name, lo, hi)
        for name, lo, hi in layout.ranges
        if (lo is None or lo < month.end) and (hi is None or hi > month.start)
    ]
    if not overlapping:
        return "missing", []
    reached = month.start
    for _name, lo, hi in sorted(
        overlapping, key=lambda r: r[1] or dt.datetime.min.replace(tzinfo=dt.UTC)
    ):
        if lo is not None and lo > reached:
            break  # a gap
        if hi is None or hi >= month.end:
            return "covered", [r[0] for r in overlapping]
        reached = max(reached, hi)
    return "partial", [r[0] for r in overlapping]


@dataclass
class _PartitionPlan:
    """Months to create, and months that cannot be created as declared (with the reason)."""

    missing: list[MonthPartition]
    blocked: list[str]

    def drift(self) -> list[str]:
        return [
            f"missing partition {m.name} for {m.start:%Y-%m} (FOR VALUES {m.bounds_sql})"
            for m in self.missing
        ] + self.blocked


def _partition_plan(
    conn: Conn, layout: _Layout, months: Sequence[MonthPartition]
) -> _PartitionPlan:
    plan = _PartitionPlan([], [])
    for month in months:
        state, others = _coverage(layout, month)
        if state == "covered":
            continue
        if state == "partial":
            plan.blocked.append(
                f"{month.start:%Y-%m} is only partly covered by {', '.join(others)}: a monthly "
                f"partition {month.name} would overlap it. Fix the bounds by hand"
            )
            continue
        taken = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f"{layout.schema}.{month.name}",)
        ).fetchone()
        if taken and taken[0]:
            plan.blocked.append(
                f"{month.start:%Y-%m} has no partition and the name {month.name} is taken by a "
                f"relation that is not a partition of {PARTITIONED_TABLE}. Fix: attach it "
                f"(ALTER TABLE {layout.parent} ATTACH PARTITION {layout.schema}.{month.name} "
                f"FOR VALUES {month.bounds_sql}) or rename it"
            )
            continue
        plan.missing.append(month)
    return plan


def partitions_drift(
    conn: Conn, months_ahead: int = PARTITION_MONTHS_AHEAD, today: dt.date | None = None
) -> list[str]:
    """Months from the current one to ``months_ahead`` ahead without a partition, one sentence each.

    Raises :class:`PartitionLayoutError` when ``session_events`` is not range-partitioned and
    :class:`MissingTablesError` when it does not exist.
    """
    return _partition_plan(conn, _layout(conn), partition_months(months_ahead, today)).drift()


def converge_partitions(
    conn: Conn,
    *,
    months_ahead: int = PARTITION_MONTHS_AHEAD,
    today: dt.date | None = None,
    log: Log | None = None,
) -> ConvergeReport:
    """Create the missing monthly partitions of ``session_events``, one transaction each.

    Rows of a new month that already sit in the DEFAULT partition (inserted before the month had
    a partition) make ``CREATE TABLE ... PARTITION OF`` fail. They are moved: in one transaction
    the DEFAULT partition is detached, the month's partition created, the rows moved
    (``DELETE ... RETURNING`` into ``INSERT``, ids kept) and DEFAULT attached again. That
    transaction holds an ACCESS EXCLUSIVE lock on ``session_events`` while the rows move.

    A month already covered by partitions named otherwise is left alone. One only partly covered,
    or whose name is taken by a table that is not a partition, raises
    :class:`PartitionLayoutError` (before anything is created), as does an unpartitioned
    ``session_events``.
    """
    require_autocommit(conn)
    report = ConvergeReport()
    layout = _layout(conn)
    plan = _partition_plan(conn, layout, partition_months(months_ahead, today))
    if plan.blocked:
        raise PartitionLayoutError(
            f"{PARTITIONED_TABLE}: cannot create the monthly partitions: {'; '.join(plan.blocked)}"
        )
    for month in plan.missing:
        _create_partition(conn, layout, month, report, log)
    return report


def _create_partition(
    conn: Conn, layout: _Layout, month: MonthPartition, report: ConvergeReport, log: Log | None
) -> None:
    import psycopg

    name = f"{layout.schema}.{month.name}"
    create = f"CREATE TABLE {name} PARTITION OF {layout.parent} FOR VALUES {month.bounds_sql}"
    if not _default_has_rows(conn, layout, month):
        try:
            with conn.transaction():
                conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'".encode())
                conn.execute(create.encode())
            report.add(name, create, log)
            return
        except psycopg.errors.CheckViolation:
            pass  # rows reached DEFAULT since we looked: move them
    assert layout.default is not None  # a CheckViolation names the DEFAULT partition
    cols = ", ".join(_insertable_columns(conn))
    where = (
        f"{layout.key} >= '{month.start:%Y-%m-%d} 00:00:00+00' "
        f"AND {layout.key} < '{month.end:%Y-%m-%d} 00:00:00+00'"
    )
    detach = f"ALTER TABLE {layout.parent} DETACH PARTITION {layout.default}"
    move = (
        f"WITH moved AS (DELETE FROM {layout.default} WHERE {where} RETURNING {cols}) "
        f"INSERT INTO {name} ({cols}) {_overriding(conn)}SELECT {cols} FROM moved"
    )
    attach = f"ALTER TABLE {layout.parent} ATTACH PARTITION {layout.default} DEFAULT"
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'".encode())
        conn.execute(detach.encode())
        conn.execute(create.encode())
        moved = conn.execute(move.encode()).rowcount
        conn.execute(attach.encode())
    report.add(name, detach, log)
    report.add(name, create, log)
    report.add(name, move, log, f"{moved} rows moved out of {layout.default}")
    report.add(name, attach, log)
    report.notes.append(f"{name}: {moved} rows moved from {layout.default}")


def _default_has_rows(conn: Conn, layout: _Layout, month: MonthPartition) -> bool:
    if layout.default is None:
        return False
    row = conn.execute(
        f"SELECT EXISTS (SELECT 1 FROM {layout.default} WHERE {layout.key} >= %s "
        f"AND {layout.key} < %s)".encode(),
        (month.start, month.end),
    ).fetchone()
    return bool(row and row[0])


def _insertable_columns(conn: Conn) -> list[str]:
    rows = conn.execute(
        "SELECT quote_ident(attname) FROM pg_attribute WHERE attrelid = to_regclass(%s) "
        "AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
        (PARTITIONED_TABLE,),
    ).fetchall()
    return [r[0] for r in rows]


def _overriding(conn: Conn) -> str:
    """``OVERRIDING SYSTEM VALUE`` when an identity column is GENERATED ALWAYS (ids are kept)."""
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) "
        "AND attidentity = 'a' AND NOT attisdropped)",
        (PARTITIONED_TABLE,),
    ).fetchone()
    return "OVERRIDING SYSTEM VALUE " if row and row[0] else ""
