"""database_tuning_job end to end: converge, converge again (no change), drift, converge back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from twinme_ops.definitions import build_definitions
from twinme_ops.sandbox.seed import SeedCounts, SeedReport, default_anchor, seed_postgres
from twinme_ops.sandbox.servers import DATABASE, prepare_database
from twinme_ops.scratch.postgres import PostgresServer
from twinme_ops.scratch.redis import RedisServer

REDIS_PASSWORD = "Tuning-Redis-Pass-9"
PG_ASSETS = [
    "postgres_extensions",
    "postgres_settings",
    "postgres_indexes",
    "session_events_partitions",
    "replication_publication",
    "row_level_security",
]


@pytest.fixture(scope="module")
def tuning_servers(server_tmp_root: Path) -> Iterator[dict[str, Any]]:
    pg = PostgresServer.start(server_tmp_root / "tuning-pg")
    rd = RedisServer.start(server_tmp_root / "tuning-redis", password=REDIS_PASSWORD)
    try:
        prepare_database(pg)
        anchor = default_anchor()
        report = SeedReport(scale=0.02, anchor=anchor.isoformat())
        seed_postgres(pg.url(DATABASE), SeedCounts.for_scale(0.02), anchor, report)
        with pg.connect() as conn:
            conn.execute("DROP DATABASE IF EXISTS not_twinme")
            conn.execute("CREATE DATABASE not_twinme")
        yield {"pg": pg, "redis": rd}
    finally:
        rd.stop()
        pg.stop(mode="immediate")


@pytest.fixture
def tuning_env(
    tuning_servers: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    monkeypatch.setenv("DATABASE_URL", tuning_servers["pg"].url(DATABASE))
    monkeypatch.setenv("REDIS_URL", tuning_servers["redis"].url(with_password=True))
    monkeypatch.setenv("REDIS_PASSWORD", REDIS_PASSWORD)
    monkeypatch.setenv("TWINME_REDIS_CONF", str(tmp_path / "redis" / "production.conf"))
    monkeypatch.delenv("SLACK_WEBHOOK_URL", raising=False)
    return {**tuning_servers, "conf": tmp_path / "redis" / "production.conf"}


def run_tuning() -> dg.ExecuteInProcessResult:
    job = build_definitions().resolve_job_def("database_tuning_job")
    return job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)


def changes(result: dg.ExecuteInProcessResult) -> dict[str, int]:
    out: dict[str, int] = {}
    for name in [*PG_ASSETS, "redis_configuration"]:
        mats = result.asset_materializations_for_node(name)
        if mats:
            out[name] = int(mats[0].metadata["changes"].value)  # type: ignore[arg-type]
    return out


def checks(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    return {
        e.asset_check_evaluation_data.asset_key.path[-1]: e.asset_check_evaluation_data
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    }


def test_converge_then_no_change_then_drift_and_back(tuning_env: dict[str, Any]) -> None:
    first = run_tuning()
    assert first.success
    assert changes(first)["postgres_indexes"] >= 4
    assert changes(first)["row_level_security"] > 0
    assert tuning_env["conf"].stat().st_mode & 0o777 == 0o600
    assert REDIS_PASSWORD in tuning_env["conf"].read_text()

    second = run_tuning()
    assert second.success
    assert all(n == 0 for n in changes(second).values()), changes(second)
    results = checks(second)
    for name in [*PG_ASSETS, "redis_configuration"]:
        if name == "postgres_settings":
            continue  # restart-only settings stay pending on a server the tool never restarts
        assert results[name].passed, (name, results[name].description)
    settings = results["postgres_settings"]
    assert settings.severity == dg.AssetCheckSeverity.WARN
    assert "shared_buffers" in settings.description and "restart" in settings.description
    assert results["redis_configuration"].metadata["method"].value == "CONFIG GET"

    # drift: an index dropped, a table out of the publication, RLS disabled
    with psycopg.connect(tuning_env["pg"].url(DATABASE), autocommit=True) as conn:
        conn.execute("DROP INDEX idx_sessions_user_id_start_time")
        conn.execute("ALTER PUBLICATION twinme_pub DROP TABLE sessions")
        conn.execute("ALTER TABLE messages DISABLE ROW LEVEL SECURITY")
    third = run_tuning()
    assert third.success
    assert changes(third)["postgres_indexes"] >= 1
    assert changes(third)["replication_publication"] >= 1
    assert changes(third)["row_level_security"] >= 1
    fourth = run_tuning()
    assert all(n == 0 for n in changes(fourth).values()), changes(fourth)


def test_database_without_twinme_tables_fails_only_the_affected_assets(
    tuning_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", tuning_env["pg"].url("not_twinme"))
    result = run_tuning()
    assert not result.success
    failed = {e.step_key for e in result.all_events if e.is_step_failure}
    assert {"postgres_indexes", "row_level_security", "replication_publication"} <= failed
    assert "postgres_settings" not in failed and "redis_configuration" not in failed
    messages = [
        e.step_failure_data.error.message  # type: ignore[union-attr]
        for e in result.all_events
        if e.is_step_failure and e.step_key == "row_level_security"
    ]
    assert "Fix" in messages[0] or "fix" in messages[0]


def test_heavy_database_work_shares_one_pool() -> None:
    defs = build_definitions()
    pools = {
        name: defs.resolve_assets_def(name).op.pool for name in [*PG_ASSETS, "postgres_backup"]
    }
    assert set(pools.values()) == {"twinme_database"}, pools
