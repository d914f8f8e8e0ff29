"""Row-level security on conversations and messages converged on a real PostgreSQL 18.

Fixtures (``pg``, ``db``, ``conn``) and helpers are in ``tests/support/pg_fixtures.py``.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.support.pg_fixtures import assert_converged, converge_all, scalar
from twinme_ops.database.postgres.rls import converge_rls, rls_drift
from twinme_ops.scratch.postgres import PostgresServer

API_USER = "api_user"
API_PASSWORD = "api-user-Passw0rd"


# --------------------------------------------------------------------------------------------
# Row-level security


def test_rls_drift_scenarios_converge_back(conn: Any) -> None:
    converge_all(conn)
    conversations = (
        "CREATE POLICY user_conversations ON public.conversations AS PERMISSIVE FOR ALL "
        "TO authenticated_users USING (user_id = public.current_user_id()) "
        "WITH CHECK (user_id = public.current_user_id())"
    )
    # (drift introduced, first drift sentence, statements that repair it or how many)
    scenarios: list[tuple[str, str, list[str] | int]] = [
        (
            "ALTER TABLE messages NO FORCE ROW LEVEL SECURITY",
            "row-level security is not forced on messages (its owner bypasses it)",
            ["ALTER TABLE public.messages FORCE ROW LEVEL SECURITY"],
        ),
        (
            "ALTER TABLE messages DISABLE ROW LEVEL SECURITY",
            "row-level security is not enabled on messages",
            ["ALTER TABLE public.messages ENABLE ROW LEVEL SECURITY"],
        ),
        (
            "ALTER POLICY user_conversations ON conversations USING (true)",
            "policy user_conversations on conversations differs: USING true",
            ["DROP POLICY user_conversations ON public.conversations", conversations],
        ),
        (
            "ALTER POLICY user_messages ON messages TO public",
            "policy user_messages on messages differs: is for public, not authenticated_users",
            2,
        ),
        (
            "DROP POLICY user_messages ON messages",
            "policy user_messages on messages does not exist",
            1,
        ),
        (
            "CREATE POLICY everyone ON messages USING (true)",
            "policy everyone on messages is not declared",
            ["DROP POLICY everyone ON public.messages"],
        ),
        (
            "CREATE OR REPLACE FUNCTION current_user_id() RETURNS bigint LANGUAGE sql STABLE "
            "AS $$SELECT 1::bigint$$",
            "function public.current_user_id() differs from its declared definition",
            1,
        ),
        (
            # another return type: DROP ... CASCADE takes the policy that uses it, then every
            # policy is created again (a DROP POLICY after the cascade would fail)
            "DROP FUNCTION current_user_id() CASCADE; CREATE FUNCTION current_user_id() "
            "RETURNS text LANGUAGE sql STABLE AS $$SELECT '1'$$; "
            "CREATE POLICY user_conversations ON conversations TO authenticated_users "
            "USING (user_id::text = current_user_id())",
            "function public.current_user_id() returns text, users.id is bigint",
            5,
        ),
        (
            "REVOKE DELETE ON messages FROM authenticated_users",
            "role authenticated_users lacks DELETE on messages",
            ["GRANT DELETE ON public.messages TO authenticated_users"],
        ),
        (
            "GRANT TRUNCATE ON conversations TO authenticated_users",
            "role authenticated_users may TRUNCATE conversations, which ignores row-level security",
            ["REVOKE TRUNCATE ON public.conversations FROM authenticated_users"],
        ),
        (
            "ALTER ROLE authenticated_users LOGIN BYPASSRLS",
            "role authenticated_users can log in and bypasses row-level security",
            ["ALTER ROLE authenticated_users NOLOGIN NOBYPASSRLS"],
        ),
    ]
    for change, first_drift, expected in scenarios:
        conn.execute(change.encode())
        assert rls_drift(conn)[0] == first_drift, change
        statements = converge_rls(conn).statements()
        if isinstance(expected, int):
            assert len(statements) == expected, (change, statements)
        else:
            assert statements == expected, change
        if "CASCADE" in change:
            assert statements[0] == "DROP FUNCTION public.current_user_id() CASCADE"
            assert not any(s.startswith("DROP POLICY") for s in statements)
        assert rls_drift(conn) == [], change
        assert not converge_rls(conn).changed, change
    assert_converged(conn)


def _as_api_user(pg: PostgresServer, db: str, password: str = API_PASSWORD) -> Any:
    return psycopg.connect(
        host="127.0.0.1",
        port=pg.port,
        dbname=db,
        user=API_USER,
        password=password,
        autocommit=True,
        connect_timeout=10,
    )


def test_rls_a_user_sees_and_writes_only_their_rows(pg: PostgresServer, db: str, conn: Any) -> None:
    converge_all(conn)
    # two users with conversations and messages, and what each owns (read as the superuser)
    a, b = (
        int(r[0])
        for r in conn.execute(
            "SELECT user_id FROM conversations c WHERE EXISTS "
            "(SELECT 1 FROM messages m WHERE m.conversation_id = c.id) "
            "GROUP BY user_id ORDER BY count(*) DESC, user_id LIMIT 2"
        ).fetchall()
    )
    total_conversations = scalar(conn, "SELECT count(*) FROM conversations")
    a_conversations = scalar(conn, "SELECT count(*) FROM conversations WHERE user_id = %s", a)
    a_messages = scalar(
        conn,
        "SELECT count(*) FROM messages m JOIN conversations c ON c.id = m.conversation_id "
        "WHERE c.user_id = %s",
        a,
    )
    b_conversation = scalar(conn, "SELECT min(id) FROM conversations WHERE user_id = %s", b)
    assert 0 < a_conversations < total_conversations and a_messages > 0

    with pg.connect("postgres") as admin:
        admin.execute(f"DROP ROLE IF EXISTS {API_USER}".encode())
        admin.execute(
            f"CREATE ROLE {API_USER} LOGIN PASSWORD '{API_PASSWORD}' "
            f"NOSUPERUSER NOBYPASSRLS IN ROLE authenticated_users".encode()
        )
    try:
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            _as_api_user(pg, db, "wrong-password").close()
        with _as_api_user(pg, db) as api:
            row = api.execute(
                "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
            ).fetchone()
            assert row == (False, False)
            owners = api.execute(
                "SELECT DISTINCT tableowner FROM pg_tables "
                "WHERE tablename IN ('conversations', 'messages')"
            ).fetchall()
            assert owners == [("postgres",)]

            api.execute(f"SET app.current_user_id = '{a}'".encode())
            seen = api.execute("SELECT DISTINCT user_id FROM conversations").fetchall()
            assert seen == [(a,)]
            assert scalar(api, "SELECT count(*) FROM conversations") == a_conversations
            assert scalar(api, "SELECT count(*) FROM messages") == a_messages

            # writes for user B: refused on INSERT, invisible to UPDATE and DELETE
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
                api.execute("INSERT INTO conversations (user_id, title) VALUES (%s, 'x')", (b,))
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
                api.execute(
                    "INSERT INTO messages (conversation_id, role, content) "
                    "VALUES (%s, 'user', 'x')",
                    (b_conversation,),
                )
            cur = api.execute("UPDATE conversations SET title = 'hacked' WHERE user_id = %s", (b,))
            assert cur.rowcount == 0
            cur = api.execute("DELETE FROM messages WHERE conversation_id = %s", (b_conversation,))
            assert cur.rowcount == 0
            # and A cannot hand a row over to B (WITH CHECK)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
                api.execute("UPDATE conversations SET user_id = %s WHERE user_id = %s", (b, a))
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                api.execute("TRUNCATE conversations")
            # A's own writes work: table grants and the identity sequence are usable
            new_id = scalar(
                api,
                "INSERT INTO conversations (user_id, title) VALUES (%s, 'mine') RETURNING id",
                a,
            )
            api.execute(
                "INSERT INTO messages (conversation_id, role, content) VALUES (%s, 'user', 'hi')",
                (new_id,),
            )
            assert scalar(api, "SELECT count(*) FROM conversations") == a_conversations + 1

            # no id: no rows, whether never set, reset or empty
            api.execute("RESET app.current_user_id")
            assert scalar(api, "SELECT count(*) FROM conversations") == 0
            assert scalar(api, "SELECT count(*) FROM messages") == 0
            api.execute("SET app.current_user_id = ''")
            assert scalar(api, "SELECT count(*) FROM conversations") == 0
            # per request, as the API does it: SET LOCAL ends with the transaction
            with api.transaction():
                api.execute(f"SET LOCAL app.current_user_id = '{b}'".encode())
                assert {r[0] for r in api.execute("SELECT user_id FROM conversations")} == {b}
            assert scalar(api, "SELECT count(*) FROM conversations") == 0
        with _as_api_user(pg, db) as fresh:  # a new session never set it
            assert scalar(fresh, "SELECT count(*) FROM messages") == 0

        # the superuser is never subject to row-level security, FORCE or not
        assert scalar(conn, "SELECT count(*) FROM conversations") == total_conversations + 1
        assert scalar(conn, "SELECT count(*) FROM conversations WHERE user_id = %s", b) > 0
    finally:
        with pg.connect("postgres") as admin:
            admin.execute(f"DROP ROLE IF EXISTS {API_USER}".encode())


def test_force_makes_a_non_superuser_owner_subject_to_rls(conn: Any) -> None:
    converge_all(conn)
    total = scalar(conn, "SELECT count(*) FROM conversations")
    user = scalar(conn, "SELECT min(user_id) FROM conversations")
    mine = scalar(conn, "SELECT count(*) FROM conversations WHERE user_id = %s", user)
    # everything in a transaction that rolls back: role, ownership and settings
    with pytest.raises(_Rollback), conn.transaction():
        conn.execute("CREATE ROLE app_owner NOLOGIN")
        conn.execute("ALTER TABLE conversations OWNER TO app_owner")
        conn.execute("SET LOCAL ROLE app_owner")
        assert scalar(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False
        # forced, and no policy is for the owner: it sees nothing
        assert scalar(conn, "SELECT count(*) FROM conversations") == 0
        conn.execute("RESET ROLE")
        conn.execute("GRANT authenticated_users TO app_owner")
        conn.execute("SET LOCAL ROLE app_owner")
        conn.execute(f"SET LOCAL app.current_user_id = '{user}'".encode())
        assert scalar(conn, "SELECT count(*) FROM conversations") == mine
        conn.execute("RESET ROLE")
        conn.execute("ALTER TABLE conversations NO FORCE ROW LEVEL SECURITY")
        conn.execute("SET LOCAL ROLE app_owner")
        assert scalar(conn, "SELECT count(*) FROM conversations") == total  # owner bypasses
        raise _Rollback
    assert rls_drift(conn) == []


class _Rollback(Exception):
    """Raised inside ``conn.transaction()`` to roll it back."""
