"""nightly_backup_job end to end on real servers: every artifact restores with the raw tools."""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import redis

from tests.support.backup_helpers import (
    PARTITION,
    extract_tar,
    fetch_plain,
    force_config,
    nightly_tick,
    read_manifest,
    restore_postgres,
    run_backup,
    run_text,
    store_for,
)
from tests.support.compare import redis_snapshot_of, table_digest, tree_of
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.backups.window import frozen_backup_clock
from twinme_ops.defs.backups.assets import backup_partitions
from twinme_ops.scratch.redis import RedisServer


def _verify_restores(sandbox, store_url: str, workdir: Path, key: bytes | None = None) -> dict:
    """Restore each artifact with pg_restore / redis-server / tar and compare with the source."""
    store = store_for(store_url)
    manifest = read_manifest(store)
    arts = manifest["artifacts"]
    assert set(arts) == {"globals", "postgres", "redis", "files"}

    # PostgreSQL's roles: a psql script creating every role of the source, no password hash
    script = fetch_plain(store, PARTITION, arts["globals"], workdir, key).read_text()
    with psycopg.connect(sandbox.database_url) as conn:
        roles = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_'")}
    assert set(arts["globals"]["source"]["roles"]) == roles
    for role in roles:
        assert f"CREATE ROLE {role};" in script or f'CREATE ROLE "{role}";' in script
    assert "PASSWORD" not in script and not arts["globals"]["source"]["passwords"]

    # PostgreSQL: pg_restore into a fresh database, then table for table, row for row
    dump = fetch_plain(store, PARTITION, arts["postgres"], workdir, key)
    restored_url = restore_postgres(dump, sandbox.database_url, "restore_check")
    tables = arts["postgres"]["source"]["tables"]
    assert "public.messages" in tables and tables["public.messages"] > 0
    for table, count in tables.items():
        dst = table_digest(restored_url, table)
        assert dst[0] == count, table
        if table != "twinme_ops.heartbeat":  # written every few seconds since the dump
            assert table_digest(sandbox.database_url, table) == dst, table

    # Redis: a scratch redis-server loads the RDB; key for key, value for value
    rdb = fetch_plain(store, PARTITION, arts["redis"], workdir, key)
    scratch = RedisServer.start(workdir / "redis-scratch", rdb_file=rdb)
    try:
        source = redis.Redis.from_url(sandbox.redis_url)
        restored = redis.Redis.from_url(scratch.url())
        src_keys, dst_keys = redis_snapshot_of(source), redis_snapshot_of(restored)
        assert src_keys == dst_keys
        assert len(dst_keys) == arts["redis"]["source"]["total_keys"]
        types = {t for t, _, _ in dst_keys.values()}
        assert {b"string", b"hash", b"list", b"set", b"zset", b"stream"} <= types
        assert any(has_ttl for _, _, has_ttl in dst_keys.values())
    finally:
        scratch.stop()

    # Files: tar extraction; path for path, byte for byte, modes and symlinks kept
    tar = fetch_plain(store, PARTITION, arts["files"], workdir, key)
    extract_tar(tar, workdir / "files")
    assert tree_of(workdir / "files") == tree_of(sandbox.files_dir)
    files_src = arts["files"]["source"]
    assert files_src["files"] == sum(
        1 for kind, _, _ in tree_of(sandbox.files_dir).values() if kind == "file"
    )
    assert files_src["symlinks"] >= 1
    return manifest


def test_backup_restores_with_raw_tools_local(
    sandbox, backup_env, tmp_path: Path, slack_receiver: SlackReceiver
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    result = run_backup(instance=instance)
    assert result.success
    manifest = _verify_restores(sandbox, backup_env["TWINME_BACKUP_URL"], tmp_path)

    set_dir = tmp_path / "backups" / PARTITION
    names = sorted(p.name for p in set_dir.iterdir())
    # the run's own names; its component records are folded into the manifest, then removed
    run = result.run_id
    assert names == sorted(
        ["manifest.json", "drill.json"]
        + [f"postgres.{run}.dump.zst", f"redis.{run}.rdb.zst", f"files.{run}.tar.zst"]
        + [f"globals.{run}.sql.zst"]
    )
    assert manifest["run_id"] == run
    assert {a["name"] for a in manifest["artifacts"].values()} <= set(names)
    for art in manifest["artifacts"].values():
        assert art["compression"]["codec"] == "zstd"
        assert art["encryption"] is None
        assert art["bytes_in"] > 0 and art["duration_s"] >= 0
    assert "pg_dump (PostgreSQL) 18" in manifest["artifacts"]["postgres"]["tool"]["pg_dump"]

    # Metadata a person reads in the UI
    mat = result.asset_materializations_for_node("backup_set")[0]
    assert mat.metadata["total_bytes"].value == manifest["total_bytes"]
    pg_mat = result.asset_materializations_for_node("postgres_backup")[0]
    for key in ("bytes_in", "bytes_out", "compression_ratio", "duration_s", "throughput_mb_s"):
        assert key in pg_mat.metadata
    assert (
        pg_mat.metadata["rows_total"].value
        == manifest["artifacts"]["postgres"]["source"]["total_rows"]
    )

    # The success message the spec sends, with the size
    assert len(slack_receiver.messages) == 1
    assert "TwinMe backup completed successfully" in slack_receiver.messages[0]
    assert PARTITION in slack_receiver.messages[0] and "MB" in slack_receiver.messages[0]
    assert "secrettoken" not in run_text(instance, result)


def test_backup_restores_with_raw_tools_s3(
    sandbox, backup_env, s3_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"s3://{s3_bucket}/twinme/nightly"
    monkeypatch.setenv("TWINME_BACKUP_URL", url)
    result = run_backup()
    assert result.success
    _verify_restores(sandbox, url, tmp_path)

    import boto3

    s3 = boto3.client("s3")
    listed = s3.list_objects_v2(Bucket=s3_bucket, Prefix=f"twinme/nightly/{PARTITION}/")
    keys = sorted(o["Key"].rsplit("/", 1)[1] for o in listed.get("Contents", []))
    dump = f"postgres.{result.run_id}.dump.zst"
    assert "manifest.json" in keys and dump in keys
    head = s3.head_object(Bucket=s3_bucket, Key=f"twinme/nightly/{PARTITION}/{dump}")
    assert head["ServerSideEncryption"] == "AES256"


def test_encrypted_backup_restores_and_never_shows_the_key(
    sandbox, backup_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = os.urandom(32)
    key = base64.b64encode(raw).decode()
    monkeypatch.setenv("TWINME_BACKUP_ENCRYPTION_KEY", key)
    instance = dg.DagsterInstance.ephemeral()
    result = run_backup(instance=instance)
    assert result.success
    manifest = _verify_restores(sandbox, backup_env["TWINME_BACKUP_URL"], tmp_path, key=raw)
    for art in manifest["artifacts"].values():
        assert art["name"].endswith(".zst.enc")
        assert art["encryption"]["algorithm"] == "AES-256-GCM"
        assert art["encryption"]["key_id"]
    name = manifest["artifacts"]["postgres"]["name"]
    assert name == f"postgres.{result.run_id}.dump.zst.enc"
    stored = (tmp_path / "backups" / PARTITION / name).read_bytes()
    assert not stored.startswith(b"\x28\xb5\x2f\xfd")  # not a readable zstd frame
    text = run_text(instance, result) + json.dumps(manifest)
    assert key not in text


def test_malformed_key_is_rejected_before_any_work(
    sandbox, backup_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = "c2hvcnQta2V5LXRoYXQtaXMtbm90LTMyLWJ5dGVz"  # valid base64, wrong length
    monkeypatch.setenv("TWINME_BACKUP_ENCRYPTION_KEY", bad)
    instance = dg.DagsterInstance.ephemeral()
    result = run_backup(instance=instance)
    assert not result.success
    text = run_text(instance, result)
    assert "TWINME_BACKUP_ENCRYPTION_KEY" in text
    assert bad not in text
    assert not (tmp_path / "backups" / PARTITION).exists()


def _failure_text(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(
        str(e.step_failure_data.error.message)  # type: ignore[union-attr]
        for e in result.all_events
        if e.is_step_failure
    )


@pytest.mark.parametrize(
    "case",
    [
        "postgres_wrong_password",
        "postgres_unreachable",
        "redis_unreachable",
        "redis_wrong_password",
        "files_missing",
        "store_not_writable",
        "s3_bucket_missing",
    ],
)
def test_failure_fails_the_run_with_fix_and_no_manifest(
    case: str,
    sandbox,
    backup_env,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    slack_receiver: SlackReceiver,
    request: pytest.FixtureRequest,
) -> None:
    secret = "Sup3r-Secret-pw"
    store_url = backup_env["TWINME_BACKUP_URL"]
    if case == "postgres_wrong_password":
        pw_server = request.getfixturevalue("pg_password_server")
        monkeypatch.setenv(
            "DATABASE_URL", f"postgresql://postgres:{secret}@127.0.0.1:{pw_server.port}/postgres"
        )
        label, step = "PostgreSQL", "postgres_backup"
    elif case == "postgres_unreachable":
        monkeypatch.setenv("DATABASE_URL", f"postgresql://postgres:{secret}@127.0.0.1:1/twinme")
        label, step = "PostgreSQL", "postgres_backup"
    elif case == "redis_unreachable":
        monkeypatch.setenv("REDIS_URL", f"redis://:{secret}@127.0.0.1:1/0")
        label, step = "Redis", "redis_backup"
    elif case == "redis_wrong_password":
        server = RedisServer.start(tmp_path / "redis-pw", password="the-right-one-123")
        request.addfinalizer(server.stop)
        monkeypatch.setenv("REDIS_URL", f"redis://:{secret}@127.0.0.1:{server.port}/0")
        label, step = "Redis", "redis_backup"
    elif case == "files_missing":
        monkeypatch.setenv("TWINME_FILES_DIR", str(tmp_path / "no-such-dir"))
        label, step = "file storage", "files_backup"
    elif case == "store_not_writable":
        (tmp_path / "afile").write_text("not a directory")
        store_url = f"file://{tmp_path}/afile/backups"
        monkeypatch.setenv("TWINME_BACKUP_URL", store_url)
        label, step = "PostgreSQL", "postgres_backup"  # every component fails; each is named
    else:
        request.getfixturevalue("s3_server")
        store_url = f"s3://no-such-bucket-{os.getpid()}/twinme"
        monkeypatch.setenv("TWINME_BACKUP_URL", store_url)
        label, step = "PostgreSQL", "postgres_backup"

    instance = dg.DagsterInstance.ephemeral()
    result = run_backup(instance=instance)
    assert not result.success
    failed = {e.step_key for e in result.all_events if e.is_step_failure}
    assert step in failed
    message = _failure_text(result)
    assert label in message and "Fix:" in message
    # No manifest, no partial artifact of the failed component
    if case not in ("store_not_writable", "s3_bucket_missing"):
        store = store_for(store_url)
        assert not store.exists(PARTITION, "manifest.json")
        component = step.removesuffix("_backup")
        leftovers = store.list_artifacts(PARTITION) if PARTITION in store.list_sets() else {}
        assert not [n for n in leftovers if n.startswith(component)]
    # Slack names the failed component; no secret anywhere
    alerts = [m for m in slack_receiver.messages if "FAILED" in m]
    assert any(f"component: {label}" in m for m in alerts), slack_receiver.messages
    everything = run_text(instance, result) + "\n".join(slack_receiver.messages)
    assert secret not in everything
    assert "secrettoken" not in everything


def test_rerun_refuses_complete_set_unless_forced_and_replaces_incomplete(
    sandbox, backup_env, tmp_path: Path
) -> None:
    assert run_backup().success
    store = store_for(backup_env["TWINME_BACKUP_URL"])
    first = read_manifest(store)

    again = run_backup()
    assert not again.success
    assert "already complete" in _failure_text(again) and "force: true" in _failure_text(again)
    assert read_manifest(store) == first

    forced = run_backup(run_config=force_config())
    assert forced.success
    assert read_manifest(store)["run_id"] != first["run_id"]

    store.delete(PARTITION, "manifest.json")  # an incomplete set (a crash before the manifest)
    replaced = run_backup()
    assert replaced.success
    assert store.exists(PARTITION, "manifest.json")


def test_progress_is_logged(sandbox, backup_env) -> None:
    instance = dg.DagsterInstance.ephemeral()
    cfg = {"ops": {"postgres_backup": {"config": {"progress_interval_s": 0.001}}}}
    result = run_backup(run_config=cfg, instance=instance)
    assert result.success
    text = run_text(instance, result)
    assert "MiB read" in text and "MiB/s" in text


def test_job_runs_with_the_multiprocess_executor_and_repo_instance(
    sandbox, backup_env, tmp_path: Path
) -> None:
    """What the daemon and the UI do: one process per step, the repo's dagster.yaml (pools)."""
    import shutil
    import subprocess
    import sys

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(Path(__file__).parents[2] / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    # another process: its backup clock is the real one, so only today's partition is taken
    today = backup_partitions.get_last_partition_key()
    assert today is not None
    out = subprocess.run(
        [sys.executable, "-m", "dagster", "job", "execute", "-m", "twinme_ops.definitions"]
        + ["-j", "nightly_backup_job", "--tags", json.dumps({"dagster/partition": today})],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    pids = {
        line.split(" - ")[5]
        for line in out.stderr.splitlines()
        if "STEP_SUCCESS" in line and line.count(" - ") > 4
    }
    assert len(pids) >= 3  # steps ran in their own processes
    manifest = read_manifest(store_for(backup_env["TWINME_BACKUP_URL"]), today)
    assert manifest["set_id"] == today


@pytest.fixture
def partition_day_clock() -> Iterator[None]:
    """This process's backup clock at 02:00 on PARTITION's day, when the schedule takes it."""
    with frozen_backup_clock(nightly_tick(PARTITION)):
        yield


def test_cli_backup_with_the_example_run_config_prints_the_set(
    sandbox, backup_env, capsys: pytest.CaptureFixture[str], partition_day_clock
) -> None:
    """README command 1's last step, with examples/run_config/nightly_backup_job.yaml."""
    from twinme_ops import cli

    example = Path(__file__).parents[2] / "examples" / "run_config" / "nightly_backup_job.yaml"
    argv = ["backup", "--partition", PARTITION, "--config", str(example)]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert f"backup set {PARTITION} complete: {backup_env['TWINME_BACKUP_URL']}/{PARTITION}" in out
    for name in ("postgres.", ".dump.zst", ".rdb.zst", ".tar.zst", "manifest.json"):
        assert name in out
    assert "rows in" in out and "keys" in out and "files," in out
    assert "restore drill passed: all components restored and verified" in out

    # a second backup of the day: two lines, the set's state and how to replace it, no trace
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert len(lines) == 2 and not captured.err.strip()
    assert f"backup set {PARTITION} already exists and is complete" in lines[0]
    assert "restore drill passed" in lines[0]
    assert lines[1] == "to replace it: twinme-ops backup --force"
    assert cli.main([*argv, "--force"]) == 0


def test_cli_run_from_the_repository_shows_in_the_repositorys_web_ui(
    sandbox,
    backup_env,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    partition_day_clock,
) -> None:
    """README command 1 then ``DAGSTER_HOME=$PWD dagster dev``: the CLI, run from the repository
    with neither DAGSTER_HOME nor TWINME_HOME set, records its run in the repository's instance
    (the one that UI opens), and says nothing of alembic's migrations or the absent Pushgateway."""
    from twinme_ops import cli

    repo = tmp_path / "checkout"
    repo.mkdir()
    shutil.copy(Path(__file__).parents[2] / "dagster.yaml", repo / "dagster.yaml")
    monkeypatch.chdir(repo)
    for var in ("DAGSTER_HOME", "TWINME_HOME"):
        monkeypatch.delenv(var, raising=False)
    # the shared sandbox's servers, so that no second sandbox starts under the checkout
    monkeypatch.setenv("DATABASE_URL", sandbox.database_url)
    monkeypatch.setenv("REDIS_URL", sandbox.redis_url)
    monkeypatch.setenv("TWINME_FILES_DIR", str(sandbox.files_dir))
    caplog.set_level(logging.DEBUG)

    assert cli.main(["backup", "--partition", PARTITION, "--force"]) == 0

    instance = dg.DagsterInstance.from_config(str(repo))
    try:
        runs = instance.get_runs()
        assert [(r.job_name, r.status) for r in runs] == [
            ("nightly_backup_job", dg.DagsterRunStatus.SUCCESS)
        ]
    finally:
        instance.dispose()
    assert not [r for r in caplog.records if r.name.startswith("alembic")]
    shown = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert not [m for m in shown if "Pushgateway" in m or "metrics not pushed" in m], shown
    assert not (repo / ".twinme").exists()
