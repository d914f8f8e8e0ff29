"""The specification's indexes, converged: built without blocking the API.

``CREATE INDEX CONCURRENTLY`` does not block writes, but it cannot run inside a transaction
block and, when it fails (timeout, lock timeout, cancel, duplicate), it leaves an INVALID index
behind that PostgreSQL keeps maintaining and never uses. So :func:`converge_indexes` requires an
autocommit connection, runs each build under ``lock_timeout`` and ``statement_timeout``, repairs
INVALID indexes left by an earlier failure (``DROP INDEX CONCURRENTLY`` + build), and replaces
a wrong index by building the right one beside it first. No Dagster in this module.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from twinme_ops.common.log import Log
from twinme_ops.database.convergence import ConvergeReport
from twinme_ops.database.postgres.indexes.declared import (
    REBUILD_SUFFIX,
    IndexSpec,
    check_vector_index,
    desired_indexes,
    required_columns,
)
from twinme_ops.database.postgres.indexes.drift import mismatch
from twinme_ops.database.postgres.indexes.live import index_state
from twinme_ops.database.postgres.objects import first_line, require_tables

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

TARGET = "postgres_indexes"


class IndexBuildError(RuntimeError):
    """One or more index builds failed; ``report`` holds what was done before and after.

    A failed ``CREATE INDEX CONCURRENTLY`` leaves an INVALID index: the next converge drops and
    rebuilds it.
    """

    def __init__(self, message: str, report: ConvergeReport) -> None:
        super().__init__(message)
        self.report = report


def _require_autocommit(conn: psycopg.Connection[Any]) -> None:
    import psycopg

    if not conn.autocommit or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise ValueError(
            "converge_indexes needs an idle connection in autocommit mode: CREATE INDEX "
            "CONCURRENTLY cannot run inside a transaction block (connect with autocommit=True)"
        )


@contextmanager
def _timeouts(
    conn: psycopg.Connection[Any], lock_timeout: str, statement_timeout: str
) -> Iterator[None]:
    """Session timeouts for one DDL statement, then the previous values back."""
    row = conn.execute(
        "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')"
    ).fetchone()
    assert row is not None
    conn.execute(
        "SELECT set_config('lock_timeout', %s, false), set_config('statement_timeout', %s, false)",
        (lock_timeout, statement_timeout),
    )
    try:
        yield
    finally:
        if not conn.closed:
            conn.execute(
                "SELECT set_config('lock_timeout', %s, false), "
                "set_config('statement_timeout', %s, false)",
                (row[0], row[1]),
            )


class _Runner:
    """Runs DDL under the timeouts and records each statement in the report."""

    def __init__(
        self,
        conn: psycopg.Connection[Any],
        report: ConvergeReport,
        log: Log | None,
        lock_timeout: str,
        statement_timeout: str,
    ) -> None:
        self.conn, self.report, self.log = conn, report, log
        self.lock_timeout, self.statement_timeout = lock_timeout, statement_timeout

    def run(self, stmt: sql.Composed, detail: str = "") -> None:
        text = stmt.as_string(self.conn)
        with _timeouts(self.conn, self.lock_timeout, self.statement_timeout):
            self.conn.execute(stmt)
        self.report.add(TARGET, text, self.log, detail=detail)


def _drop(schema: str, name: str) -> sql.Composed:
    from psycopg import sql

    return sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
        sql.Identifier(schema), sql.Identifier(name)
    )


def _converge_one(run: _Runner, spec: IndexSpec, schema: str) -> None:
    from psycopg import sql

    conn = run.conn
    temp = spec.name + REBUILD_SUFFIX
    if index_state(conn, temp, schema) is not None:
        run.run(_drop(schema, temp), "leftover of an interrupted rebuild")
    state = index_state(conn, spec.name, schema)
    if state is None:
        run.run(spec.statement(schema), "missing")
        return
    if not state.valid:
        # Unusable and still maintained on every write: drop it, then build it again
        run.run(_drop(schema, spec.name), "INVALID (a failed concurrent build)")
        run.run(spec.statement(schema), "rebuild of an INVALID index")
        return
    why = mismatch(spec, state)
    if why is None:
        return
    # Build the replacement first, so the table is never without the index
    run.run(spec.statement(schema, name=temp), f"replacement: {why}")
    run.run(_drop(schema, spec.name), f"replaced: {why}")
    run.run(
        sql.SQL("ALTER INDEX {}.{} RENAME TO {}").format(
            sql.Identifier(schema), sql.Identifier(temp), sql.Identifier(spec.name)
        ),
        "replacement takes the name",
    )


def converge_indexes(
    conn: psycopg.Connection[Any],
    *,
    vector_index: str = "hnsw",
    lock_timeout: str = "5s",
    statement_timeout: str = "30min",
    log: Log | None = None,
) -> ConvergeReport:
    """Create the spec's indexes that are missing, repair INVALID ones, replace wrong ones.

    ``conn`` must be in autocommit mode and idle (checked): every build is a
    ``CREATE INDEX CONCURRENTLY`` outside any transaction, run with ``lock_timeout`` and
    ``statement_timeout`` set for that statement only. An index with the right name but an
    INVALID state is dropped (``DROP INDEX CONCURRENTLY``) and built again; one with a wrong
    definition (e.g. ivfflat where hnsw is wanted) is replaced by building the new one under a
    temporary name, dropping the old one and renaming, so queries always have an index. A
    valid, correct index is left alone.

    Raises :class:`~twinme_ops.database.postgres.objects.MissingTablesError` (nothing changed)
    when a table or column is missing, and :class:`IndexBuildError` after trying every index
    when some builds failed; a failed build leaves an INVALID index that the next run repairs.
    """
    import psycopg

    _require_autocommit(conn)
    check_vector_index(vector_index)
    schemas = require_tables(conn, required_columns())
    report = ConvergeReport()
    specs, notes = desired_indexes(conn, vector_index, schemas["document_chunks"])
    report.notes += notes
    if log is not None:
        log.info(
            f"{TARGET}: index DDL runs with lock_timeout = {lock_timeout!r}, "
            f"statement_timeout = {statement_timeout!r}"
        )
    try:
        # Validate the values before any DDL; SET LOCAL ends with this small transaction
        with conn.transaction():
            conn.execute(
                "SELECT set_config('lock_timeout', %s, true), "
                "set_config('statement_timeout', %s, true)",
                (lock_timeout, statement_timeout),
            )
    except psycopg.Error as exc:
        raise ValueError(
            f"invalid lock_timeout {lock_timeout!r} or statement_timeout {statement_timeout!r}: "
            f"{first_line(exc)}"
        ) from None
    run = _Runner(conn, report, log, lock_timeout, statement_timeout)
    failures: list[str] = []
    for spec in specs:
        try:
            _converge_one(run, spec, schemas[spec.table])
        except psycopg.Error as exc:
            first = first_line(exc)
            failures.append(f"{spec.name}: {first}")
            if log is not None:
                log.info(f"{TARGET}: {spec.name} failed: {first}")
    if failures:
        raise IndexBuildError(
            "index builds failed: "
            + "; ".join(failures)
            + ". A failed CREATE INDEX CONCURRENTLY leaves an INVALID index; the next run drops "
            "and rebuilds it. On a timeout, retry when the table is less busy or raise "
            "statement_timeout / lock_timeout.",
            report,
        )
    return report


__all__ = ["TARGET", "IndexBuildError", "converge_indexes"]
