"""Database objects the spec's ``production-setup.sql`` created once, as converged state: what
the three aspects share.

Each aspect has its module, with a converge function (changes only what differs, returns a
:class:`~twinme_ops.database.convergence.ConvergeReport`) and a drift function (changes nothing):

- :mod:`twinme_ops.database.postgres.partitions`: ``session_events`` monthly range partitions from
the
  current month to N months ahead (the spec hard-coded 2024);
- :mod:`twinme_ops.database.postgres.publication`: publication ``twinme_pub``, exactly the spec's
five
  tables;
- :mod:`twinme_ops.database.postgres.rls`: row-level security on ``conversations`` and
``messages``: the
  role ``authenticated_users`` and the function ``current_user_id()`` (both used by the spec,
  never defined), RLS enabled and forced, the spec's policies (with ``WITH CHECK``), and the
  grants that make them usable.

This module holds their common base, and what every PostgreSQL tuning step shares: the errors
(:class:`PgObjectsError`, :class:`MissingTablesError`), the table (and column) check
:func:`require_tables`, the first line of a server error (:func:`first_line`), and the
plan-then-apply transaction.

Connections are passed in and must be in autocommit mode: each converge step runs in a
transaction of its own, so a failure leaves the previous state, never half of a change.
Statements run with a ``lock_timeout``, so a busy table makes the step fail instead of queueing
every API query behind an ACCESS EXCLUSIVE lock request.

No Dagster in this module: it is plain library code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

from twinme_ops.common.log import Log
from twinme_ops.database.convergence import ConvergeReport

if TYPE_CHECKING:
    import psycopg

LOCK_TIMEOUT = "5s"
TWINME_SCHEMA_FIX = "apply the TwinMe schema, or point DATABASE_URL at the TwinMe database"

# a string: psycopg is imported where a connection is made, not with the code location
Conn: TypeAlias = "psycopg.Connection[Any]"


class PgObjectsError(RuntimeError):
    """A database object cannot be converged; the message names the problem and the fix."""


class MissingTablesError(PgObjectsError):
    """The database lacks TwinMe tables (or columns): not the TwinMe database, or not migrated.

    Shared by every database tuning step (pg_partitions, pg_publication, pg_rls and pg_indexes
    raise it).
    """

    def __init__(self, database: str, tables: Sequence[str]) -> None:
        self.database = database
        self.tables = list(tables)
        super().__init__(
            f"database {database} lacks TwinMe tables/columns: {', '.join(self.tables)}. "
            f"Fix: {TWINME_SCHEMA_FIX}."
        )


# --------------------------------------------------------------------------------------------
# Shared helpers


def require_tables(
    conn: Conn, tables: Iterable[str] | Mapping[str, Iterable[str]]
) -> dict[str, str]:
    """The schema of each table of ``tables`` (found through ``search_path``), checked to exist.

    ``tables`` is a list of names, or a mapping from each name to the columns it must have.
    Raises :class:`MissingTablesError` naming every missing table and every missing column
    (``table.column``), in the order given, and the fix.
    """
    required = (
        {table: list(columns) for table, columns in tables.items()}
        if isinstance(tables, Mapping)
        else {table: [] for table in tables}
    )
    rows = conn.execute(
        "SELECT u.t, n.nspname, array(SELECT a.attname::text FROM pg_attribute a "
        "  WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped) "
        "FROM unnest(%s::text[]) WITH ORDINALITY AS u(t, i) "
        "LEFT JOIN pg_class c ON c.oid = to_regclass(u.t) AND c.relkind IN ('r', 'p') "
        "LEFT JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY u.i",
        (list(required),),
    ).fetchall()
    schemas: dict[str, str] = {}
    missing: list[str] = []
    for table, schema, present in rows:
        if schema is None:
            missing.append(table)
            continue
        schemas[table] = str(schema)
        missing += [f"{table}.{c}" for c in required[table] if c not in present]
    if missing:
        row = conn.execute("SELECT current_database()").fetchone()
        raise MissingTablesError(str(row[0]) if row else "?", missing)
    return schemas


def require_autocommit(conn: Conn) -> None:
    if not conn.autocommit:
        raise ValueError(
            "pg_objects needs an autocommit connection (each step manages its own transaction)"
        )


def qualified_table(conn: Conn, table: str) -> tuple[str, str]:
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


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (a server error's detail lines dropped)."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@dataclass(frozen=True)
class Statement:
    """A planned change: the drift it repairs (``reason``) and the statement that repairs it."""

    target: str
    sql: str
    reason: str  # empty: not drift on its own (a grant that goes with a new object)
    detail: str = ""


def converge_plan(
    conn: Conn, planner: Callable[[Conn], list[Statement]], log: Log | None
) -> ConvergeReport:
    """Plan and apply in one transaction, so the plan is made from the state it changes."""
    require_autocommit(conn)
    report = ConvergeReport()
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'".encode())
        plan = planner(conn)
        for st in plan:
            conn.execute(st.sql.encode())
    for st in plan:
        report.add(st.target, st.sql, log, st.detail)
    return report
