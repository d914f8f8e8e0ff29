"""Partitions, publication and row-level security converged on a real PostgreSQL 18.

One server per module (password auth for TCP, so the RLS test logs in as a real API role with its
own password), one seeded TwinMe database used as a template, and a fresh copy of it per test.
"""

from __future__ import annotations

import datetime as dt
import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from twinme_ops.lib import pg_objects
from twinme_ops.lib.convergence import ConvergeReport
from twinme_ops.lib.pg_objects import (
    PUBLICATION_TABLES,
    MissingTablesError,
    PartitionLayoutError,
    converge_partitions,
    converge_publication,
    converge_rls,
    current_month,
    partition_months,
    partitions_drift,
    publication_drift,
    rls_drift,
)
from twinme_ops.lib.postgres_server import PostgresServer
from twinme_ops.sandbox.seed import SeedCounts, SeedReport, default_anchor, seed_postgres
from twinme_ops.sandbox.servers import DATABASE, prepare_database

PASSWORD = "pg-objects-Passw0rd"
API_USER = "api_user"
API_PASSWORD = "api-user-Passw0rd"
# The schema creates partitions up to 3 months ahead: ask for more so the first run has work.
AHEAD = 6
_names = itertools.count()


@pytest.fixture(scope="module")
def pg(server_tmp_root: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL 18 server with scram-sha-256 for every TCP login, and the seeded TwinMe db."""
    base = Path(tempfile.mkdtemp(prefix="pg_objects-", dir=server_tmp_root))
    base.chmod(0o755)
    server = PostgresServer.start(base / "data", password=PASSWORD)
    try:
        prepare_database(server)
        counts = SeedCounts.for_scale(0.001)
        anchor = default_anchor()
        report = SeedReport(scale=0.001, anchor=anchor.isoformat())
        seed_postgres(server.url(DATABASE, with_password=True), counts, anchor, report)
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def db(pg: PostgresServer) -> Iterator[str]:
    """A fresh copy of the seeded TwinMe database."""
    name = f"twinme_t{next(_names)}"
    with pg.connect("postgres") as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {DATABASE}".encode())
    yield name
    with pg.connect("postgres") as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)".encode())


@pytest.fixture
def conn(pg: PostgresServer, db: str) -> Iterator[psycopg.Connection[Any]]:
    with pg.connect(db) as connection:
        yield connection


def converge_all(conn: psycopg.Connection[Any], log: Any = None) -> list[ConvergeReport]:
    return [
        converge_partitions(conn, months_ahead=AHEAD, log=log),
        converge_publication(conn, log),
        converge_rls(conn, log),
    ]


def drift_all(conn: psycopg.Connection[Any]) -> list[str]:
    return partitions_drift(conn, AHEAD) + publication_drift(conn) + rls_drift(conn)


def assert_converged(conn: psycopg.Connection[Any]) -> None:
    """A second run changes nothing and finds no drift."""
    again = converge_all(conn)
    assert [r.statements() for r in again] == [[], [], []]
    assert drift_all(conn) == []


def scalar(conn: psycopg.Connection[Any], query: str, *params: Any) -> Any:
    row = conn.execute(query.encode(), params).fetchone()
    assert row is not None
    return row[0]


def partition_of(conn: psycopg.Connection[Any], month: pg_objects.MonthPartition) -> str | None:
    return scalar(
        conn,
        "SELECT pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'session_events'::regclass AND c.relname = %s "
        "UNION ALL SELECT NULL LIMIT 1",
        month.name,
    )


# --------------------------------------------------------------------------------------------
# Whole convergence


def test_converge_then_second_run_changes_nothing(pg: PostgresServer, conn: Any) -> None:
    with pg.connect("postgres") as admin:  # the role is cluster-wide: start without it
        admin.execute("DROP ROLE IF EXISTS authenticated_users")
    assert drift_all(conn)
    logged: list[str] = []
    partitions, publication, rls = converge_all(conn, logged.append)

    months = partition_months(AHEAD)
    created = [m.name for m in months[4:]]  # the schema made the current month and 3 ahead
    assert [s.split()[2].split(".")[-1] for s in partitions.statements()] == created
    assert publication.statements() == [
        "CREATE PUBLICATION twinme_pub FOR TABLE public.users, public.conversations, "
        "public.messages, public.document_chunks, public.sessions"
    ]
    rls_sql = rls.statements()
    assert rls_sql[0] == "CREATE ROLE authenticated_users NOLOGIN"
    assert rls_sql[1].startswith(
        "CREATE OR REPLACE FUNCTION public.current_user_id() RETURNS bigint"
    )
    assert sum(s.startswith("CREATE POLICY") for s in rls_sql) == 2
    assert rls_sql.index("ALTER TABLE public.messages FORCE ROW LEVEL SECURITY") < rls_sql.index(
        "GRANT SELECT, INSERT, UPDATE, DELETE ON public.messages TO authenticated_users"
    )
    # every change is logged as the statement it ran
    assert len(logged) == sum(len(r.changes) for r in (partitions, publication, rls))
    assert logged[0].endswith(partitions.statements()[0])

    # wal_level = replica only warns: the publication exists, and the report says why it is idle
    assert scalar(conn, "SHOW wal_level") == "replica"
    assert any("wal_level is replica" in n for n in publication.notes)
    published = conn.execute(
        "SELECT tablename FROM pg_publication_tables WHERE pubname = 'twinme_pub'"
    ).fetchall()
    assert sorted(r[0] for r in published) == sorted(PUBLICATION_TABLES)
    for month in months:
        bound = partition_of(conn, month)
        assert bound == (
            f"FOR VALUES FROM ('{month.start:%Y-%m-%d} 00:00:00+00') "
            f"TO ('{month.end:%Y-%m-%d} 00:00:00+00')"
        )
    assert scalar(conn, "SELECT current_user_id()") is None

    assert_converged(conn)


# --------------------------------------------------------------------------------------------
# Partitions


def test_partition_months_follow_today_not_2024() -> None:
    months = partition_months(3, dt.date(2026, 11, 30))
    assert [m.name for m in months] == [
        "session_events_2026_11",
        "session_events_2026_12",
        "session_events_2027_01",
        "session_events_2027_02",
    ]
    assert months[1].start == dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert months[1].end == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    assert len(partition_months(0, dt.date(2030, 5, 2))) == 1
    assert current_month(dt.date(2030, 5, 20)) == dt.date(2030, 5, 1)
    # no date: the Paris month; the list starts at the UTC month while Paris is already ahead
    late = dt.datetime(2026, 12, 31, 23, 30, tzinfo=dt.UTC)  # 00:30 on 1 January in Paris
    assert current_month(now=late) == dt.date(2027, 1, 1)
    names = [m.name for m in partition_months(1, now=late)]
    assert names == ["session_events_2026_12", "session_events_2027_01", "session_events_2027_02"]
    noon = dt.datetime(2026, 12, 15, 12, tzinfo=dt.UTC)
    assert [m.name for m in partition_months(1, now=noon)] == names[:2]
    with pytest.raises(ValueError):
        partition_months(-1)


def test_dropped_future_partition_is_recreated(conn: Any) -> None:
    converge_all(conn)
    gone = partition_months(AHEAD)[5]
    conn.execute(f"DROP TABLE {gone.name}".encode())
    assert partitions_drift(conn, AHEAD) == [
        f"missing partition {gone.name} for {gone.start:%Y-%m} (FOR VALUES {gone.bounds_sql})"
    ]
    report = converge_partitions(conn, months_ahead=AHEAD)
    assert report.statements() == [
        f"CREATE TABLE public.{gone.name} PARTITION OF public.session_events "
        f"FOR VALUES {gone.bounds_sql}"
    ]
    assert_converged(conn)


def test_partitions_for_another_today_across_a_year(conn: Any) -> None:
    today = dt.date(2031, 12, 15)
    drift = partitions_drift(conn, 2, today)
    assert [d.split()[2] for d in drift] == [
        "session_events_2031_12",
        "session_events_2032_01",
        "session_events_2032_02",
    ]
    assert len(converge_partitions(conn, months_ahead=2, today=today).changes) == 3
    assert partitions_drift(conn, 2, today) == []
    assert not converge_partitions(conn, months_ahead=2, today=today).changed


def test_months_covered_otherwise_and_blocked_months(conn: Any) -> None:
    today = dt.date(2035, 1, 10)
    # a quarterly partition covers three months: nothing to create for them
    conn.execute(
        "CREATE TABLE session_events_2035_q1 PARTITION OF session_events "
        "FOR VALUES FROM ('2035-01-01 00:00:00+00') TO ('2035-04-01 00:00:00+00')"
    )
    assert partitions_drift(conn, 2, today) == []
    # a partition with Paris bounds only partly covers two UTC months: reported, never overlapped
    conn.execute(
        "CREATE TABLE session_events_2035_05 PARTITION OF session_events "
        "FOR VALUES FROM ('2035-05-01 00:00:00+02') TO ('2035-06-01 00:00:00+02')"
    )
    # and a plain table holds the name another month needs
    conn.execute("CREATE TABLE session_events_2035_06 (id bigint)")
    drift = partitions_drift(conn, 6, today)
    assert len(drift) == 4
    assert drift[0].startswith("missing partition session_events_2035_07 for 2035-07")
    for month, text in zip(("04", "05"), drift[1:3], strict=True):
        assert text.startswith(
            f"2035-{month} is only partly covered by public.session_events_2035_05: a monthly "
            f"partition session_events_2035_{month} would overlap it"
        )
    assert drift[3].startswith(
        "2035-06 has no partition and the name session_events_2035_06 is taken by a relation"
    )
    before = scalar(conn, "SELECT count(*) FROM pg_inherits")
    with pytest.raises(PartitionLayoutError, match="cannot create the monthly partitions"):
        converge_partitions(conn, months_ahead=6, today=today)
    assert scalar(conn, "SELECT count(*) FROM pg_inherits") == before  # nothing created


def _session_id(conn: Any) -> int:
    return int(scalar(conn, "SELECT min(id) FROM sessions"))


def _insert_events(conn: Any, at: dt.datetime, n: int) -> None:
    conn.execute(
        "INSERT INTO session_events (session_id, event_type, occurred_at) "
        "SELECT %s, 'late', %s + i * interval '1 minute' FROM generate_series(1, %s) i",
        (_session_id(conn), at, n),
    )


def _where_events(conn: Any) -> dict[int, str]:
    rows = conn.execute("SELECT id, tableoid::regclass::text FROM session_events").fetchall()
    return {int(r[0]): str(r[1]) for r in rows}


@pytest.mark.parametrize("race", [False, True], ids=["counted", "appeared-after-count"])
def test_rows_in_default_move_to_the_new_partition(
    conn: Any, race: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    converge_all(conn)
    months = partition_months(8)
    target, beyond = months[8], months[8].end
    _insert_events(conn, target.start + dt.timedelta(days=3), 25)
    _insert_events(conn, beyond + dt.timedelta(days=3), 4)  # stays in DEFAULT: no partition
    before = _where_events(conn)
    assert sum(t == "session_events_default" for t in before.values()) == 29
    assert any(f"missing partition {target.name}" in d for d in partitions_drift(conn, 8))
    if race:
        # rows that reach DEFAULT between the check and the CREATE: the CREATE fails, then moves
        monkeypatch.setattr(pg_objects, "_default_has_rows", lambda *a: False)

    report = converge_partitions(conn, months_ahead=8)

    sql = report.statements()
    assert sql[-4:] == [
        "ALTER TABLE public.session_events DETACH PARTITION public.session_events_default",
        f"CREATE TABLE public.{target.name} PARTITION OF public.session_events "
        f"FOR VALUES {target.bounds_sql}",
        sql[-2],
        "ALTER TABLE public.session_events ATTACH PARTITION public.session_events_default DEFAULT",
    ]
    assert sql[-2].startswith("WITH moved AS (DELETE FROM public.session_events_default")
    assert report.changes[-2].detail == "25 rows moved out of public.session_events_default"
    after = _where_events(conn)
    assert after.keys() == before.keys()  # same rows, same ids
    assert sum(t == target.name for t in after.values()) == 25
    assert sum(t == "session_events_default" for t in after.values()) == 4
    assert (
        scalar(
            conn,
            "SELECT partdefid::regclass::text FROM pg_partitioned_table "
            "WHERE partrelid = 'session_events'::regclass",
        )
        == "session_events_default"
    )
    assert partitions_drift(conn, 8) == []
    assert not converge_partitions(conn, months_ahead=8).changed


def test_plain_session_events_is_a_clear_error(pg: PostgresServer) -> None:
    with pg.connect("postgres") as admin:
        admin.execute("DROP DATABASE IF EXISTS plain_events")
        admin.execute("CREATE DATABASE plain_events")
    try:
        with pg.connect("plain_events") as conn:
            conn.execute(
                "CREATE TABLE session_events (id bigint PRIMARY KEY, occurred_at timestamptz)"
            )
            for call in (
                lambda: converge_partitions(conn),
                lambda: partitions_drift(conn),
            ):
                with pytest.raises(PartitionLayoutError) as err:
                    call()
                assert "session_events is a plain table: partitioning needs a migration" in str(
                    err.value
                )
    finally:
        with pg.connect("postgres") as admin:
            admin.execute("DROP DATABASE plain_events WITH (FORCE)")


def test_missing_tables_name_the_tables_and_the_fix(pg: PostgresServer) -> None:
    with pg.connect("postgres") as admin:
        admin.execute("DROP DATABASE IF EXISTS not_twinme")
        admin.execute("CREATE DATABASE not_twinme")
    try:
        with pg.connect("not_twinme") as conn:
            conn.execute("CREATE TABLE users (id bigint PRIMARY KEY)")
            calls = {
                "session_events": [
                    lambda: converge_partitions(conn),
                    lambda: partitions_drift(conn),
                ],
                "conversations, messages, document_chunks, sessions": [
                    lambda: converge_publication(conn),
                    lambda: publication_drift(conn),
                ],
                "conversations, messages": [lambda: converge_rls(conn), lambda: rls_drift(conn)],
            }
            for missing, functions in calls.items():
                for call in functions:
                    with pytest.raises(MissingTablesError) as err:
                        call()
                    assert str(err.value) == (
                        f"database not_twinme lacks TwinMe tables/columns: {missing}. Fix: apply "
                        "the TwinMe schema, or point DATABASE_URL at the TwinMe database."
                    )
                    assert err.value.tables == missing.split(", ")
        with pg.connect("not_twinme", autocommit=False) as conn, pytest.raises(ValueError):
            converge_rls(conn)
    finally:
        with pg.connect("postgres") as admin:
            admin.execute("DROP DATABASE not_twinme WITH (FORCE)")


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
