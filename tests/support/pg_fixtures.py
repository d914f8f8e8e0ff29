"""Fixtures and helpers for the tests of partitions, publication and row-level security.

One server per test module (password auth for TCP, so the RLS test logs in as a real API role
with its own password), one seeded TwinMe database used as a template, and a fresh copy of it per
test. Registered for every test module by ``tests/conftest.py``.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from twinme_ops.database.convergence import ConvergeReport
from twinme_ops.database.postgres.partitions import converge_partitions, partitions_drift
from twinme_ops.database.postgres.publication import converge_publication, publication_drift
from twinme_ops.database.postgres.rls import converge_rls, rls_drift
from twinme_ops.sandbox.seed import SeedCounts, SeedReport, default_anchor, seed_postgres
from twinme_ops.sandbox.servers import DATABASE, prepare_database
from twinme_ops.scratch.postgres import PostgresServer

PASSWORD = "pg-objects-Passw0rd"
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


# --- a team's own PostgreSQL (not the sandbox), for `twinme-ops wal-archive` ------------------

ARCHIVER_ROLE = "archiver"
ARCHIVER_PASSWORD = "archiver-Passw0rd-7b2c"


@pytest.fixture
def unready_pg(server_tmp: Path) -> Iterator[PostgresServer]:
    """A server twinme_ops does not run, as a team might have it: not ready for archiving
    (``wal_level = minimal``, no WAL sender), scram-sha-256 over TCP, and a login role
    :data:`ARCHIVER_ROLE` without ``REPLICATION``. Restart it after fixing it."""
    server = PostgresServer.start(
        server_tmp / "team-pg",
        password=PASSWORD,
        settings={"wal_level": "minimal", "max_wal_senders": "0"},
    )
    try:
        with server.connect() as conn:
            conn.execute(
                f"CREATE ROLE {ARCHIVER_ROLE} LOGIN PASSWORD '{ARCHIVER_PASSWORD}'".encode()
            )
        yield server
    finally:
        server.stop(mode="immediate")
