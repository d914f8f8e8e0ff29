"""PostgreSQL extensions: the install message, then ensure/drift on a real PostgreSQL 18."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.list_log import ListLog
from twinme_ops.database.postgres.extensions import (
    MissingExtensionError,
    ensure_extensions,
    extensions_drift,
    missing_extension_message,
)
from twinme_ops.sandbox.servers import DATABASE, prepare_database
from twinme_ops.scratch.postgres import PostgresServer


def test_missing_extension_message_says_how_to_install() -> None:
    message = missing_extension_message("vector", ["pg_trgm", "plpgsql", "vectorscale"], 18)
    assert "pg_available_extensions" in message
    assert "vectorscale" in message  # the similar names the server offers
    assert "postgresql-18-pgvector" in message
    assert "allow-list" in message
    assert "shared_preload_libraries" in message  # ... is not needed
    other = missing_extension_message("pg_trgm", ["plpgsql", "hstore"], 17)
    assert "hstore" in other and "plpgsql" in other  # nothing similar: a short list
    assert "contrib" in other


# ------------------------------------------------------------------------------------------
# against a real server


@pytest.fixture(scope="module")
def ext_pg(pg_server: PostgresServer) -> PostgresServer:
    """This module's server with the TwinMe database (schema and its extensions)."""
    prepare_database(pg_server)
    return pg_server


@pytest.fixture
def fresh_db(ext_pg: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty database (no extensions), dropped afterwards."""
    name = "ext_" + "".join(c for c in request.node.name if c.isalnum())[:40].lower()
    with ext_pg.connect() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    yield name
    with ext_pg.connect() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_extensions_converge_and_drift(ext_pg: PostgresServer, fresh_db: str) -> None:
    logged = ListLog()
    with ext_pg.connect(fresh_db) as conn:
        assert extensions_drift(conn) == [
            f"extension vector is not installed in database {fresh_db}",
            f"extension pg_trgm is not installed in database {fresh_db}",
        ]
        report = ensure_extensions(conn, ("vector", "pg_trgm"), logged)
        assert report.statements() == [
            'CREATE EXTENSION IF NOT EXISTS "vector"',
            'CREATE EXTENSION IF NOT EXISTS "pg_trgm"',
        ]
        assert logged == [f"postgres_extensions: {s}" for s in report.statements()]
        assert extensions_drift(conn) == []
        assert ensure_extensions(conn).changes == []

        conn.execute("DROP EXTENSION pg_trgm")
        assert extensions_drift(conn) == [
            f"extension pg_trgm is not installed in database {fresh_db}"
        ]
        assert ensure_extensions(conn).statements() == ['CREATE EXTENSION IF NOT EXISTS "pg_trgm"']
        assert extensions_drift(conn) == []


def test_the_twinme_database_already_has_its_extensions(ext_pg: PostgresServer) -> None:
    with ext_pg.connect(DATABASE) as conn:
        assert extensions_drift(conn) == []
        assert ensure_extensions(conn).changes == []


def test_missing_extension_lists_what_the_server_offers(
    ext_pg: PostgresServer, fresh_db: str
) -> None:
    with ext_pg.connect(fresh_db) as conn:
        with pytest.raises(MissingExtensionError) as caught:
            ensure_extensions(conn, ("vector", "vectorx"))
        message = str(caught.value)
        assert "'vectorx' is not available on this server" in message
        assert "similar names it offers: vector" in message
        assert "allow-list" in message
        # nothing created before the error
        row = conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'").fetchone()
        assert row is not None and row[0] == 0
        assert extensions_drift(conn, ("vectorx",)) == [
            f"extension vectorx is not installed in database {fresh_db}, and the server cannot "
            "provide it (not in pg_available_extensions)"
        ]
