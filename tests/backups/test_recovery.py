"""recover_job end to end: back up, damage production, recover, and find it exactly as it was."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import dagster as dg
import psycopg
import pytest
import redis
from kubernetes.client import V1Deployment

from tests.support.backup_helpers import PARTITION, run_backup, store_for
from tests.support.compare import redis_snapshot_of, table_digest, tree_of
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.backups import recovery as recovery_lib
from twinme_ops.backups.manifest import MANIFEST
from twinme_ops.definitions import build_definitions
from twinme_ops.sandbox.seed import seed
from twinme_ops.sandbox.servers import DATABASE, prepare_database
from twinme_ops.scratch.postgres import PostgresServer
from twinme_ops.scratch.redis import RedisServer

PROD_REDIS_PASSWORD = "Prod-Redis-Secret-77"


@pytest.fixture
def production(
    server_tmp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, backup_env
) -> Iterator[dict[str, Any]]:
    """A production-like target: its own PostgreSQL, a hardened Redis (password, AOF, FLUSHALL
    and CONFIG renamed away) and a files directory, seeded with TwinMe data."""
    pg = PostgresServer.start(server_tmp / "prod-pg")
    rd = RedisServer.start(
        server_tmp / "prod-redis",
        password=PROD_REDIS_PASSWORD,
        extra_config=[
            "appendonly yes",
            'rename-command FLUSHALL ""',
            'rename-command FLUSHDB ""',
            'rename-command CONFIG ""',
            'rename-command KEYS ""',
        ],
    )
    files = tmp_path / "storage"
    files.mkdir()
    try:
        prepare_database(pg)
        seed(pg.url(DATABASE), rd.url(with_password=True), files, 0.02)
        monkeypatch.setenv("DATABASE_URL", pg.url(DATABASE))
        monkeypatch.setenv("REDIS_URL", rd.url(with_password=True))
        monkeypatch.setenv("TWINME_FILES_DIR", str(files))
        yield {"pg": pg, "redis": rd, "files": files, "db_url": pg.url(DATABASE)}
    finally:
        rd.stop()
        pg.stop(mode="immediate")


def _state(prod: dict[str, Any]) -> dict[str, Any]:
    """Everything recovery must bring back: rows (vectors included), sequences, partitions,
    every Redis key with type, value and TTL, every file with content and mode."""
    url = prod["db_url"]
    with psycopg.connect(url) as conn:
        tables = [
            f"{r[0]}.{r[1]}"
            for r in conn.execute(
                "SELECT schemaname, tablename FROM pg_tables "
                "WHERE schemaname = 'public' ORDER BY 1, 2"
            ).fetchall()
        ]
        sequences = conn.execute(
            "SELECT sequencename, last_value FROM pg_sequences ORDER BY 1"
        ).fetchall()
        partitions = conn.execute(
            "SELECT inhrelid::regclass::text FROM pg_inherits ORDER BY 1"
        ).fetchall()
    client = redis.Redis.from_url(prod["redis"].url(with_password=True))
    return {
        "tables": {t: table_digest(url, t) for t in tables},
        "sequences": sequences,
        "partitions": partitions,
        "redis": redis_snapshot_of(client),
        "files": tree_of(prod["files"]),
    }


def _damage(prod: dict[str, Any]) -> None:
    with psycopg.connect(prod["db_url"], autocommit=True) as conn:
        conn.execute("INSERT INTO users (email, display_name) VALUES ('new@x.io', 'New')")
        conn.execute("UPDATE messages SET content = 'tampered' WHERE id % 7 = 0")
        conn.execute("DELETE FROM document_chunks WHERE id % 3 = 0")
        conn.execute("DROP TABLE session_events CASCADE")
        conn.execute("CREATE TABLE leftover (i int)")
    client = redis.Redis.from_url(prod["redis"].url(with_password=True))
    client.set("cache:intruder", "x")
    for key in list(client.scan_iter(match="session:*", count=100))[:5]:
        client.delete(key)
    files: Path = prod["files"]
    victims = [p for p in files.rglob("*") if p.is_file() and not p.is_symlink()][:3]
    for p in victims:
        p.unlink()
    (files / "new-upload.bin").write_bytes(b"not in the backup")


def _recover(config: dict[str, Any], instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    job = build_definitions().resolve_job_def("recover_job")
    return job.execute_in_process(
        run_config={"ops": {"recovery_preflight": {"config": config}}},
        instance=instance,
        raise_on_error=False,
    )


def test_recovery_brings_production_back_exactly(
    production: dict[str, Any], backup_env, slack_receiver: SlackReceiver
) -> None:
    assert run_backup().success
    before = _state(production)
    assert before["partitions"] and before["sequences"]
    _damage(production)
    assert _state(production) != before

    instance = dg.DagsterInstance.ephemeral()
    result = _recover({"set_id": "latest-verified", "confirm": DATABASE}, instance)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    after = _state(production)
    for key in ("tables", "sequences", "partitions", "files"):
        assert after[key] == before[key], key
    assert after["redis"].keys() == before["redis"].keys()
    for k, (kind, value, has_ttl) in before["redis"].items():
        assert after["redis"][k][:2] == (kind, value) and after["redis"][k][2] == has_ttl, k

    store = store_for(backup_env["TWINME_BACKUP_URL"])
    safety = [s for s in store.list_sets() if s.startswith("safety-")]
    assert len(safety) == 1 and store.exists(safety[0], MANIFEST)
    assert any(f"recovery completed for backup: {PARTITION}" in m for m in slack_receiver.messages)
    assert PROD_REDIS_PASSWORD not in "\n".join(slack_receiver.messages)


@pytest.mark.parametrize("confirm", ["", "twinme_prod", "TWINME"])
def test_recovery_without_the_right_confirm_touches_nothing(
    production: dict[str, Any], backup_env, confirm: str
) -> None:
    assert run_backup().success
    _damage(production)
    damaged = _state(production)
    instance = dg.DagsterInstance.ephemeral()
    result = _recover({"set_id": PARTITION, "confirm": confirm}, instance)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "recovery_preflight"
    message = failure.step_failure_data.error.message  # type: ignore[union-attr]
    assert "confirm must equal the target database name ('twinme')" in message
    assert "Nothing was touched" in message
    assert _state(production) == damaged
    store = store_for(backup_env["TWINME_BACKUP_URL"])
    assert not [s for s in store.list_sets() if s.startswith("safety-")]


def test_recovery_refuses_a_password_in_run_config(production: dict[str, Any], backup_env) -> None:
    assert run_backup().success
    result = _recover(
        {
            "set_id": PARTITION,
            "confirm": DATABASE,
            "target_redis_url": f"redis://:{PROD_REDIS_PASSWORD}@127.0.0.1:6379/0",
        },
        dg.DagsterInstance.ephemeral(),
    )
    assert not result.success
    assert PROD_REDIS_PASSWORD not in "\n".join(str(e.message) for e in result.all_events)


def test_recovery_scales_the_api_down_and_back_on_kubernetes(
    production: dict[str, Any],
    backup_env,
    deployment_controller,
    k8s_emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a cluster configured, the API is at 0 replicas while data is restored, then back
    at the count it had, with the rollout waited for like `kubectl rollout status`."""
    from tests.support.k8s_emulator import apps_api

    kubeconfig, _ = k8s_emulator
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert run_backup().success
    api = apps_api(kubeconfig)

    def deployment() -> V1Deployment:
        return cast(V1Deployment, api.read_namespaced_deployment("twinme-api", "twinme-prod"))

    assert deployment().spec.replicas == 3  # type: ignore[union-attr]

    replicas_seen: list[int] = []
    real_restore = recovery_lib.restore_postgres

    def spy(*args: Any, **kwargs: Any) -> None:
        replicas_seen.append(deployment().spec.replicas)  # type: ignore[union-attr]
        real_restore(*args, **kwargs)

    monkeypatch.setattr("twinme_ops.defs.recovery.jobs.restore_postgres", spy)
    result = _recover({"set_id": PARTITION, "confirm": DATABASE}, dg.DagsterInstance.ephemeral())
    assert result.success
    assert replicas_seen == [0]  # scaled down while PostgreSQL was restored
    dep = deployment()
    assert dep.spec.replicas == 3 and dep.status.available_replicas == 3  # type: ignore[union-attr]


def test_a_failed_step_says_what_was_restored_and_where_to_return(
    production: dict[str, Any],
    backup_env,
    monkeypatch: pytest.MonkeyPatch,
    slack_receiver: SlackReceiver,
) -> None:
    assert run_backup().success

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Redis went away during the replay")

    monkeypatch.setattr("twinme_ops.defs.recovery.jobs.restore_redis", broken)
    result = _recover({"set_id": PARTITION, "confirm": DATABASE}, dg.DagsterInstance.ephemeral())
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "recovery_restore"
    message = failure.step_failure_data.error.message  # type: ignore[union-attr]
    assert "Redis went away" in message
    assert "restored: postgres; not restored: redis, files" in message
    assert "safety backup of the pre-recovery state: set safety-" in message
    (alert,) = [m for m in slack_receiver.messages if "FAILED" in m]
    assert "recovery restore" in alert and "Restored: postgres\n" in alert
    assert "Not restored: redis, files\n" in alert and "Safety backup: set safety-" in alert
