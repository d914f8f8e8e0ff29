"""The specification's indexes, drift: how an existing index differs from its declaration.

:func:`mismatch` says why an index with one of our names is not the declared one (table, access
method, key columns, operator class, storage parameters; an ivfflat index's ``lists`` only when
off by more than a factor of two). :func:`indexes_drift` changes nothing and reports, besides,
missing and INVALID indexes and the leftover of an interrupted rebuild.
No Dagster in this module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twinme_ops.database.postgres.indexes.declared import (
    REBUILD_SUFFIX,
    IndexSpec,
    desired_indexes,
    required_columns,
)
from twinme_ops.database.postgres.indexes.live import IndexState, index_state
from twinme_ops.database.postgres.objects import require_tables

if TYPE_CHECKING:
    import psycopg


def mismatch(spec: IndexSpec, state: IndexState) -> str | None:
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


def indexes_drift(conn: psycopg.Connection[Any], vector_index: str = "hnsw") -> list[str]:
    """How the spec's indexes differ from the database, one sentence each; empty when converged.

    Raises :class:`~twinme_ops.database.postgres.objects.MissingTablesError` when a table or
    column is missing.
    """
    schemas = require_tables(conn, required_columns())
    specs, _ = desired_indexes(conn, vector_index, schemas["document_chunks"])
    drift: list[str] = []
    for spec in specs:
        schema = schemas[spec.table]
        want = spec.statement(schema, concurrently=False).as_string(conn)
        if index_state(conn, spec.name + REBUILD_SUFFIX, schema) is not None:
            drift.append(f"{spec.name + REBUILD_SUFFIX} is left over from an interrupted rebuild")
        state = index_state(conn, spec.name, schema)
        if state is None:
            drift.append(f"{spec.name} is missing (want: {want})")
        elif not state.valid:
            drift.append(
                f"{spec.name} is INVALID (left by a failed CREATE INDEX CONCURRENTLY): "
                "PostgreSQL maintains it but never uses it; converge drops and rebuilds it"
            )
        else:
            why = mismatch(spec, state)
            if why:
                drift.append(
                    f"{spec.name} is not as declared, {why}: have {state.definition}; want {want}"
                )
    return drift


__all__ = ["indexes_drift", "mismatch"]
