"""PostgreSQL restore against a real server: fresh database, streamed pg_restore, swap."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.compare import table_digest
from tests.support.servers import PG_TEST_PASSWORD
from twinme_ops.backups.restore.common import RestoreError
from twinme_ops.backups.restore.postgres import pg_restore_stream
from twinme_ops.backups.restore.postgres_databases import create_database, drop_database
from twinme_ops.backups.restore.postgres_swap import swap_databases
from twinme_ops.common.pgtools import pg_bin
from twinme_ops.scratch.postgres import PostgresServer
from twinme_ops.servers.postgres import user_tables

CHUNK = 64 << 10

SCHEMA = """
CREATE EXTENSION vector;
CREATE SEQUENCE invoice_no START 1000;
CREATE TABLE users (
    id bigserial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    embedding vector(3)
);
CREATE TABLE notes (
    id serial PRIMARY KEY,
    user_id bigint REFERENCES users(id),
    body text
);
CREATE TABLE session_events (
    id bigint GENERATED ALWAYS AS IDENTITY,
    at date NOT NULL,
    kind text,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE session_events_2026_01 PARTITION OF session_events
    FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
CREATE TABLE session_events_2026_02 PARTITION OF session_events
    FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
INSERT INTO users (email, embedding)
    SELECT 'u' || g || '@twinme.test', ARRAY[g, g * 0.5, -g]::vector(3)
    FROM generate_series(1, 300) g;
INSERT INTO notes (user_id, body)
    SELECT 1 + g % 300, repeat('n', g % 50) FROM generate_series(1, 500) g;
INSERT INTO session_events (at, kind)
    SELECT date '2026-01-01' + (g % 59), 'k' || (g % 7) FROM generate_series(1, 1000) g;
SELECT setval('invoice_no', 4242);
"""


def _dump(server: PostgresServer, db: str) -> list[bytes]:
    """``pg_dump -Fc -Z0`` through a pipe (no data offsets, like the stored backups), in chunks."""
    out = subprocess.run(
        [pg_bin("pg_dump"), "-Fc", "-Z0", "--no-password", f"--dbname={server.url(db)}"],
        capture_output=True,
        check=True,
    ).stdout
    return [out[i : i + CHUNK] for i in range(0, len(out), CHUNK)]


def _state(server: PostgresServer, db: str) -> dict[str, Any]:
    """Every table's digest and every sequence's position."""
    url = server.url(db)
    with server.connect(db) as conn:
        tables = [f"{s}.{t}" for s, t in user_tables(conn)]
        seqs = conn.execute(
            "SELECT schemaname || '.' || sequencename FROM pg_sequences ORDER BY 1"
        ).fetchall()
        sequences = {
            name: conn.execute(f"SELECT last_value, is_called FROM {name}").fetchone()
            for (name,) in seqs
        }
    return {"tables": {t: table_digest(url, t) for t in tables}, "sequences": sequences}


def _db_exists(server: PostgresServer, name: str) -> bool:
    with server.connect() as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


@pytest.fixture
def live_db(pg_server: PostgresServer) -> Iterator[str]:
    """A database ``app_<n>`` with the schema above, dropped (with its restore copies) after."""
    name = f"app_{time.monotonic_ns() % 10**9}"
    with pg_server.connect() as conn:
        conn.execute(f"CREATE DATABASE {name}")
    with pg_server.connect(name) as conn:
        conn.execute(SCHEMA)
    yield name
    for db in (name, f"{name}_restored", f"{name}_old", f"{name}_bad"):
        drop_database(pg_server.url(), db)


def test_restore_into_fresh_database_and_swap_equals_the_backup(
    pg_server: PostgresServer, live_db: str
) -> None:
    admin = pg_server.url()
    with pg_server.connect() as conn:
        conn.execute("DROP ROLE IF EXISTS app_reader")
        conn.execute("CREATE ROLE app_reader")
        # database-level state that pg_dump does not archive: swap_databases carries it over
        conn.execute(f"REVOKE CONNECT ON DATABASE {live_db} FROM PUBLIC")
        conn.execute(f"GRANT CONNECT ON DATABASE {live_db} TO app_reader")
        conn.execute(f"""ALTER DATABASE {live_db} SET search_path = "$user", public, "odd,name" """)
        conn.execute(f"ALTER DATABASE {live_db} SET app.tenant = 'twin me'")
    dump = _dump(pg_server, live_db)
    at_dump = _state(pg_server, live_db)
    assert at_dump["sequences"]["public.invoice_no"] == (4242, True)
    assert "public.session_events_2026_02" in at_dump["tables"]

    # The live database moves on after the backup.
    with pg_server.connect(live_db) as conn:
        conn.execute("INSERT INTO users (email) VALUES ('late@twinme.test')")
        conn.execute("UPDATE users SET embedding = '[9,9,9]' WHERE id <= 10")
        conn.execute("DELETE FROM session_events WHERE at >= '2026-02-01'")
        conn.execute("DROP TABLE notes")
        conn.execute("CREATE TABLE extra AS SELECT 1 AS x")
        conn.execute("SELECT nextval('invoice_no') FROM generate_series(1, 5)")
    assert _state(pg_server, live_db) != at_dump

    restored = f"{live_db}_restored"
    create_database(admin, restored, like=live_db)
    pg_restore_stream(iter(dump), pg_server.url(restored))
    client = pg_server.connect(live_db)  # an API connection still open during the swap
    try:
        swap_databases(admin, live_db, restored, f"{live_db}_old")
        with pytest.raises(psycopg.OperationalError):
            client.execute("SELECT 1")  # it was terminated, not left on the old database
    finally:
        client.close()

    assert _state(pg_server, live_db) == at_dump
    assert not _db_exists(pg_server, restored)
    with pg_server.connect(live_db) as conn:
        assert conn.execute("SELECT to_regclass('public.extra')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (300,)
    with pg_server.connect(f"{live_db}_old") as conn:  # the previous live database, kept
        assert conn.execute("SELECT count(*) FROM extra").fetchone() == (1,)
    with pg_server.connect() as conn:
        props = conn.execute(
            "SELECT d.datname, d.datallowconn, "
            "has_database_privilege('app_reader', d.oid, 'CONNECT'), "
            "(SELECT array_agg(a.privilege_type ORDER BY 1) FROM aclexplode(d.datacl) a "
            " WHERE a.grantee = 0), "
            "(SELECT setconfig FROM pg_db_role_setting s WHERE s.setdatabase = d.oid "
            " AND s.setrole = 0) "
            "FROM pg_database d WHERE d.datname = ANY(%s) ORDER BY 1",
            ([live_db, f"{live_db}_old"],),
        ).fetchall()
    new, old = props
    assert (
        new[1:]
        == old[1:]
        == (
            True,
            True,
            ["TEMPORARY"],  # PUBLIC lost CONNECT on both
            ['search_path="$user", public, "odd,name"', "app.tenant=twin me"],
        )
    )


def test_parallel_restore_from_a_spool_file(
    pg_server: PostgresServer, live_db: str, server_tmp: Path
) -> None:
    """``jobs=2`` spools the stream (pg_dump wrote it to a pipe: no data offsets) and removes it."""
    copy = f"{live_db}_restored"
    create_database(pg_server.url(), copy)
    pg_restore_stream(
        iter(_dump(pg_server, live_db)), pg_server.url(copy), jobs=2, spool_dir=server_tmp
    )
    assert _state(pg_server, copy) == _state(pg_server, live_db)
    assert os.listdir(server_tmp) == []


def _pg_restore_running(marker: str) -> bool:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"pg_restore" in cmd and marker.encode() in cmd:
            return True
    return False


@pytest.mark.parametrize("where", ["mid-way", "at-end"])
def test_failing_stream_kills_pg_restore_and_nothing_is_swapped(
    pg_server: PostgresServer, live_db: str, where: str
) -> None:
    admin = pg_server.url()
    with pg_server.connect(live_db) as conn:
        conn.execute(
            "CREATE TABLE bulk AS SELECT g, md5(g::text) AS h FROM generate_series(1, 2e5) g"
        )
    dump = _dump(pg_server, live_db)
    before = _state(pg_server, live_db)

    def corrupted() -> Iterator[bytes]:
        for i, chunk in enumerate(dump):
            if where == "mid-way" and i == len(dump) // 2:
                raise ValueError("checksum mismatch for 2026-11-24/postgres.dump.zst")
            yield chunk
        raise ValueError("checksum mismatch for 2026-11-24/postgres.dump.zst")

    bad = f"{live_db}_bad"
    create_database(admin, bad)
    # The caller's flow: restore, and swap only when the restore returned.
    with pytest.raises(ValueError, match="checksum mismatch"):
        pg_restore_stream(corrupted(), pg_server.url(bad))
        swap_databases(admin, live_db, bad, f"{live_db}_old")
    assert not _pg_restore_running(bad)
    # its server session rolls back and ends on its own (the client is gone), no drop needed
    deadline = time.monotonic() + 10
    with pg_server.connect() as conn:
        while conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (bad,)
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, "pg_restore's session is still running"
            time.sleep(0.05)
    if where == "mid-way":  # one transaction (the default): a killed restore leaves nothing
        with pg_server.connect(bad) as conn:
            assert user_tables(conn) == []
    drop_database(admin, bad)
    assert not _db_exists(pg_server, bad)
    assert not _db_exists(pg_server, f"{live_db}_old")
    assert _state(pg_server, live_db) == before


def test_pg_restore_failure_is_reported_without_the_password(
    pg_password_server: PostgresServer,
) -> None:
    server = pg_password_server
    env = {**os.environ, "PGPASSWORD": PG_TEST_PASSWORD}
    admin = server.url()
    create_database(admin, "app", env)
    try:
        with psycopg.connect(server.url("app"), password=PG_TEST_PASSWORD) as conn:
            conn.execute("CREATE TABLE t AS SELECT 1 AS x")
        out = subprocess.run(
            [pg_bin("pg_dump"), "-Fc", "-Z0", f"--dbname={server.url('app')}"],
            capture_output=True,
            check=True,
            env=env,
        ).stdout
        # Restoring over existing objects is what the fresh database exists to avoid.
        with pytest.raises(RestoreError) as info:
            pg_restore_stream([out], server.url("app"), env)
        message = str(info.value)
        assert "already exists" in message and "Fix: restore into a fresh" in message
        assert PG_TEST_PASSWORD not in message
        # Without the password, the connection error names the fix, again without secrets.
        with pytest.raises(RestoreError, match="Fix: check the user and password"):
            pg_restore_stream([out], server.url("app"), {"PATH": os.environ["PATH"]})
        with pytest.raises(RestoreError, match="already exists.*Fix: drop it"):
            create_database(admin, "app", env)
        # A password given in the DSN is moved to PGPASSWORD (argv is world-readable).
        create_database(admin, "app_copy", env)
        url = server.url("app_copy", with_password=True)
        pg_restore_stream([out], url, {"PATH": os.environ["PATH"]})
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    finally:
        drop_database(admin, "app", env)
        drop_database(admin, "app_copy", env)


def test_swap_refuses_to_overwrite_and_leaves_live_open(
    pg_server: PostgresServer, live_db: str
) -> None:
    admin = pg_server.url()
    create_database(admin, f"{live_db}_restored")
    create_database(admin, f"{live_db}_old")
    with pytest.raises(RestoreError, match="already exists. Fix: drop it"):
        swap_databases(admin, live_db, f"{live_db}_restored", f"{live_db}_old")
    with pytest.raises(RestoreError, match="admin_url points at database"):
        swap_databases(pg_server.url(live_db), live_db, f"{live_db}_restored", "other")
    with pg_server.connect(live_db) as conn:  # still accepting connections
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (300,)
