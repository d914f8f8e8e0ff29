"""PostgreSQL settings: the formulas, then converge/drift on a real PostgreSQL 18."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.support.list_log import ListLog
from twinme_ops.database.postgres.settings.converge import converge_settings
from twinme_ops.database.postgres.settings.declared import (
    SPEC_INSTANCE,
    InstanceResources,
    desired_settings,
)
from twinme_ops.database.postgres.settings.drift import settings_drift
from twinme_ops.database.postgres.settings.live import SettingsError, UnknownSettingError
from twinme_ops.database.postgres.settings.values import normalize
from twinme_ops.sandbox.seed import SeedCounts, SeedReport, default_anchor, seed_postgres
from twinme_ops.sandbox.servers import DATABASE, prepare_database
from twinme_ops.scratch.postgres import PostgresServer

RESTART_ONLY_IN_SPEC = {"max_connections", "shared_buffers", "wal_buffers"}

# ------------------------------------------------------------------------------------------
# formulas (no server)


def test_spec_instance_gives_the_spec_values() -> None:
    desired = desired_settings(SPEC_INSTANCE)
    # database/production-setup.sql, section 2.1 of the specification
    spec = {
        "max_connections": "200",
        "shared_buffers": "256MB",
        "effective_cache_size": "1GB",
        "maintenance_work_mem": "64MB",
        "checkpoint_completion_target": "0.9",
        "wal_buffers": "16MB",
        "default_statistics_target": "100",
        "log_statement": "mod",
        "log_checkpoints": "on",
        "log_connections": "on",
        "log_disconnections": "on",
        "log_lock_waits": "on",
    }
    assert {k: desired[k] for k in spec} == spec
    # The spec writes 1000 (milliseconds, the setting's unit); we write the unit out
    assert normalize(desired["log_min_duration_statement"], "integer", "ms") == 1000
    assert "shared_preload_libraries" not in desired


def test_spec_instance_extras() -> None:
    desired = desired_settings(SPEC_INSTANCE)
    assert desired["random_page_cost"] == "1.1"
    assert desired["effective_io_concurrency"] == "200"
    # (1 GiB - 256MB) / ((200 + 8) * 3) = 1260kB, raised to PGTune's 4MB floor
    assert desired["work_mem"] == "4MB"
    assert desired["max_worker_processes"] == "8"
    assert desired["max_parallel_workers"] == "2"
    assert desired["max_parallel_workers_per_gather"] == "1"
    assert desired["max_parallel_maintenance_workers"] == "1"
    assert (desired["min_wal_size"], desired["max_wal_size"]) == ("1GB", "4GB")


def test_formulas_scale_with_the_instance() -> None:
    big = desired_settings(InstanceResources(8192, 8, "hdd", 100))
    assert big["shared_buffers"] == "2GB"
    assert big["effective_cache_size"] == "8GB"
    assert big["maintenance_work_mem"] == "512MB"
    assert big["wal_buffers"] == "16MB"  # capped
    assert big["random_page_cost"] == "4"
    assert big["effective_io_concurrency"] == "2"
    # (8 GiB - 2 GiB) / ((100 + 8) * 3) in kB
    assert big["work_mem"] == f"{(8 * 1024 - 2 * 1024) * 1024 // 324}kB"
    assert big["max_worker_processes"] == "8"
    assert big["max_parallel_workers"] == "8"
    assert big["max_parallel_workers_per_gather"] == "4"
    assert big["max_parallel_maintenance_workers"] == "4"

    small = desired_settings(InstanceResources(512, 1, "san", 50))
    assert small["shared_buffers"] == "128MB"
    assert small["wal_buffers"] == "8MB"  # shared_buffers / 16
    assert small["effective_io_concurrency"] == "300"
    assert small["random_page_cost"] == "1.1"
    assert small["max_parallel_workers_per_gather"] == "0"
    assert small["work_mem"] == "4MB"

    huge = desired_settings(InstanceResources(256 * 1024, 64, "ssd", 500))
    assert huge["maintenance_work_mem"] == "8GB"  # PGTune's cap
    assert huge["max_worker_processes"] == "64"
    assert huge["max_parallel_workers_per_gather"] == "4"


def test_overrides_win_and_preload_libraries_are_refused() -> None:
    desired = desired_settings(SPEC_INSTANCE, {"work_mem": "16MB", "jit": "off"})
    assert desired["work_mem"] == "16MB"
    assert desired["jit"] == "off"
    with pytest.raises(ValueError, match="pgvector does not need it"):
        desired_settings(SPEC_INSTANCE, {"shared_preload_libraries": "vector"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"storage": "nvme"}, "storage must be one of ssd, hdd, san"),
        ({"memory_mb": 100}, "memory_mb must be an integer >= 256"),
        ({"cpus": 0}, "cpus must be an integer >= 1"),
        ({"max_connections": 0}, "max_connections must be an integer"),
    ],
)
def test_instance_resources_are_validated(kwargs: dict[str, Any], message: str) -> None:
    args: dict[str, Any] = {
        "memory_mb": 1024,
        "cpus": 2,
        "storage": "ssd",
        "max_connections": 200,
    } | kwargs
    with pytest.raises(ValueError, match=message):
        InstanceResources(**args)


@pytest.mark.parametrize(
    ("value", "vartype", "unit", "expected"),
    [
        ("256MB", "integer", "8kB", 32768),
        ("32768", "integer", "8kB", 32768),
        ("7864kB", "integer", "8kB", 983),  # rounded like PostgreSQL
        ("1GB", "integer", "8kB", 131072),
        ("64MB", "integer", "kB", 65536),
        ("4GB", "integer", "MB", 4096),
        ("1000", "integer", "ms", 1000),
        ("1s", "integer", "ms", 1000),
        ("1000ms", "integer", "ms", 1000),
        ("5min", "integer", "s", 300),
        ("-1", "integer", "ms", -1),
        ("0.9", "real", None, 0.9),
        ("on", "bool", None, True),
        ("TRUE", "bool", None, True),
        ("off", "bool", None, False),
        ("MOD", "enum", None, "mod"),
        ("on", "string", None, "on"),
    ],
)
def test_normalize(value: str, vartype: str, unit: str | None, expected: Any) -> None:
    assert normalize(value, vartype, unit) == expected


def test_normalize_rejects_a_unit_of_the_wrong_kind() -> None:
    with pytest.raises(ValueError, match="does not apply"):
        normalize("5s", "integer", "8kB")


# ------------------------------------------------------------------------------------------
# against a real server


@pytest.fixture(scope="module")
def tuned_pg(pg_server: PostgresServer) -> Iterator[PostgresServer]:
    """This module's own server (restarted by the tests) with the TwinMe schema and some rows."""
    prepare_database(pg_server)
    counts = SeedCounts.for_scale(0.005)
    seed_postgres(
        pg_server.url(DATABASE), counts, default_anchor(), SeedReport(scale=0.005, anchor="")
    )
    yield pg_server
    with pg_server.connect() as conn:
        conn.execute("ALTER SYSTEM RESET ALL")


def _reload(conn: psycopg.Connection[Any]) -> None:
    """pg_reload_conf() and wait until this session has re-read the files."""
    row = conn.execute("SELECT pg_conf_load_time()").fetchone()
    assert row is not None
    conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = conn.execute("SELECT pg_conf_load_time()").fetchone()
        if now and now[0] > row[0]:
            return
        time.sleep(0.02)
    raise AssertionError("no reload")


def _converged(pg: PostgresServer, desired: dict[str, str]) -> None:
    """Converge, restarting when a restart-only setting waits (what an operator would do)."""
    with pg.connect(DATABASE) as conn:
        report = converge_settings(conn, desired)
    if report.pending_restart:
        pg.restart()
    with pg.connect(DATABASE) as conn:
        assert settings_drift(conn, desired) == []


def _show(pg: PostgresServer, name: str) -> str:
    with pg.connect(DATABASE) as conn:
        row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
    assert row is not None
    return str(row[0])


def test_converge_reports_pending_restart_until_restarted(tuned_pg: PostgresServer) -> None:
    desired = desired_settings(SPEC_INSTANCE)
    with tuned_pg.connect() as conn:
        conn.execute("ALTER SYSTEM RESET ALL")
    tuned_pg.restart()
    logged = ListLog()
    with tuned_pg.connect(DATABASE) as conn:
        before = settings_drift(conn, desired)
        assert "shared_buffers is 128MB, want 256MB (needs a restart)" in before
        assert "log_statement is none, want mod" in before

        first = converge_settings(conn, desired, logged)
        statements = first.statements()
        assert "ALTER SYSTEM SET \"shared_buffers\" = '256MB'" in statements
        assert "ALTER SYSTEM SET \"log_statement\" = 'mod'" in statements
        assert statements.count("SELECT pg_reload_conf()") == 1
        assert statements[-1] == "SELECT pg_reload_conf()"
        # Values equal to the server's (checkpoint_completion_target 0.9 is PG 18's default)
        assert not any("checkpoint_completion_target" in s for s in statements)
        assert logged == [f"postgres_settings: {s}" for s in statements]
        assert set(first.pending_restart) == RESTART_ONLY_IN_SPEC
        assert "shared_preload_libraries" not in first.pending_restart

        # reloadable settings are live in this session already
        row = conn.execute("SELECT current_setting('log_statement')").fetchone()
        assert row is not None and row[0] == "mod"

        again = converge_settings(conn, desired)
        assert again.changes == []
        assert set(again.pending_restart) == RESTART_ONLY_IN_SPEC
        drift = settings_drift(conn, desired)
        assert sorted(drift) == [
            "max_connections is 100, want 200 (set, pending restart)",
            "shared_buffers is 128MB, want 256MB (set, pending restart)",
            "wal_buffers is 4MB, want 16MB (set, pending restart)",
        ]
    # per-connection settings (log_connections) apply to new sessions
    assert _show(tuned_pg, "log_connections") == "on"

    tuned_pg.restart()  # the operator's restart: the tool never restarts the server
    with tuned_pg.connect(DATABASE) as conn:
        assert settings_drift(conn, desired) == []
        after = converge_settings(conn, desired)
        assert after.changes == [] and after.pending_restart == []
    assert _show(tuned_pg, "shared_buffers") == "256MB"
    assert _show(tuned_pg, "max_connections") == "200"
    assert _show(tuned_pg, "shared_preload_libraries") == ""


def test_changed_setting_is_drift_and_converge_fixes_it(tuned_pg: PostgresServer) -> None:
    desired = desired_settings(SPEC_INSTANCE)
    _converged(tuned_pg, desired)
    with tuned_pg.connect(DATABASE) as conn:
        conn.execute("ALTER SYSTEM SET log_statement = 'all'")
        conn.execute("ALTER SYSTEM SET log_min_duration_statement = 250")
        _reload(conn)
        assert sorted(settings_drift(conn, desired)) == [
            "log_min_duration_statement is 250ms, want 1000ms",
            "log_statement is all, want mod",
        ]
        report = converge_settings(conn, desired)
        assert report.statements() == [
            "ALTER SYSTEM SET \"log_statement\" = 'mod'",
            "ALTER SYSTEM SET \"log_min_duration_statement\" = '1000ms'",
            "SELECT pg_reload_conf()",
        ]
        assert report.pending_restart == []
        assert settings_drift(conn, desired) == []


def test_written_but_not_reloaded_is_drift(tuned_pg: PostgresServer) -> None:
    desired = desired_settings(SPEC_INSTANCE)
    _converged(tuned_pg, desired)
    with tuned_pg.connect(DATABASE) as conn:
        conn.execute("ALTER SYSTEM SET log_lock_waits = off")
        _reload(conn)
        conn.execute("ALTER SYSTEM SET log_lock_waits = on")  # written, never reloaded
        assert settings_drift(conn, desired) == [
            "log_lock_waits is off, want on (set, pending reload)"
        ]
        report = converge_settings(conn, desired)
        assert report.statements() == ["SELECT pg_reload_conf()"]
        assert settings_drift(conn, desired) == []


def test_restart_only_setting_drift(tuned_pg: PostgresServer) -> None:
    desired = desired_settings(SPEC_INSTANCE)
    _converged(tuned_pg, desired)
    with tuned_pg.connect(DATABASE) as conn:
        # Someone lowered it: the server still runs with 256MB, the next restart would not
        conn.execute("ALTER SYSTEM SET shared_buffers = '128MB'")
        _reload(conn)
        assert settings_drift(conn, desired) == [
            "shared_buffers is 256MB, but the configuration files hold 128MB (applied at the "
            "next restart); want 256MB"
        ]
        report = converge_settings(conn, desired)
        assert report.statements() == [
            "ALTER SYSTEM SET \"shared_buffers\" = '256MB'",
            "SELECT pg_reload_conf()",
        ]
        assert report.pending_restart == []
        assert settings_drift(conn, desired) == []

    # A new desired value for a restart-only setting: pending, and drift, until the restart
    wanted = desired_settings(SPEC_INSTANCE, {"shared_buffers": "192MB"})
    with tuned_pg.connect(DATABASE) as conn:
        report = converge_settings(conn, wanted)
        assert report.statements() == [
            "ALTER SYSTEM SET \"shared_buffers\" = '192MB'",
            "SELECT pg_reload_conf()",
        ]
        assert report.pending_restart == ["shared_buffers"]
        assert settings_drift(conn, wanted) == [
            "shared_buffers is 256MB, want 192MB (set, pending restart)"
        ]
        assert converge_settings(conn, wanted).changes == []
    tuned_pg.restart()
    with tuned_pg.connect(DATABASE) as conn:
        assert settings_drift(conn, wanted) == []
    _converged(tuned_pg, desired)
    assert _show(tuned_pg, "shared_buffers") == "256MB"


def test_database_level_override_is_reported_not_fought(tuned_pg: PostgresServer) -> None:
    desired = desired_settings(SPEC_INSTANCE)
    _converged(tuned_pg, desired)
    with tuned_pg.connect(DATABASE) as conn:
        conn.execute(f"ALTER DATABASE {DATABASE} SET log_min_duration_statement = 5000")
    try:
        with tuned_pg.connect(DATABASE) as conn:
            drift = settings_drift(conn, desired)
            assert drift == [
                "log_min_duration_statement is 5s, want 1000ms: overridden by "
                "ALTER DATABASE ... SET, which wins over ALTER SYSTEM"
            ]
            report = converge_settings(conn, desired)
            assert report.changes == []
            assert any("ALTER DATABASE" in n for n in report.notes)
    finally:
        with tuned_pg.connect(DATABASE) as conn:
            conn.execute(f"ALTER DATABASE {DATABASE} RESET log_min_duration_statement")


def test_unknown_setting_is_a_clear_error(tuned_pg: PostgresServer) -> None:
    with tuned_pg.connect(DATABASE) as conn:
        with pytest.raises(
            UnknownSettingError, match=r"shared_bufers \(did you mean shared_buffers"
        ):
            converge_settings(conn, {"work_mem": "8MB", "shared_bufers": "256MB"})
        with pytest.raises(UnknownSettingError):
            settings_drift(conn, {"shared_bufers": "256MB"})
        # nothing was written
        row = conn.execute(
            "SELECT count(*) FROM pg_file_settings WHERE name IN ('work_mem', 'shared_bufers')"
        ).fetchone()
        assert row is not None and row[0] == 0


def test_invalid_value_is_a_clear_error(tuned_pg: PostgresServer) -> None:
    with (
        tuned_pg.connect(DATABASE) as conn,
        pytest.raises(SettingsError, match="cannot set log_statement to 'everything'"),
    ):
        converge_settings(conn, {"log_statement": "everything"})


def test_converge_refuses_preload_libraries_and_transactions(tuned_pg: PostgresServer) -> None:
    with (
        tuned_pg.connect(DATABASE) as conn,
        pytest.raises(ValueError, match="pgvector does not need it"),
    ):
        converge_settings(conn, {"shared_preload_libraries": "vector"})
    with (
        tuned_pg.connect(DATABASE, autocommit=False) as conn,
        pytest.raises(SettingsError, match="autocommit"),
    ):
        converge_settings(conn, {"work_mem": "4MB"})


def test_spec_preload_trap_is_noted(tuned_pg: PostgresServer) -> None:
    desired = desired_settings(SPEC_INSTANCE)
    _converged(tuned_pg, desired)
    with tuned_pg.connect(DATABASE) as conn:
        # What the spec's script does; pgvector works without it
        conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'vector'")
    tuned_pg.restart()
    try:
        with tuned_pg.connect(DATABASE) as conn:
            report = converge_settings(conn, desired)
            assert report.changes == []
            assert "shared_preload_libraries" not in report.pending_restart
            assert any("pgvector does not need it" in n for n in report.notes)
    finally:
        with tuned_pg.connect(DATABASE) as conn:
            conn.execute("ALTER SYSTEM RESET shared_preload_libraries")
        tuned_pg.restart()
