"""recover_job's databases on the live server: a database named ``postgres``, and the
``<db>__restore_<stamp>`` a killed recovery leaves behind (issue 11).

- A production database named ``postgres`` is recovered: the CREATE/RENAME/DROP statements run
  from ``template1``. A role that could not do them is refused by the preflight, before the
  safety backup and the scale-down.
- A recovery is SIGKILLed (its whole process group, pg_restore included) while it restores; the
  next recovery drops the ``__restore_`` database it left and says so in its log, and keeps
  every ``__pre_recovery_`` copy, and the ``__restore_`` databases a recovery running elsewhere
  may still be using (a session on it, its lock held, or a newer stamp).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
import redis

from tests.support.backup_helpers import PARTITION, run_backup, store_for
from tests.support.compare import table_digest
from tests.support.production import damage, production_state, recover
from twinme_ops.backups.manifest import MANIFEST
from twinme_ops.backups.recovery_databases import restore_lock
from twinme_ops.sandbox.seed import seed
from twinme_ops.sandbox.servers import DATABASE, schema_sql
from twinme_ops.scratch.postgres import PostgresServer
from twinme_ops.scratch.redis import RedisServer

KILL_WAIT_S = 120.0


def _databases(pg: PostgresServer) -> set[str]:
    with pg.connect("postgres") as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}


def _recover_logged(config: dict[str, Any]) -> tuple[dg.ExecuteInProcessResult, str]:
    """recover_job in process; its result and every line of its log."""
    instance = dg.DagsterInstance.ephemeral()
    result = recover(config, instance)
    return result, "\n".join(e.user_message for e in instance.all_logs(result.run_id))


def _safety_sets(backup_env: dict[str, str]) -> list[str]:
    store = store_for(backup_env["TWINME_BACKUP_URL"])
    return [s for s in store.list_sets() if s.startswith("safety-")]


# --- a production database named postgres ---------------------------------------------------------


@pytest.fixture
def production_in_postgres(
    server_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backup_env
) -> Iterator[dict[str, Any]]:
    """TwinMe's schema and data in the server's ``postgres`` database (DATABASE_URL without a
    database name means that one too)."""
    pg = PostgresServer.start(server_tmp / "prod-pg")
    rd = RedisServer.start(server_tmp / "prod-redis")
    files = tmp_path / "storage"
    files.mkdir()
    try:
        with pg.connect("postgres") as conn:
            conn.execute(schema_sql().encode())
        seed(pg.url("postgres"), rd.url(), files, 0.02)
        monkeypatch.setenv("DATABASE_URL", pg.url("postgres"))
        monkeypatch.setenv("REDIS_URL", rd.url())
        monkeypatch.setenv("TWINME_FILES_DIR", str(files))
        yield {"pg": pg, "redis": rd, "files": files, "db_url": pg.url("postgres")}
    finally:
        rd.stop()
        pg.stop(mode="immediate")


def _tables(url: str) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT 'public.' || tablename FROM pg_tables "
                "WHERE schemaname = 'public' ORDER BY 1"
            ).fetchall()
        ]
    return {t: table_digest(url, t) for t in names}


def test_a_database_named_postgres_is_recovered(
    production_in_postgres: dict[str, Any], backup_env
) -> None:
    prod = production_in_postgres
    assert run_backup().success
    before = _tables(prod["db_url"])
    assert before["public.messages"][0] > 0
    with psycopg.connect(prod["db_url"], autocommit=True) as conn:
        conn.execute("DELETE FROM messages WHERE id % 2 = 0")
        conn.execute("CREATE TABLE leftover (i int)")
    redis.Redis.from_url(prod["redis"].url()).set("cache:intruder", "x")

    result, text = _recover_logged({"set_id": PARTITION, "confirm": "postgres"})
    assert result.success, text[-3000:]
    assert _tables(prod["db_url"]) == before
    assert "from the maintenance database template1" in text
    names = _databases(prod["pg"])
    assert len([n for n in names if n.startswith("postgres__pre_recovery_")]) == 1
    assert not [n for n in names if n.startswith("postgres__restore_")]
    assert {"template0", "template1", "postgres"} <= names


def test_a_role_that_cannot_swap_databases_is_refused_before_anything(
    production: dict[str, Any],  # noqa: F811
    backup_env,
) -> None:
    pg: PostgresServer = production["pg"]
    with pg.connect("postgres") as conn:
        conn.execute("CREATE ROLE operator LOGIN")  # no CREATEDB, owns nothing
        conn.execute(f"GRANT CONNECT ON DATABASE {DATABASE} TO operator")
    assert run_backup().success
    before = production_state(production)
    weak = pg.url(DATABASE, user="operator")
    result = recover(
        {"set_id": PARTITION, "confirm": DATABASE, "target_database_url": weak},
        dg.DagsterInstance.ephemeral(),
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "recovery_preflight"
    message = failure.step_failure_data.error.message  # type: ignore[union-attr]
    assert "role 'operator' may not create databases" in message
    assert "ALTER ROLE operator CREATEDB" in message and "Nothing was touched" in message
    assert _safety_sets(backup_env) == []  # no safety backup, no scale-down, nothing restored
    assert production_state(production) == before

    with pg.connect("postgres") as conn:
        conn.execute("ALTER ROLE operator CREATEDB")
    result = recover(
        {"set_id": PARTITION, "confirm": DATABASE, "target_database_url": weak},
        dg.DagsterInstance.ephemeral(),
    )
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "recovery_preflight"
    assert f"role 'operator' does not own database '{DATABASE}'" in (
        failure.step_failure_data.error.message  # type: ignore[union-attr]
    )
    assert _safety_sets(backup_env) == []


# --- a killed recovery's leftover ---------------------------------------------------------------

_RECOVER_SCRIPT = """
import sys
import dagster as dg
from twinme_ops.definitions import build_definitions

config = {"set_id": sys.argv[1], "confirm": sys.argv[2]}
job = build_definitions().resolve_job_def("recover_job")
job.execute_in_process(
    run_config={"ops": {"recovery_preflight": {"config": config}}},
    instance=dg.DagsterInstance.ephemeral(),
    raise_on_error=False,
)
"""


def _restore_sessions(pg: PostgresServer) -> list[tuple[str, str]]:
    with pg.connect("postgres") as conn:
        rows = conn.execute(
            "SELECT datname, coalesce(application_name, '') FROM pg_stat_activity "
            "WHERE datname LIKE %s AND backend_type = 'client backend'",
            (f"{DATABASE}\\_\\_restore\\_%",),
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


def _kill_a_recovery_mid_restore(pg: PostgresServer, workdir: Path) -> str:
    """Run recover_job in its own process group; once pg_restore is writing into the restore
    database, freeze the group (so the kill lands mid-restore, whatever the machine's speed),
    check the swap has not happened, then SIGKILL it all. Returns the database it left."""
    pre_before = {n for n in _databases(pg) if "__pre_recovery_" in n}
    log = (workdir / "killed-recovery.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-c", _RECOVER_SCRIPT, PARTITION, DATABASE],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + KILL_WAIT_S
        while not any(app == "pg_restore" for _, app in _restore_sessions(pg)):
            assert proc.poll() is None, (workdir / "killed-recovery.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "pg_restore never started"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGSTOP)
        [(leftover, _)] = [s for s in _restore_sessions(pg) if s[1] == "pg_restore"]
        assert {n for n in _databases(pg) if "__pre_recovery_" in n} == pre_before, "swapped"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
    assert proc.returncode == -signal.SIGKILL
    # the server notices its clients are gone: pg_restore's transaction is rolled back
    deadline = time.monotonic() + 30
    while _restore_sessions(pg):
        assert time.monotonic() < deadline, _restore_sessions(pg)
        time.sleep(0.1)
    assert leftover in _databases(pg)
    return leftover


def test_the_next_recovery_drops_a_killed_recoverys_database_and_keeps_the_copies(
    production: dict[str, Any],  # noqa: F811
    backup_env,
    tmp_path: Path,
) -> None:
    pg: PostgresServer = production["pg"]
    assert run_backup().success
    before = production_state(production)
    # a first recovery: its __pre_recovery_ copy is documented as the way back
    first = recover({"set_id": PARTITION, "confirm": DATABASE}, dg.DagsterInstance.ephemeral())
    assert first.success
    damage(production)

    killed = _kill_a_recovery_mid_restore(pg, tmp_path)
    assert killed.startswith(f"{DATABASE}__restore_")

    # what a recovery running elsewhere (another instance, a person) may still be using
    old, newer = "20260101T000000Z", "99991231T235959Z"
    held = f"{DATABASE}__restore_{old}"
    connected = f"{DATABASE}__restore_20260101T000001Z"
    future = f"{DATABASE}__restore_{newer}"
    manual_copy = f"{DATABASE}__pre_recovery_{old}"
    other_db = f"analytics__restore_{old}"
    with pg.connect("postgres") as conn:
        for name in (held, connected, future, manual_copy, other_db):
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
    copies = {n for n in _databases(pg) if "__pre_recovery_" in n}
    assert len(copies) == 2  # the first recovery's and the manual one

    admin = pg.url("postgres")
    with restore_lock(admin, held), pg.connect(connected):
        time.sleep(1.1)  # the recovery's stamp (seconds) is after the killed one's
        result, text = _recover_logged({"set_id": PARTITION, "confirm": DATABASE})
    assert result.success, text[-3000:]

    names = _databases(pg)
    assert killed not in names
    assert {held, connected, future, other_db} <= names
    assert copies < names, "a __pre_recovery_ copy was dropped"
    assert len([n for n in names if "__pre_recovery_" in n]) == 3  # + this recovery's
    assert f"dropped {killed}, left by a recovery that did not finish" in text
    assert f"kept {held}: a recovery running elsewhere holds it" in text
    assert f"kept {connected}: 1 session(s) connected" in text
    assert future not in text  # newer than this recovery: not even considered
    after = production_state(production)
    for key in ("tables", "sequences", "partitions", "files"):
        assert after[key] == before[key], key
    store = store_for(backup_env["TWINME_BACKUP_URL"])
    assert store.exists(PARTITION, MANIFEST)
