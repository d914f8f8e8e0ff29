"""The specification's indexes as declared state, built without blocking the API.

``CREATE INDEX CONCURRENTLY`` does not block writes, but it cannot run inside a transaction
block and, when it fails (timeout, lock timeout, cancel, duplicate), it leaves an INVALID index
behind that PostgreSQL keeps maintaining and never uses. So :func:`converge_indexes` requires an
autocommit connection, runs each build under ``lock_timeout`` and ``statement_timeout``, and
repairs INVALID indexes left by an earlier failure (``DROP INDEX CONCURRENTLY`` + build).

The vector index is HNSW by default. ivfflat is built only on a table with embeddings: its
``lists`` are k-means centroids trained on the rows present at build time, so an ivfflat index
built on an empty table is useless. Asked for ivfflat on an empty table, we build HNSW instead
(it needs no training and stays good as rows arrive) and say so in the report's notes; once the
table has rows, the next run replaces it with ivfflat.

No Dagster in this module.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg
from psycopg import sql

from twinme_ops.database.convergence import ConvergeReport, Log
from twinme_ops.database.postgres.objects import MissingTablesError, first_line, require_tables

TARGET = "postgres_indexes"
VECTOR_INDEX_METHODS = ("hnsw", "ivfflat")
VECTOR_INDEX = "idx_document_chunks_embedding"
# Suffix of the index a rebuild builds next to the one it replaces (PostgreSQL's own REINDEX
# CONCURRENTLY uses _ccnew; ours must not collide with it).
REBUILD_SUFFIX = "_twinme_new"


class IndexBuildError(RuntimeError):
    """One or more index builds failed; ``report`` holds what was done before and after.

    A failed ``CREATE INDEX CONCURRENTLY`` leaves an INVALID index: the next converge drops and
    rebuilds it.
    """

    def __init__(self, message: str, report: ConvergeReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class IndexSpec:
    """One index we own: name, table, key columns, access method, operator class, options."""

    name: str
    table: str
    columns: tuple[str, ...]
    method: str = "btree"
    opclass: str | None = None  # None: the column type's default operator class
    options: tuple[tuple[str, str], ...] = ()  # WITH (...) storage parameters

    def __post_init__(self) -> None:
        unknown = [self.method] if self.method not in _KEYWORDS else []
        unknown += [self.opclass] if self.opclass and self.opclass not in _KEYWORDS else []
        unknown += [k for k, _ in self.options if k not in _KEYWORDS]
        if unknown:
            raise ValueError(f"index {self.name}: unsupported {', '.join(unknown)}")

    def statement(
        self, schema: str, *, concurrently: bool = True, name: str | None = None
    ) -> sql.Composed:
        """``CREATE INDEX [CONCURRENTLY] name ON schema.table USING method (cols) [WITH (...)]``."""
        columns = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(_KEYWORDS[self.opclass]))
            if self.opclass
            else sql.Identifier(c)
            for c in self.columns
        )
        stmt = sql.SQL("CREATE INDEX {}{} ON {}.{} USING {} ({})").format(
            sql.SQL("CONCURRENTLY ") if concurrently else sql.SQL(""),
            sql.Identifier(name or self.name),
            sql.Identifier(schema),
            sql.Identifier(self.table),
            sql.SQL(_KEYWORDS[self.method]),
            columns,
        )
        if self.options:
            stmt += sql.SQL(" WITH ({})").format(
                sql.SQL(", ").join(
                    sql.SQL("{} = {}").format(sql.SQL(_KEYWORDS[k]), sql.Literal(int(v)))
                    for k, v in self.options
                )
            )
        return stmt


# Access methods, operator classes and storage parameters we write into DDL without quoting
# (readable statements in logs): only these known words, never a value from outside.
_KEYWORDS: dict[str, LiteralString] = {
    "btree": "btree",
    "hnsw": "hnsw",
    "ivfflat": "ivfflat",
    "vector_cosine_ops": "vector_cosine_ops",
    "vector_l2_ops": "vector_l2_ops",
    "vector_ip_ops": "vector_ip_ops",
    "lists": "lists",
    "m": "m",
    "ef_construction": "ef_construction",
}


SPEC_INDEXES: tuple[IndexSpec, ...] = (
    IndexSpec("idx_conversations_user_id_created", "conversations", ("user_id", "created_at")),
    IndexSpec(
        "idx_messages_conversation_id_timestamp", "messages", ("conversation_id", "timestamp")
    ),
    IndexSpec(VECTOR_INDEX, "document_chunks", ("embedding",), "hnsw", "vector_cosine_ops"),
    IndexSpec("idx_sessions_user_id_start_time", "sessions", ("user_id", "start_time")),
)


def required_columns() -> dict[str, tuple[str, ...]]:
    """Table -> columns the spec's indexes need."""
    needed: dict[str, tuple[str, ...]] = {}
    for spec in SPEC_INDEXES:
        needed[spec.table] = tuple(dict.fromkeys(needed.get(spec.table, ()) + spec.columns))
    return needed


def ivfflat_lists(rows: int) -> int:
    """pgvector's guidance for ivfflat ``lists``: rows/1000 up to 1M rows, sqrt(rows) above."""
    if rows <= 1_000_000:
        return max(1, rows // 1000)
    return max(1, int(math.isqrt(rows)))


# ------------------------------------------------------------------------------------------
# reading the database


@dataclass(frozen=True)
class _IndexState:
    """What the catalog says about an index with one of our names."""

    table: str
    schema: str
    method: str
    valid: bool
    columns: tuple[str, ...]
    opclasses: tuple[str, ...]
    opclass_defaults: tuple[bool, ...]
    plain: bool  # not unique, no predicate, no expression, no INCLUDE, ascending keys
    options: dict[str, str]
    definition: str


_INDEX_QUERY = """
SELECT t.relname, n.nspname, am.amname,
       i.indisvalid AND i.indisready AND i.indislive,
       array(SELECT a.attname::text
             FROM unnest(i.indkey::int2[]) WITH ORDINALITY k(attnum, ord)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             ORDER BY k.ord),
       array(SELECT o.opcname::text FROM unnest(i.indclass::oid[]) WITH ORDINALITY k(oid, ord)
             JOIN pg_opclass o ON o.oid = k.oid ORDER BY k.ord),
       array(SELECT o.opcdefault FROM unnest(i.indclass::oid[]) WITH ORDINALITY k(oid, ord)
             JOIN pg_opclass o ON o.oid = k.oid ORDER BY k.ord),
       NOT i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
         AND i.indnatts = i.indnkeyatts AND 0 = ALL (i.indoption::int2[]),
       coalesce(c.reloptions, '{}'),
       pg_get_indexdef(c.oid)
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_index i ON i.indexrelid = c.oid
JOIN pg_class t ON t.oid = i.indrelid
JOIN pg_am am ON am.oid = c.relam
WHERE c.relname = %s AND n.nspname = %s
"""


def _index_state(conn: psycopg.Connection[Any], name: str, schema: str) -> _IndexState | None:
    row = conn.execute(_INDEX_QUERY, (name, schema)).fetchone()
    if row is None:
        return None
    options = dict(str(o).split("=", 1) for o in row[8])
    return _IndexState(
        table=str(row[0]),
        schema=str(row[1]),
        method=str(row[2]),
        valid=bool(row[3]),
        columns=tuple(row[4]),
        opclasses=tuple(row[5]),
        opclass_defaults=tuple(bool(x) for x in row[6]),
        plain=bool(row[7]),
        options=options,
        definition=str(row[9]),
    )


def _embedding_rows(conn: psycopg.Connection[Any], schema: str) -> int:
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {}.{} WHERE embedding IS NOT NULL").format(
            sql.Identifier(schema), sql.Identifier("document_chunks")
        )
    ).fetchone()
    return int(row[0]) if row else 0


def desired_indexes(
    conn: psycopg.Connection[Any], vector_index: str = "hnsw", schema: str = "public"
) -> tuple[list[IndexSpec], list[str]]:
    """The indexes to have, with the vector index resolved for the table's contents, and notes.

    ``ivfflat`` gets ``lists`` from the number of embeddings (:func:`ivfflat_lists`); on a
    table without embeddings it falls back to ``hnsw`` (see the module docstring).
    """
    if vector_index not in VECTOR_INDEX_METHODS:
        raise ValueError(
            f"vector_index must be one of {', '.join(VECTOR_INDEX_METHODS)}, got {vector_index!r}"
        )
    specs = list(SPEC_INDEXES)
    notes: list[str] = []
    if vector_index == "ivfflat":
        rows = _embedding_rows(conn, schema)
        index = next(i for i, s in enumerate(specs) if s.name == VECTOR_INDEX)
        if rows == 0:
            notes.append(
                f"document_chunks has no embeddings: an ivfflat index trained on an empty table "
                f"is useless, so {VECTOR_INDEX} is HNSW; the first run after rows exist "
                "rebuilds it as ivfflat"
            )
        else:
            lists = ivfflat_lists(rows)
            specs[index] = IndexSpec(
                VECTOR_INDEX,
                "document_chunks",
                ("embedding",),
                "ivfflat",
                "vector_cosine_ops",
                (("lists", str(lists)),),
            )
            notes.append(f"{VECTOR_INDEX}: ivfflat with lists = {lists} for {rows} embeddings")
    return specs, notes


def _mismatch(spec: IndexSpec, state: _IndexState) -> str | None:
    """Why an existing index is not ``spec`` (None when it is)."""
    if state.table != spec.table:
        return f"it is on table {state.table}, not {spec.table}"
    if state.method != spec.method:
        return f"it uses {state.method}, not {spec.method}"
    if state.columns != spec.columns or not state.plain:
        return "its key columns differ"
    if spec.opclass:
        if any(o != spec.opclass for o in state.opclasses):
            return f"its operator class is {', '.join(state.opclasses)}, not {spec.opclass}"
    elif not all(state.opclass_defaults):
        return f"it uses non-default operator classes ({', '.join(state.opclasses)})"
    wanted = dict(spec.options)
    if spec.method == "ivfflat" and "lists" in wanted:
        # lists follows the row count, which changes every day: rebuild only when the built
        # value is off by more than a factor of two, not on every new row.
        want_lists = int(wanted.pop("lists"))
        have = dict(state.options)
        have_lists = int(have.pop("lists", "100"))  # pgvector's default
        if not want_lists / 2 <= have_lists <= want_lists * 2:
            return f"it has lists = {have_lists}, want about {want_lists}"
        return None if have == wanted else f"its options are {state.options}, want {wanted}"
    if state.options != wanted:
        return f"its options are {state.options or 'the defaults'}, want {wanted or 'the defaults'}"
    return None


# ------------------------------------------------------------------------------------------
# converge and drift


def _require_autocommit(conn: psycopg.Connection[Any]) -> None:
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
    return sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
        sql.Identifier(schema), sql.Identifier(name)
    )


def _converge_one(run: _Runner, spec: IndexSpec, schema: str) -> None:
    conn = run.conn
    temp = spec.name + REBUILD_SUFFIX
    if _index_state(conn, temp, schema) is not None:
        run.run(_drop(schema, temp), "leftover of an interrupted rebuild")
    state = _index_state(conn, spec.name, schema)
    if state is None:
        run.run(spec.statement(schema), "missing")
        return
    if not state.valid:
        # Unusable and still maintained on every write: drop it, then build it again
        run.run(_drop(schema, spec.name), "INVALID (a failed concurrent build)")
        run.run(spec.statement(schema), "rebuild of an INVALID index")
        return
    why = _mismatch(spec, state)
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

    Raises :class:`MissingTablesError` (nothing changed) when a table or column is missing, and
    :class:`IndexBuildError` after trying every index when some builds failed; a failed build
    leaves an INVALID index that the next run repairs.
    """
    _require_autocommit(conn)
    if vector_index not in VECTOR_INDEX_METHODS:
        raise ValueError(
            f"vector_index must be one of {', '.join(VECTOR_INDEX_METHODS)}, got {vector_index!r}"
        )
    schemas = require_tables(conn, required_columns())
    report = ConvergeReport()
    specs, notes = desired_indexes(conn, vector_index, schemas["document_chunks"])
    report.notes += notes
    if log:
        log(
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
            if log:
                log(f"{TARGET}: {spec.name} failed: {first}")
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


def indexes_drift(conn: psycopg.Connection[Any], vector_index: str = "hnsw") -> list[str]:
    """How the spec's indexes differ from the database, one sentence each; empty when converged.

    Raises :class:`MissingTablesError` when a table or column is missing.
    """
    schemas = require_tables(conn, required_columns())
    specs, _ = desired_indexes(conn, vector_index, schemas["document_chunks"])
    drift: list[str] = []
    for spec in specs:
        schema = schemas[spec.table]
        want = spec.statement(schema, concurrently=False).as_string(conn)
        if _index_state(conn, spec.name + REBUILD_SUFFIX, schema) is not None:
            drift.append(f"{spec.name + REBUILD_SUFFIX} is left over from an interrupted rebuild")
        state = _index_state(conn, spec.name, schema)
        if state is None:
            drift.append(f"{spec.name} is missing (want: {want})")
        elif not state.valid:
            drift.append(
                f"{spec.name} is INVALID (left by a failed CREATE INDEX CONCURRENTLY): "
                "PostgreSQL maintains it but never uses it; converge drops and rebuilds it"
            )
        else:
            why = _mismatch(spec, state)
            if why:
                drift.append(
                    f"{spec.name} is not as declared, {why}: have {state.definition}; want {want}"
                )
    return drift


__all__ = [
    "SPEC_INDEXES",
    "IndexBuildError",
    "IndexSpec",
    "MissingTablesError",
    "converge_indexes",
    "desired_indexes",
    "indexes_drift",
    "ivfflat_lists",
    "require_tables",
]
