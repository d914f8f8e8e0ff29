"""What partitions, publication and row-level security share, on a real PostgreSQL 18: the
whole convergence run twice, and the missing-tables error every step raises.

Fixtures (``pg``, ``db``, ``conn``) and helpers are in ``tests/support/pg_fixtures.py``.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from tests.support.list_log import ListLog
from tests.support.pg_fixtures import AHEAD, assert_converged, converge_all, drift_all, scalar
from twinme_ops.database.postgres import partitions as pg_partitions
from twinme_ops.database.postgres.objects import MissingTablesError
from twinme_ops.database.postgres.partitions import (
    converge_partitions,
    partition_months,
    partitions_drift,
)
from twinme_ops.database.postgres.publication import (
    PUBLICATION_TABLES,
    converge_publication,
    publication_drift,
)
from twinme_ops.database.postgres.rls import converge_rls, rls_drift
from twinme_ops.scratch.postgres import PostgresServer


def partition_of(conn: psycopg.Connection[Any], month: pg_partitions.MonthPartition) -> str | None:
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
    logged = ListLog()
    partitions, publication, rls = converge_all(conn, logged)

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
