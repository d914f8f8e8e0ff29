"""A production-like target for recovery tests: its own PostgreSQL, a hardened Redis and a files
directory, seeded with TwinMe data; what recovery must bring back, and how tests damage it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
import redis

from tests.support.compare import redis_snapshot_of, table_digest, tree_of
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


def production_state(prod: dict[str, Any]) -> dict[str, Any]:
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


def damage(prod: dict[str, Any]) -> None:
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


def recover(config: dict[str, Any], instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    job = build_definitions().resolve_job_def("recover_job")
    return job.execute_in_process(
        run_config={"ops": {"recovery_preflight": {"config": config}}},
        instance=instance,
        raise_on_error=False,
    )
