"""The specification's indexes, live: what the catalog says about an index with one of our names.

:func:`index_state` reads an index's table, access method, validity (a failed
``CREATE INDEX CONCURRENTLY`` leaves it INVALID), key columns, operator classes, storage
parameters and definition; :func:`embedding_rows` counts the rows an ivfflat index would be
trained on. This module changes nothing. No Dagster in this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg


@dataclass(frozen=True)
class IndexState:
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


def index_state(conn: psycopg.Connection[Any], name: str, schema: str) -> IndexState | None:
    """The catalog's view of the index ``schema.name``, or None when there is none."""
    row = conn.execute(_INDEX_QUERY, (name, schema)).fetchone()
    if row is None:
        return None
    options = dict(str(o).split("=", 1) for o in row[8])
    return IndexState(
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


def embedding_rows(conn: psycopg.Connection[Any], schema: str) -> int:
    """How many rows of ``schema.document_chunks`` have an embedding (ivfflat trains on them)."""
    from psycopg import sql

    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {}.{} WHERE embedding IS NOT NULL").format(
            sql.Identifier(schema), sql.Identifier("document_chunks")
        )
    ).fetchone()
    return int(row[0]) if row else 0


__all__ = ["IndexState", "embedding_rows", "index_state"]
