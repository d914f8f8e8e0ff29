"""The specification's indexes, declared: what each index is, and the vector index's choice.

:data:`SPEC_INDEXES` lists the indexes we own (:class:`IndexSpec`: name, table, key columns,
access method, operator class, storage parameters) and :meth:`IndexSpec.statement` writes the
``CREATE INDEX`` of each. :func:`desired_indexes` resolves the vector index for the table's
contents: ``hnsw`` by default; ``ivfflat`` gets ``lists`` from the number of embeddings
(:func:`ivfflat_lists`), and falls back to ``hnsw`` on a table without embeddings.

No Dagster in this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, LiteralString

from twinme_ops.database.postgres.indexes.live import embedding_rows

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

VECTOR_INDEX_METHODS = ("hnsw", "ivfflat")
VECTOR_INDEX = "idx_document_chunks_embedding"
# Suffix of the index a rebuild builds next to the one it replaces (PostgreSQL's own REINDEX
# CONCURRENTLY uses _ccnew; ours must not collide with it).
REBUILD_SUFFIX = "_twinme_new"


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
        from psycopg import sql

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


def check_vector_index(vector_index: str) -> None:
    """Raise ValueError unless ``vector_index`` is an access method we build (hnsw, ivfflat)."""
    if vector_index not in VECTOR_INDEX_METHODS:
        raise ValueError(
            f"vector_index must be one of {', '.join(VECTOR_INDEX_METHODS)}, got {vector_index!r}"
        )


def desired_indexes(
    conn: psycopg.Connection[Any], vector_index: str = "hnsw", schema: str = "public"
) -> tuple[list[IndexSpec], list[str]]:
    """The indexes to have, with the vector index resolved for the table's contents, and notes.

    ``ivfflat`` gets ``lists`` from the number of embeddings (:func:`ivfflat_lists`); on a
    table without embeddings it falls back to ``hnsw`` (an ivfflat index trained on an empty
    table is useless; see :mod:`twinme_ops.database.postgres.indexes`).
    """
    check_vector_index(vector_index)
    specs = list(SPEC_INDEXES)
    notes: list[str] = []
    if vector_index == "ivfflat":
        rows = embedding_rows(conn, schema)
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


__all__ = [
    "REBUILD_SUFFIX",
    "SPEC_INDEXES",
    "VECTOR_INDEX",
    "VECTOR_INDEX_METHODS",
    "IndexSpec",
    "check_vector_index",
    "desired_indexes",
    "ivfflat_lists",
    "required_columns",
]
