"""Database objects the spec's ``production-setup.sql`` created once, as converged state.

Three aspects, each with a converge function (changes only what differs, returns a
:class:`~twinme_ops.lib.convergence.ConvergeReport`) and a drift function (changes nothing):

- ``session_events`` partitions: monthly range partitions from the current month to N months
  ahead (the spec hard-coded 2024);
- publication ``twinme_pub``: exactly the spec's five tables;
- row-level security on ``conversations`` and ``messages``: the role ``authenticated_users`` and
  the function ``current_user_id()`` (both used by the spec, never defined), RLS enabled and
  forced, the spec's policies (with ``WITH CHECK``), and the grants that make them usable.

Connections are passed in and must be in autocommit mode: each converge step runs in a
transaction of its own, so a failure leaves the previous state, never half of a change.
Statements run with a ``lock_timeout``, so a busy table makes the step fail instead of queueing
every API query behind an ACCESS EXCLUSIVE lock request.

No Dagster in this module: it is plain library code.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

from twinme_ops.lib.convergence import ConvergeReport, Log

PARTITIONED_TABLE = "session_events"
PARTITION_MONTHS_AHEAD = 3
# "Today" is a Paris date (the product's time zone). Month bounds stay UTC midnights, the
# convention of the schema and the seed: mixing conventions would make partitions overlap.
PARTITION_TIMEZONE = "Europe/Paris"
PUBLICATION = "twinme_pub"
PUBLICATION_TABLES = ("users", "conversations", "messages", "document_chunks", "sessions")
PUBLISH_OPERATIONS = "insert, update, delete, truncate"
RLS_ROLE = "authenticated_users"
RLS_TABLES = ("conversations", "messages")
USER_ID_SETTING = "app.current_user_id"
USER_ID_FUNCTION = "current_user_id"
# What the role may do on RLS_TABLES: the policies then decide which rows.
RLS_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE")
LOCK_TIMEOUT = "5s"
TWINME_SCHEMA_FIX = "apply the TwinMe schema, or point DATABASE_URL at the TwinMe database"

Conn = psycopg.Connection[Any]


class PgObjectsError(RuntimeError):
    """A database object cannot be converged; the message names the problem and the fix."""


class MissingTablesError(PgObjectsError):
    """The database lacks TwinMe tables (or columns): not the TwinMe database, or not migrated.

    Shared by every database tuning step (pg_objects and pg_indexes raise it).
    """

    def __init__(self, database: str, tables: Sequence[str]) -> None:
        self.database = database
        self.tables = list(tables)
        super().__init__(
            f"database {database} lacks TwinMe tables/columns: {', '.join(self.tables)}. "
            f"Fix: {TWINME_SCHEMA_FIX}."
        )


class PartitionLayoutError(PgObjectsError):
    """``session_events`` is not partitioned the way monthly partitions need."""


class PublicationError(PgObjectsError):
    """The publication exists in a form the converge step will not rewrite on its own."""


# --------------------------------------------------------------------------------------------
# Shared helpers


def require_tables(conn: Conn, tables: Iterable[str]) -> None:
    """Raise :class:`MissingTablesError` naming every table of ``tables`` that does not exist."""
    names = list(tables)
    rows = conn.execute(
        "SELECT t FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, i) "
        "LEFT JOIN pg_class c ON c.oid = to_regclass(t) "
        "WHERE c.oid IS NULL OR c.relkind NOT IN ('r', 'p') ORDER BY i",
        (names,),
    ).fetchall()
    if rows:
        row = conn.execute("SELECT current_database()").fetchone()
        raise MissingTablesError(str(row[0]) if row else "?", [r[0] for r in rows])


def _require_autocommit(conn: Conn) -> None:
    if not conn.autocommit:
        raise ValueError(
            "pg_objects needs an autocommit connection (each step manages its own transaction)"
        )


def _qualified(conn: Conn, table: str) -> tuple[str, str]:
    """``(schema, schema.table)`` of a table found through the search path, quoted as needed."""
    row = conn.execute(
        "SELECT quote_ident(n.nspname), format('%%I.%%I', n.nspname, c.relname) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.oid = to_regclass(%s)",
        (table,),
    ).fetchone()
    if row is None:  # require_tables ran first: only a concurrent DROP gets here
        raise MissingTablesError("?", [table])
    return str(row[0]), str(row[1])


@dataclass(frozen=True)
class _Statement:
    """A planned change: the drift it repairs (``reason``) and the statement that repairs it."""

    target: str
    sql: str
    reason: str  # empty: not drift on its own (a grant that goes with a new object)
    detail: str = ""


def _converge_plan(
    conn: Conn, planner: Callable[[Conn], list[_Statement]], log: Log | None
) -> ConvergeReport:
    """Plan and apply in one transaction, so the plan is made from the state it changes."""
    _require_autocommit(conn)
    report = ConvergeReport()
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'".encode())
        plan = planner(conn)
        for st in plan:
            conn.execute(st.sql.encode())
    for st in plan:
        report.add(st.target, st.sql, log, st.detail)
    return report


# --------------------------------------------------------------------------------------------
# session_events partitions


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
    schema, parent = _qualified(conn, PARTITIONED_TABLE)
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
    _require_autocommit(conn)
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


# --------------------------------------------------------------------------------------------
# Publication


def _table_oids(conn: Conn, tables: Sequence[str]) -> dict[int, str]:
    """``{oid: schema.table}`` for tables found through the search path, in ``tables`` order."""
    rows = conn.execute(
        "SELECT c.oid::int8, format('%%I.%%I', n.nspname, c.relname) "
        "FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, i) "
        "JOIN pg_class c ON c.oid = to_regclass(t) JOIN pg_namespace n ON n.oid = c.relnamespace "
        "ORDER BY i",
        (list(tables),),
    ).fetchall()
    return {int(r[0]): str(r[1]) for r in rows}


def _publication_plan(conn: Conn) -> list[_Statement]:
    require_tables(conn, PUBLICATION_TABLES)
    desired = _table_oids(conn, PUBLICATION_TABLES)
    wanted = ", ".join(desired.values())
    pub = conn.execute(
        "SELECT oid::int8, puballtables, pubinsert AND pubupdate AND pubdelete AND pubtruncate "
        "FROM pg_publication WHERE pubname = %s",
        (PUBLICATION,),
    ).fetchone()
    if pub is None:
        return [
            _Statement(
                PUBLICATION,
                f"CREATE PUBLICATION {PUBLICATION} FOR TABLE {wanted}",
                f"publication {PUBLICATION} does not exist",
            )
        ]
    pub_oid, all_tables, all_operations = pub
    if all_tables:
        raise PublicationError(
            f"publication {PUBLICATION} is FOR ALL TABLES: it cannot be narrowed to "
            f"{', '.join(PUBLICATION_TABLES)} in place. Fix: DROP PUBLICATION {PUBLICATION} "
            f"(subscribers resynchronise) and run this step again"
        )
    rels = conn.execute(
        "SELECT r.prrelid::int8, format('%%I.%%I', n.nspname, c.relname), "
        "r.prqual IS NOT NULL OR r.prattrs IS NOT NULL "
        "FROM pg_publication_rel r JOIN pg_class c ON c.oid = r.prrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE r.prpubid = %s ORDER BY 2",
        (pub_oid,),
    ).fetchall()
    schemas = [
        r[0]
        for r in conn.execute(
            "SELECT quote_ident(n.nspname) FROM pg_publication_namespace p "
            "JOIN pg_namespace n ON n.oid = p.pnnspid WHERE p.pnpubid = %s ORDER BY 1",
            (pub_oid,),
        ).fetchall()
    ]
    published = {int(r[0]): str(r[1]) for r in rels}
    partial = [str(r[1]) for r in rels if r[2] and int(r[0]) in desired]
    missing = [name for oid, name in desired.items() if oid not in published]
    extra = [name for oid, name in published.items() if oid not in desired]
    plan: list[_Statement] = []
    if schemas or partial:
        # SET TABLE replaces tables, schemas, row filters and column lists in one statement
        reasons = [f"{PUBLICATION} publishes every table of schema {s}" for s in schemas]
        reasons += [
            f"{PUBLICATION} publishes {t} with a row filter or column list" for t in partial
        ]
        reasons += [f"{PUBLICATION} does not publish {t}" for t in missing]
        reasons += [f"{PUBLICATION} also publishes {t}" for t in extra]
        plan.append(
            _Statement(
                PUBLICATION,
                f"ALTER PUBLICATION {PUBLICATION} SET TABLE {wanted}",
                "; ".join(reasons),
            )
        )
    else:
        if missing:
            plan.append(
                _Statement(
                    PUBLICATION,
                    f"ALTER PUBLICATION {PUBLICATION} ADD TABLE {', '.join(missing)}",
                    f"{PUBLICATION} does not publish {', '.join(missing)}",
                )
            )
        if extra:
            plan.append(
                _Statement(
                    PUBLICATION,
                    f"ALTER PUBLICATION {PUBLICATION} DROP TABLE {', '.join(extra)}",
                    f"{PUBLICATION} also publishes {', '.join(extra)}",
                )
            )
    if not all_operations:
        plan.append(
            _Statement(
                PUBLICATION,
                f"ALTER PUBLICATION {PUBLICATION} SET (publish = '{PUBLISH_OPERATIONS}')",
                f"{PUBLICATION} does not publish every operation ({PUBLISH_OPERATIONS})",
            )
        )
    return plan


def publication_drift(conn: Conn) -> list[str]:
    """How ``twinme_pub`` differs from exactly the spec's five tables (every operation)."""
    return [st.reason for st in _publication_plan(conn)]


def converge_publication(conn: Conn, log: Log | None = None) -> ConvergeReport:
    """Make ``twinme_pub`` publish exactly users, conversations, messages, document_chunks and
    sessions.

    Creates the publication when missing, ``ADD TABLE`` the missing tables and ``DROP TABLE`` the
    extra ones: the declared state is exact, and a table published by mistake would be copied to
    every subscriber (an extra table that a subscriber needs must be declared here). Schemas,
    row filters and column lists are replaced with ``SET TABLE``. A ``FOR ALL TABLES``
    publication raises :class:`PublicationError`: narrowing it means dropping it.

    ``wal_level`` does not gate any of this: ``CREATE PUBLICATION`` with ``wal_level`` below
    ``logical`` only warns, and the publication is created. Nothing is decoded until
    ``wal_level = logical`` (a setting that needs a server restart): the report says so in its
    notes, on every run.
    """
    report = _converge_plan(conn, _publication_plan, log)
    row = conn.execute("SELECT current_setting('wal_level')").fetchone()
    if row and row[0] != "logical":
        report.notes.append(
            f"wal_level is {row[0]}: {PUBLICATION} exists, but subscribers receive nothing until "
            f"wal_level = logical, which needs a server restart"
        )
    return report


# --------------------------------------------------------------------------------------------
# Row-level security


@dataclass(frozen=True)
class _Policy:
    """A declared policy: its table, the expression (for USING and WITH CHECK) and how
    PostgreSQL prints that expression back (``pg_get_expr``, whitespace normalised)."""

    name: str
    table: str
    expression: str  # with {fn} (the qualified function call) and {conversations}
    printed: str


POLICIES = (
    _Policy(
        "user_conversations",
        "conversations",
        "user_id = {fn}",
        "(user_id = current_user_id())",
    ),
    _Policy(
        "user_messages",
        "messages",
        "conversation_id IN (SELECT id FROM {conversations} WHERE user_id = {fn})",
        "(conversation_id IN (SELECT conversations.id FROM conversations "
        "WHERE (conversations.user_id = current_user_id())))",
    ),
)


def _normalize_expr(expr: str | None, schema: str) -> str | None:
    """Whitespace-insensitive form of a printed expression, without our schema's prefix (the
    printer qualifies names only when the reader's search path does not reach them)."""
    if expr is None:
        return None
    text = re.sub(r"\s+", " ", expr)
    text = re.sub(r"\(\s+", "(", text)
    text = re.sub(r"\s+\)", ")", text).strip()
    return text.replace(f"{schema}.", "")


def _scalar(conn: Conn, query: str, params: Sequence[Any] = ()) -> Any:
    row = conn.execute(query.encode(), params).fetchone()
    return row[0] if row else None


def _rls_plan(conn: Conn) -> list[_Statement]:
    """Every statement that brings row-level security to its declared state, in a safe order:
    role, function, policies, then RLS on, and the table grants last (granting before RLS is
    forced would open every row, even for a moment)."""
    require_tables(conn, ("users", *RLS_TABLES))
    schema, _ = _qualified(conn, "conversations")
    tables = {t: _qualified(conn, t)[1] for t in RLS_TABLES}
    fn = f"{schema}.{USER_ID_FUNCTION}()"
    plan: list[_Statement] = []

    role = conn.execute(
        "SELECT rolcanlogin, rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s", (RLS_ROLE,)
    ).fetchone()
    if role is None:
        plan.append(
            _Statement(
                RLS_ROLE, f"CREATE ROLE {RLS_ROLE} NOLOGIN", f"role {RLS_ROLE} does not exist"
            )
        )
    else:
        wrong = [
            (flag, why)
            for flag, why, bad in (
                ("NOLOGIN", "can log in", role[0]),
                ("NOSUPERUSER", "is a superuser", role[1]),
                ("NOBYPASSRLS", "bypasses row-level security", role[2]),
            )
            if bad
        ]
        if wrong:
            plan.append(
                _Statement(
                    RLS_ROLE,
                    f"ALTER ROLE {RLS_ROLE} {' '.join(f for f, _ in wrong)}",
                    f"role {RLS_ROLE} {' and '.join(w for _, w in wrong)}",
                )
            )
    role_exists = role is not None

    # current_user_id(): returns the type of users.id; NULL (no row matches) when unset or empty
    id_type = _scalar(
        conn,
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
        "WHERE attrelid = to_regclass('users') AND attname = 'id' AND NOT attisdropped",
    )
    if id_type is None:
        raise MissingTablesError(str(_scalar(conn, "SELECT current_database()")), ["users.id"])
    body = f"SELECT NULLIF(pg_catalog.current_setting('{USER_ID_SETTING}', true), '')::{id_type}"
    create_fn = (
        f"CREATE OR REPLACE FUNCTION {fn} RETURNS {id_type} LANGUAGE sql STABLE PARALLEL SAFE "
        f"AS $fn${body}$fn$"
    )
    current = conn.execute(
        "SELECT p.oid::int8, format_type(p.prorettype, NULL), p.proretset, p.provolatile, "
        "p.proparallel, p.prosecdef, l.lanname, p.prosrc, p.proconfig "
        "FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang "
        "WHERE p.pronamespace = %s::regnamespace AND p.proname = %s AND p.pronargs = 0",
        (schema, USER_ID_FUNCTION),
    ).fetchone()
    cascaded: set[tuple[str, str]] = set()  # policies a DROP FUNCTION ... CASCADE removes
    fn_is_new = current is None
    if current is None:
        plan.append(_Statement(fn, create_fn, f"function {fn} does not exist"))
    elif current[1] != id_type or current[2]:
        for polname, relname in conn.execute(
            "SELECT pol.polname, format('%%I.%%I', n.nspname, c.relname) FROM pg_depend d "
            "JOIN pg_policy pol ON pol.oid = d.objid JOIN pg_class c ON c.oid = pol.polrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE d.classid = 'pg_policy'::regclass AND d.refobjid = %s",
            (current[0],),
        ).fetchall():
            cascaded.add((str(relname), str(polname)))
        why = f"function {fn} returns {current[1]}, users.id is {id_type}"
        # the return type cannot change in place; the policies that use it go and are recreated
        plan.append(_Statement(fn, f"DROP FUNCTION {fn} CASCADE", why))
        plan.append(_Statement(fn, create_fn, ""))
        fn_is_new = True
    elif (current[3], current[4], current[5], current[6], current[7].strip(), current[8]) != (
        "s",
        "s",
        False,
        "sql",
        body,
        None,
    ):
        # CREATE OR REPLACE keeps the function's privileges and the policies that use it
        plan.append(
            _Statement(fn, create_fn, f"function {fn} differs from its declared definition")
        )
    if fn_is_new or not role_exists:
        # a new function's EXECUTE depends on default privileges: grant it rather than assume
        plan.append(_Statement(fn, f"GRANT EXECUTE ON FUNCTION {fn} TO {RLS_ROLE}", ""))
    elif not _scalar(
        conn, "SELECT has_function_privilege(%s, %s::regprocedure, 'EXECUTE')", (RLS_ROLE, fn)
    ):
        plan.append(
            _Statement(
                fn,
                f"GRANT EXECUTE ON FUNCTION {fn} TO {RLS_ROLE}",
                f"role {RLS_ROLE} cannot execute {fn}",
            )
        )

    # policies: exactly the declared ones (an extra permissive policy would widen access)
    for table in RLS_TABLES:
        qualified = tables[table]
        declared = {p.name: p for p in POLICIES if p.table == table}
        for polname, quoted, cmd, permissive, roles, qual, check in conn.execute(
            "SELECT polname, quote_ident(polname), polcmd, polpermissive, "
            "ARRAY(SELECT CASE WHEN r = 0 THEN 'public' ELSE pg_get_userbyid(r)::text END "
            "      FROM unnest(polroles) AS r ORDER BY 1), "
            "pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid) "
            "FROM pg_policy WHERE polrelid = to_regclass(%s) ORDER BY polname",
            (qualified,),
        ).fetchall():
            if (qualified, polname) in cascaded:
                continue
            policy = declared.get(polname)
            if policy is None:
                plan.append(
                    _Statement(
                        qualified,
                        f"DROP POLICY {quoted} ON {qualified}",
                        f"policy {polname} on {table} is not declared",
                    )
                )
                continue
            declared.pop(polname)
            differences = []
            if cmd != "*":
                differences.append(f"applies to {_COMMANDS.get(cmd, cmd)} only, not ALL")
            if not permissive:
                differences.append("is RESTRICTIVE")
            if list(roles) != [RLS_ROLE]:
                differences.append(f"is for {', '.join(roles)}, not {RLS_ROLE}")
            if _normalize_expr(qual, schema) != policy.printed:
                differences.append(f"USING {qual}")
            if _normalize_expr(check, schema) != policy.printed:
                differences.append(f"WITH CHECK {check}")
            if differences:
                why = f"policy {polname} on {table} differs: {'; '.join(differences)}"
                plan.append(_Statement(qualified, f"DROP POLICY {quoted} ON {qualified}", why))
                plan.append(
                    _Statement(qualified, _create_policy(policy, qualified, fn, tables), "")
                )
        for policy in declared.values():
            gone = (qualified, policy.name) in cascaded
            why = f"uses {fn}, which is recreated" if gone else "does not exist"
            plan.append(
                _Statement(
                    qualified,
                    _create_policy(policy, qualified, fn, tables),
                    f"policy {policy.name} on {table} {why}",
                )
            )

    # RLS on, and forced: the table owner is subject to the policies too
    for table in RLS_TABLES:
        qualified = tables[table]
        enabled, forced = conn.execute(
            "SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = to_regclass(%s)",
            (qualified,),
        ).fetchone() or (False, False)
        if not enabled:
            plan.append(
                _Statement(
                    qualified,
                    f"ALTER TABLE {qualified} ENABLE ROW LEVEL SECURITY",
                    f"row-level security is not enabled on {table}",
                )
            )
        if not forced:
            plan.append(
                _Statement(
                    qualified,
                    f"ALTER TABLE {qualified} FORCE ROW LEVEL SECURITY",
                    f"row-level security is not forced on {table} (its owner bypasses it)",
                )
            )

    plan += _grant_plan(conn, schema, tables, role_exists)
    return plan


_COMMANDS = {"r": "SELECT", "a": "INSERT", "w": "UPDATE", "d": "DELETE"}


def _create_policy(policy: _Policy, qualified: str, fn: str, tables: dict[str, str]) -> str:
    expression = policy.expression.format(fn=fn, conversations=tables["conversations"])
    return (
        f"CREATE POLICY {policy.name} ON {qualified} AS PERMISSIVE FOR ALL TO {RLS_ROLE} "
        f"USING ({expression}) WITH CHECK ({expression})"
    )


def _grant_plan(
    conn: Conn, schema: str, tables: dict[str, str], role_exists: bool
) -> list[_Statement]:
    """Privileges the role needs for the policies to matter: the schema, the tables (no
    TRUNCATE, which ignores row-level security) and their sequences."""

    def lacks(query: str, *params: Any) -> bool:
        return not role_exists or not _scalar(conn, query, (RLS_ROLE, *params))

    plan: list[_Statement] = []
    if lacks("SELECT has_schema_privilege(%s, %s::regnamespace::oid, 'USAGE')", schema):
        plan.append(
            _Statement(
                schema,
                f"GRANT USAGE ON SCHEMA {schema} TO {RLS_ROLE}",
                f"role {RLS_ROLE} lacks USAGE on schema {schema}",
            )
        )
    for table, qualified in tables.items():
        missing = [
            p
            for p in RLS_PRIVILEGES
            if lacks("SELECT has_table_privilege(%s, %s::regclass, %s)", qualified, p)
        ]
        if missing:
            plan.append(
                _Statement(
                    qualified,
                    f"GRANT {', '.join(missing)} ON {qualified} TO {RLS_ROLE}",
                    f"role {RLS_ROLE} lacks {', '.join(missing)} on {table}",
                )
            )
        if role_exists and _scalar(
            conn,
            "SELECT EXISTS (SELECT 1 FROM pg_class c, aclexplode(c.relacl) a "
            "WHERE c.oid = %s::regclass AND a.grantee = to_regrole(%s) "
            "AND a.privilege_type = 'TRUNCATE')",
            (qualified, RLS_ROLE),
        ):
            plan.append(
                _Statement(
                    qualified,
                    f"REVOKE TRUNCATE ON {qualified} FROM {RLS_ROLE}",
                    f"role {RLS_ROLE} may TRUNCATE {table}, which ignores row-level security",
                )
            )
        for (sequence,) in conn.execute(
            "SELECT format('%%I.%%I', n.nspname, s.relname) FROM pg_depend d "
            "JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
            "JOIN pg_namespace n ON n.oid = s.relnamespace "
            "WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass "
            "AND d.refobjid = %s::regclass AND d.deptype IN ('a', 'i') ORDER BY 1",
            (qualified,),
        ).fetchall():
            if lacks("SELECT has_sequence_privilege(%s, %s::regclass, 'USAGE')", sequence):
                plan.append(
                    _Statement(
                        sequence,
                        f"GRANT USAGE ON SEQUENCE {sequence} TO {RLS_ROLE}",
                        f"role {RLS_ROLE} lacks USAGE on sequence {sequence}",
                    )
                )
    return plan


def rls_drift(conn: Conn) -> list[str]:
    """How row-level security on conversations and messages differs from its declared state."""
    return [st.reason for st in _rls_plan(conn) if st.reason]


def converge_rls(conn: Conn, log: Log | None = None) -> ConvergeReport:
    """Bring row-level security to its declared state, in one transaction.

    - role ``authenticated_users``: NOLOGIN (the API's login role is made a member of it),
      not superuser, no BYPASSRLS;
    - ``current_user_id()``: reads ``app.current_user_id`` (which the API sets per request or
      transaction) and returns it as the type of ``users.id``; NULL when unset or empty, so an
      API session that forgot to set it sees no row. A value that is not an id raises an error
      instead of matching nothing silently. STABLE, ``CREATE OR REPLACE`` only when its
      definition differs (a different return type means DROP ... CASCADE, then the policies
      are recreated in the same transaction);
    - RLS enabled and forced on conversations and messages;
    - the spec's policies, each with a ``WITH CHECK`` equal to its ``USING``, so a user cannot
      write rows for someone else either. Policies not declared here are dropped: one extra
      permissive policy would open the tables. A policy that differs (command, kind, roles,
      expressions as printed by the server) is dropped and recreated;
    - SELECT, INSERT, UPDATE, DELETE on both tables and USAGE on their sequences, granted last.

    Superusers and roles with BYPASSRLS are never subject to row-level security. FORCE makes the
    tables' owner subject to it: with no policy for the owner, it sees no row, so migrations and
    ``pg_dump`` must run as a superuser or a BYPASSRLS role.
    """
    return _converge_plan(conn, _rls_plan, log)
