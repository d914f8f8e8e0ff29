"""Helpers for backup tests: run the job, and restore artifacts with the raw tools."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import redis
from psycopg import sql

from twinme_ops.definitions import build_definitions
from twinme_ops.lib.crypto import Decryptor
from twinme_ops.lib.pgtools import pg_bin
from twinme_ops.lib.store import BackupStore

PARTITION = "2026-11-24"


def run_backup(
    partition: str = PARTITION,
    run_config: dict[str, Any] | None = None,
    instance: dg.DagsterInstance | None = None,
) -> dg.ExecuteInProcessResult:
    """Run nightly_backup_job in process with the definitions the environment selects."""
    job = build_definitions().resolve_job_def("nightly_backup_job")
    return job.execute_in_process(
        partition_key=partition,
        run_config=run_config or {},
        instance=instance or dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )


def force_config(force: bool = True) -> dict[str, Any]:
    ops = ("postgres_backup", "redis_backup", "files_backup")
    return {"ops": {op: {"config": {"force": force}} for op in ops}}


def run_text(instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult) -> str:
    """Everything the run recorded (log lines, errors, metadata), to look for leaked secrets."""
    return "\n".join(repr(entry) for entry in instance.all_logs(result.run_id))


def store_for(url: str) -> BackupStore:
    from dagster_aws.s3 import S3Resource

    return BackupStore(url=url, s3=S3Resource())


def read_manifest(store: BackupStore, set_id: str = PARTITION) -> dict[str, Any]:
    return json.loads(store.get_bytes(set_id, "manifest.json"))


def fetch_plain(
    store: BackupStore, set_id: str, art: dict[str, Any], workdir: Path, key: bytes | None = None
) -> Path:
    """Download a stored artifact, check its sha256, decrypt if needed and ``zstd -d`` it."""
    stored = workdir / art["name"]
    with store.open_reader(set_id, art["name"]) as reader, open(stored, "wb") as out:
        while chunk := reader.read(1 << 20):
            out.write(chunk)
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == art["sha256"]
    assert stored.stat().st_size == art["bytes_out"]
    compressed = stored
    if art.get("encryption"):
        assert key is not None, "artifact is encrypted"
        compressed = workdir / (art["name"].removesuffix(".enc"))
        dec = Decryptor(key)
        with open(stored, "rb") as src, open(compressed, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(dec.update(chunk))
            out.write(dec.finalize())
    plain = workdir / compressed.name.removesuffix(".zst")
    subprocess.run(["zstd", "-q", "-d", "-f", str(compressed), "-o", str(plain)], check=True)
    return plain


def table_digest(url: str, table: str) -> tuple[int, str]:
    """Row count and md5 over the table's rows in a stable order."""
    schema, name = table.split(".", 1)
    with psycopg.connect(url) as conn:
        query = sql.SQL(
            "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) "
            "FROM {}.{} t"
        ).format(sql.Identifier(schema), sql.Identifier(name))
        row = conn.execute(query).fetchone()
    assert row is not None
    return int(row[0]), str(row[1])


def restore_postgres(dump: Path, admin_url: str, dbname: str) -> str:
    """pg_restore into a fresh database; returns its URL."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(dbname)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    url = admin_url.rsplit("/", 1)[0] + f"/{dbname}"
    subprocess.run(
        [pg_bin("pg_restore"), "--no-owner", "--exit-on-error", f"--dbname={url}", str(dump)],
        check=True,
        capture_output=True,
    )
    return url


def redis_value(client: redis.Redis, key: bytes, kind: bytes) -> object:
    """The logical value of a key (DUMP payloads differ after a reload: hash order changes)."""
    if kind == b"string":
        return client.get(key)
    if kind == b"hash":
        return client.hgetall(key)
    if kind == b"list":
        return client.lrange(key, 0, -1)
    if kind == b"set":
        return client.smembers(key)
    if kind == b"zset":
        return client.zrange(key, 0, -1, withscores=True)
    if kind == b"stream":
        return client.xrange(key)
    raise AssertionError(f"unexpected type {kind!r}")


def redis_snapshot_of(client: redis.Redis) -> dict[bytes, tuple[bytes, object, bool]]:
    """key -> (type, value, has TTL) for every key of db 0."""
    out: dict[bytes, tuple[bytes, object, bool]] = {}
    for key in client.scan_iter(count=1000):
        kind: bytes = client.type(key)  # type: ignore[assignment]
        out[key] = (kind, redis_value(client, key, kind), client.pttl(key) > 0)  # type: ignore[operator]
    return out


def tree_of(root: Path) -> dict[str, tuple[str, int, str]]:
    """relative path -> (kind, mode bits, sha256 or link target)."""
    out: dict[str, tuple[str, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            st = p.lstat()
            mode = stat.S_IMODE(st.st_mode)
            if p.is_symlink():
                out[rel] = ("link", 0, os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir", mode, "")
            else:
                out[rel] = ("file", mode, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def extract_tar(tar: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xpf", str(tar), "-C", str(dest)], check=True)


def clean(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
