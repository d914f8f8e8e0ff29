"""Publication ``twinme_pub`` converged on a real PostgreSQL 18.

Fixtures (``pg``, ``db``, ``conn``) and helpers are in ``tests/support/pg_fixtures.py``.
"""

from __future__ import annotations

from typing import Any

from tests.support.pg_fixtures import assert_converged, converge_all, scalar
from twinme_ops.database.postgres.publication import (
    PUBLICATION_TABLES,
    converge_publication,
    publication_drift,
)

# --------------------------------------------------------------------------------------------
# Publication


def _published(conn: Any) -> list[str]:
    rows = conn.execute(
        "SELECT tablename FROM pg_publication_tables WHERE pubname = 'twinme_pub' ORDER BY 1"
    ).fetchall()
    return [r[0] for r in rows]


def test_publication_drift_missing_extra_and_filtered(conn: Any) -> None:
    converge_all(conn)

    conn.execute("ALTER PUBLICATION twinme_pub DROP TABLE messages")
    assert publication_drift(conn) == ["twinme_pub does not publish public.messages"]
    assert converge_publication(conn).statements() == [
        "ALTER PUBLICATION twinme_pub ADD TABLE public.messages"
    ]
    assert_converged(conn)

    conn.execute("ALTER PUBLICATION twinme_pub ADD TABLE session_events")
    assert publication_drift(conn) == ["twinme_pub also publishes public.session_events"]
    assert converge_publication(conn).statements() == [
        "ALTER PUBLICATION twinme_pub DROP TABLE public.session_events"
    ]
    assert_converged(conn)

    conn.execute("ALTER PUBLICATION twinme_pub SET TABLE users WHERE (id > 1), conversations")
    conn.execute("ALTER PUBLICATION twinme_pub SET (publish = 'insert')")
    drift = publication_drift(conn)
    assert "twinme_pub publishes public.users with a row filter or column list" in drift[0]
    assert "twinme_pub does not publish public.messages" in drift[0]
    assert converge_publication(conn).statements() == [
        "ALTER PUBLICATION twinme_pub SET TABLE public.users, public.conversations, "
        "public.messages, public.document_chunks, public.sessions",
        "ALTER PUBLICATION twinme_pub SET (publish = 'insert, update, delete, truncate')",
    ]
    assert _published(conn) == sorted(PUBLICATION_TABLES)
    assert (
        scalar(conn, "SELECT prqual FROM pg_publication_rel WHERE prrelid = 'users'::regclass")
        is None
    )
    assert_converged(conn)
