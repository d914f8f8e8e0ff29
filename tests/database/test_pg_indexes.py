"""The spec's indexes: CREATE INDEX CONCURRENTLY, INVALID repair, HNSW/ivfflat, on PostgreSQL 18."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.support.list_log import ListLog
from twinme_ops.database.postgres.indexes.converge import IndexBuildError, converge_indexes
from twinme_ops.database.postgres.indexes.declared import (
    REBUILD_SUFFIX,
    SPEC_INDEXES,
    VECTOR_INDEX,
    ivfflat_lists,
)
from twinme_ops.database.postgres.indexes.drift import indexes_drift
from twinme_ops.database.postgres.objects import MissingTablesError
from twinme_ops.sandbox.seed import SeedCounts, SeedReport, default_anchor, seed_postgres
from twinme_ops.sandbox.servers import DATABASE, prepare_database, schema_sql
from twinme_ops.scratch.postgres import PostgresServer

SCALE = 0.02
NAMES = [s.name for s in SPEC_INDEXES]


@pytest.fixture(scope="module")
def twinme_pg(pg_server: PostgresServer) -> PostgresServer:
    """This module's server with the TwinMe schema and a small seed (160 embeddings)."""
    prepare_database(pg_server)
    seed_postgres(
        pg_server.url(DATABASE),
        SeedCounts.for_scale(SCALE),
        default_anchor(),
        SeedReport(scale=SCALE, anchor=""),
    )
    return pg_server


@pytest.fixture
def conn(twinme_pg: PostgresServer) -> Iterator[psycopg.Connection[Any]]:
    with twinme_pg.connect(DATABASE) as connection:
        yield connection


def _index(conn: psycopg.Connection[Any], name: str) -> tuple[str, bool, list[str]] | None:
    """(access method, valid, reloptions) of an index, or None."""
    row = conn.execute(
        "SELECT am.amname, i.indisvalid, coalesce(c.reloptions, '{}') FROM pg_class c "
        "JOIN pg_index i ON i.indexrelid = c.oid JOIN pg_am am ON am.oid = c.relam "
        "WHERE c.relname = %s",
        (name,),
    ).fetchone()
    return (str(row[0]), bool(row[1]), list(row[2])) if row else None


def _converged(conn: psycopg.Connection[Any], vector_index: str = "hnsw") -> None:
    converge_indexes(conn, vector_index=vector_index)
    assert indexes_drift(conn, vector_index) == []


def _embeddings(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM document_chunks WHERE embedding IS NOT NULL"
    ).fetchone()
    assert row is not None
    return int(row[0])


# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "lists"),
    [(0, 1), (1, 1), (999, 1), (2500, 2), (160_000, 160), (1_000_000, 1000), (4_000_000, 2000)],
)
def test_ivfflat_lists_follow_the_row_count(rows: int, lists: int) -> None:
    assert ivfflat_lists(rows) == lists


def test_converge_creates_the_spec_indexes_then_changes_nothing(
    conn: psycopg.Connection[Any],
) -> None:
    for name in NAMES:
        conn.execute(sql.SQL("DROP INDEX IF EXISTS {}").format(sql.Identifier(name)))
    drift = indexes_drift(conn)
    assert len(drift) == 4 and all("is missing" in d for d in drift)

    logged = ListLog()
    report = converge_indexes(conn, log=logged)
    assert report.statements() == [
        'CREATE INDEX CONCURRENTLY "idx_conversations_user_id_created" ON "public".'
        '"conversations" USING btree ("user_id", "created_at")',
        'CREATE INDEX CONCURRENTLY "idx_messages_conversation_id_timestamp" ON "public".'
        '"messages" USING btree ("conversation_id", "timestamp")',
        'CREATE INDEX CONCURRENTLY "idx_document_chunks_embedding" ON "public".'
        '"document_chunks" USING hnsw ("embedding" vector_cosine_ops)',
        'CREATE INDEX CONCURRENTLY "idx_sessions_user_id_start_time" ON "public".'
        '"sessions" USING btree ("user_id", "start_time")',
    ]
    assert [f"postgres_indexes: {s}" for s in report.statements()] == [
        line for line in logged if "CREATE INDEX" in line
    ]
    assert any("lock_timeout = '5s'" in line for line in logged)
    for name in NAMES:
        state = _index(conn, name)
        assert state is not None and state[1], name
    assert _index(conn, VECTOR_INDEX) == ("hnsw", True, [])

    again = converge_indexes(conn)
    assert again.changes == []
    assert indexes_drift(conn) == []
    # The session's own timeouts are back to what they were
    row = conn.execute("SELECT current_setting('statement_timeout')").fetchone()
    assert row is not None and row[0] == "0"


def test_dropped_index_is_drift_and_converge_recreates_it(conn: psycopg.Connection[Any]) -> None:
    _converged(conn)
    conn.execute("DROP INDEX idx_sessions_user_id_start_time")
    assert indexes_drift(conn) == [
        "idx_sessions_user_id_start_time is missing (want: CREATE INDEX "
        '"idx_sessions_user_id_start_time" ON "public"."sessions" USING btree '
        '("user_id", "start_time"))'
    ]
    report = converge_indexes(conn)
    assert report.statements() == [
        'CREATE INDEX CONCURRENTLY "idx_sessions_user_id_start_time" ON "public"."sessions" '
        'USING btree ("user_id", "start_time")'
    ]
    assert indexes_drift(conn) == []


def test_invalid_index_is_drift_and_converge_rebuilds_it(conn: psycopg.Connection[Any]) -> None:
    _converged(conn)
    conn.execute(
        "UPDATE pg_index SET indisvalid = false "
        "WHERE indexrelid = 'idx_messages_conversation_id_timestamp'::regclass"
    )
    drift = indexes_drift(conn)
    assert len(drift) == 1
    assert drift[0].startswith("idx_messages_conversation_id_timestamp is INVALID")
    report = converge_indexes(conn)
    assert report.statements() == [
        'DROP INDEX CONCURRENTLY IF EXISTS "public"."idx_messages_conversation_id_timestamp"',
        'CREATE INDEX CONCURRENTLY "idx_messages_conversation_id_timestamp" ON "public".'
        '"messages" USING btree ("conversation_id", "timestamp")',
    ]
    assert _index(conn, "idx_messages_conversation_id_timestamp") == ("btree", True, [])
    assert indexes_drift(conn) == []


def test_failed_concurrent_build_leaves_invalid_index_that_next_run_repairs(
    twinme_pg: PostgresServer, conn: psycopg.Connection[Any]
) -> None:
    _converged(conn)
    conn.execute("DROP INDEX idx_sessions_user_id_start_time")
    # A writer that stays in its transaction: CREATE INDEX CONCURRENTLY registers the index,
    # then waits for it and times out, which leaves the index INVALID.
    with twinme_pg.connect(DATABASE, autocommit=False) as writer:
        writer.execute(
            "INSERT INTO sessions (user_id, start_time) SELECT min(id), now() FROM users"
        )
        with pytest.raises(IndexBuildError) as caught:
            converge_indexes(conn, statement_timeout="1s")
        writer.rollback()
    message = str(caught.value)
    assert "idx_sessions_user_id_start_time: canceling statement due to statement timeout" in (
        message
    )
    assert "the next run drops and rebuilds it" in message
    assert caught.value.report.changes == []
    assert _index(conn, "idx_sessions_user_id_start_time") == ("btree", False, [])
    assert indexes_drift(conn) == [
        "idx_sessions_user_id_start_time is INVALID (left by a failed CREATE INDEX "
        "CONCURRENTLY): PostgreSQL maintains it but never uses it; converge drops and rebuilds it"
    ]

    report = converge_indexes(conn)
    assert [s.split(" ON ")[0] for s in report.statements()] == [
        'DROP INDEX CONCURRENTLY IF EXISTS "public"."idx_sessions_user_id_start_time"',
        'CREATE INDEX CONCURRENTLY "idx_sessions_user_id_start_time"',
    ]
    assert _index(conn, "idx_sessions_user_id_start_time") == ("btree", True, [])
    assert indexes_drift(conn) == []


def test_ivfflat_with_rows_gets_lists_from_the_row_count_and_back_to_hnsw(
    conn: psycopg.Connection[Any],
) -> None:
    _converged(conn)
    # Enough distinct embeddings for lists > 1
    conn.execute(
        "INSERT INTO document_chunks (user_id, document_name, chunk_index, content, embedding) "
        "SELECT (SELECT min(id) FROM users), 'extra', g, 'extra chunk', "
        "(SELECT array_agg(random())::vector(384) FROM generate_series(1, 384) WHERE g > 0) "
        "FROM generate_series(1, 2200) g"
    )
    rows = _embeddings(conn)
    lists = ivfflat_lists(rows)
    assert rows > 2000 and lists == rows // 1000

    drift = indexes_drift(conn, "ivfflat")
    assert len(drift) == 1 and "it uses hnsw, not ivfflat" in drift[0]
    report = converge_indexes(conn, vector_index="ivfflat")
    temp = VECTOR_INDEX + REBUILD_SUFFIX
    assert report.statements() == [
        f'CREATE INDEX CONCURRENTLY "{temp}" ON "public"."document_chunks" USING ivfflat '
        f'("embedding" vector_cosine_ops) WITH (lists = {lists})',
        f'DROP INDEX CONCURRENTLY IF EXISTS "public"."{VECTOR_INDEX}"',
        f'ALTER INDEX "public"."{temp}" RENAME TO "{VECTOR_INDEX}"',
    ]
    assert f"ivfflat with lists = {lists} for {rows} embeddings" in " ".join(report.notes)
    assert _index(conn, VECTOR_INDEX) == ("ivfflat", True, [f"lists={lists}"])
    assert converge_indexes(conn, vector_index="ivfflat").changes == []
    assert indexes_drift(conn, "ivfflat") == []

    # Back to the default: the replacement is built before the old index goes
    drift = indexes_drift(conn)
    assert len(drift) == 1 and "it uses ivfflat, not hnsw" in drift[0]
    report = converge_indexes(conn)
    assert len(report.changes) == 3
    assert _index(conn, VECTOR_INDEX) == ("hnsw", True, [])
    assert indexes_drift(conn) == []


def test_leftover_of_an_interrupted_rebuild_is_dropped(conn: psycopg.Connection[Any]) -> None:
    _converged(conn)
    temp = "idx_sessions_user_id_start_time" + REBUILD_SUFFIX
    conn.execute(f"CREATE INDEX {temp} ON sessions (user_id)")
    assert indexes_drift(conn) == [f"{temp} is left over from an interrupted rebuild"]
    report = converge_indexes(conn)
    assert report.statements() == [f'DROP INDEX CONCURRENTLY IF EXISTS "public"."{temp}"']
    assert _index(conn, temp) is None


def test_wrong_definition_with_the_right_name_is_replaced(conn: psycopg.Connection[Any]) -> None:
    _converged(conn)
    conn.execute("DROP INDEX idx_conversations_user_id_created")
    conn.execute("CREATE INDEX idx_conversations_user_id_created ON conversations (user_id)")
    drift = indexes_drift(conn)
    assert len(drift) == 1 and "its key columns differ" in drift[0]
    assert len(converge_indexes(conn).changes) == 3
    assert indexes_drift(conn) == []


@pytest.fixture
def other_db(twinme_pg: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    name = "idx_" + "".join(c for c in request.node.name if c.isalnum())[:40].lower()
    with twinme_pg.connect() as c:
        c.execute(f"DROP DATABASE IF EXISTS {name}")
        c.execute(f"CREATE DATABASE {name}")
    yield name
    with twinme_pg.connect() as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_ivfflat_on_an_empty_table_is_hnsw_until_rows_exist(
    twinme_pg: PostgresServer, other_db: str
) -> None:
    with twinme_pg.connect(other_db) as conn:
        conn.execute(schema_sql().encode())
        report = converge_indexes(conn, vector_index="ivfflat")
        assert len(report.changes) == 4
        assert any("ivfflat index trained on an empty table is useless" in n for n in report.notes)
        assert _index(conn, VECTOR_INDEX) == ("hnsw", True, [])
        assert indexes_drift(conn, "ivfflat") == []
        assert converge_indexes(conn, vector_index="ivfflat").changes == []

        conn.execute("INSERT INTO users (email, display_name) VALUES ('a@example.org', 'A')")
        conn.execute(
            "INSERT INTO document_chunks (user_id, document_name, chunk_index, content, "
            "embedding) SELECT (SELECT min(id) FROM users), 'doc', g, 'chunk', "
            "(SELECT array_agg(random())::vector(384) FROM generate_series(1, 384) WHERE g > 0) "
            "FROM generate_series(1, 50) g"
        )
        assert len(indexes_drift(conn, "ivfflat")) == 1
        converge_indexes(conn, vector_index="ivfflat")
        assert _index(conn, VECTOR_INDEX) == ("ivfflat", True, ["lists=1"])
        assert indexes_drift(conn, "ivfflat") == []


def test_missing_tables_are_a_clear_error(twinme_pg: PostgresServer, other_db: str) -> None:
    with twinme_pg.connect(other_db) as conn:
        with pytest.raises(MissingTablesError) as caught:
            converge_indexes(conn)
        message = str(caught.value)
        for table in ("conversations", "messages", "document_chunks", "sessions"):
            assert table in message
        assert f"database {other_db} lacks TwinMe tables" in message
        assert "apply the TwinMe schema, or point DATABASE_URL at the TwinMe database" in message
        assert caught.value.tables == ["conversations", "messages", "document_chunks", "sessions"]
        with pytest.raises(MissingTablesError):
            indexes_drift(conn)

        # A table without the indexed column is named too
        conn.execute("CREATE TABLE sessions (id bigint, user_id bigint)")
        with pytest.raises(MissingTablesError, match=r"sessions\.start_time"):
            converge_indexes(conn)


def test_requires_autocommit_and_a_known_vector_index(twinme_pg: PostgresServer) -> None:
    with (
        twinme_pg.connect(DATABASE, autocommit=False) as conn,
        pytest.raises(ValueError, match="autocommit"),
    ):
        converge_indexes(conn)
    with twinme_pg.connect(DATABASE) as conn:
        with pytest.raises(ValueError, match="vector_index must be one of hnsw, ivfflat"):
            converge_indexes(conn, vector_index="diskann")
        with pytest.raises(ValueError, match="invalid lock_timeout"):
            converge_indexes(conn, lock_timeout="soon")
