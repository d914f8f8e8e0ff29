"""Helpers for backup tests: run the job, and restore artifacts with the raw tools."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from tests.support.slack_receiver import SlackReceiver
from twinme_ops.backups.crypto import Decryptor
from twinme_ops.backups.store.base import BackupStore
from twinme_ops.backups.window import TIMEZONE, frozen_backup_clock
from twinme_ops.common.pgtools import pg_bin
from twinme_ops.definitions import build_definitions

PARTITION = "2026-11-24"


def run_backup(
    partition: str = PARTITION,
    run_config: dict[str, Any] | None = None,
    instance: dg.DagsterInstance | None = None,
) -> dg.ExecuteInProcessResult:
    """Run nightly_backup_job in process with the definitions the environment selects.

    The backup's clock reads 02:00 (Europe/Paris) on ``partition``'s day, when the nightly
    schedule takes it: a backup can only be taken of the present, and tests need sets of
    several days.
    """
    job = build_definitions().resolve_job_def("nightly_backup_job")
    with frozen_backup_clock(nightly_tick(partition)):
        return job.execute_in_process(
            partition_key=partition,
            run_config=run_config or {},
            instance=instance or dg.DagsterInstance.ephemeral(),
            raise_on_error=False,
        )


def nightly_tick(partition: str) -> datetime:
    """02:00 Europe/Paris on ``partition``'s day: when nightly_backup_schedule takes its set."""
    return datetime.combine(date.fromisoformat(partition), time(2, 0), tzinfo=TIMEZONE)


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
    store: BackupStore,
    set_id: str,
    art: dict[str, Any],
    workdir: Path,
    key: bytes | Path | None = None,
) -> Path:
    """Download a stored artifact, check its sha256, decrypt if needed and ``zstd -d`` it.

    ``key``: the AES-256-GCM key, or the path of an age identity file (then the ``age`` CLI
    decrypts, as a person would by hand)."""
    stored = workdir / art["name"]
    with store.open_reader(set_id, art["name"]) as reader, open(stored, "wb") as out:
        while chunk := reader.read(1 << 20):
            out.write(chunk)
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == art["sha256"]
    assert stored.stat().st_size == art["bytes_out"]
    compressed = stored
    if art.get("encryption") and isinstance(key, Path):
        assert art["encryption"]["algorithm"] == "age"
        compressed = workdir / (art["name"].removesuffix(".age"))
        subprocess.run(
            ["age", "-d", "-i", str(key), "-o", str(compressed), str(stored)], check=True
        )
    elif art.get("encryption"):
        assert isinstance(key, bytes), "artifact is encrypted"
        compressed = workdir / (art["name"].removesuffix(".enc"))
        dec = Decryptor(key)
        with open(stored, "rb") as src, open(compressed, "wb") as out:
            while chunk := src.read(1 << 20):
                out.write(dec.update(chunk))
            out.write(dec.finalize())
    plain = workdir / compressed.name.removesuffix(".zst")
    subprocess.run(["zstd", "-q", "-d", "-f", str(compressed), "-o", str(plain)], check=True)
    return plain


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


def extract_tar(tar: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "-xpf", str(tar), "-C", str(dest)], check=True)


def clean(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


ENV_VARS = (
    "DATABASE_URL",
    "REDIS_URL",
    "TWINME_FILES_DIR",
    "TWINME_BACKUP_URL",
    "TWINME_BACKUP_ENCRYPTION_KEY",
    "TWINME_BACKUP_AGE_RECIPIENTS",
    "TWINME_BACKUP_AGE_IDENTITY",
    "TWINME_BACKUP_AGE_IDENTITY_FILE",
    "SLACK_WEBHOOK_URL",
    "TWINME_ENV",
)


@pytest.fixture
def backup_env(
    sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slack_receiver: SlackReceiver
) -> Iterator[dict[str, str]]:
    """The local environment on the shared sandbox, with a fresh local store and Slack receiver."""
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    env = {
        "TWINME_HOME": str(sandbox.home),
        "TWINME_BACKUP_URL": f"file://{tmp_path}/backups",
        "SLACK_WEBHOOK_URL": slack_receiver.url,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield env


def run_drill_job(
    set_id: str = "", instance: dg.DagsterInstance | None = None
) -> dg.ExecuteInProcessResult:
    job = build_definitions().resolve_job_def("restore_drill_job")
    config = {"ops": {"restore_drill_op": {"config": {"set_id": set_id}}}} if set_id else {}
    return job.execute_in_process(
        run_config=config, instance=instance or dg.DagsterInstance.ephemeral(), raise_on_error=False
    )


def damage_object(store: BackupStore, set_id: str, name: str, damage: str) -> None:
    """Damage a stored object as storage does: a bit flipped, its tail lost, or junk added."""
    stored = bytearray(store.get_bytes(set_id, name))
    if damage == "flip":
        stored[len(stored) // 2] ^= 0x04
    elif damage == "truncate":
        del stored[-100:]
    elif damage == "append":
        stored += b"\x00" * 10
    else:
        raise ValueError(f"unknown damage {damage!r}: flip, truncate or append")
    store.put_bytes(set_id, name, bytes(stored))
