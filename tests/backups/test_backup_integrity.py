"""A complete backup set can never be changed by another run, a killed run, or bad input.

Two real processes race on one partition (each with its own Dagster instance, so no queue or
pool can serialize them), a real process is killed mid-dump, a set is asked for that does not
exist, a corrupt dump fails pg_restore before its checksum is read: in each case the complete set
stays byte for byte what its manifest says, and the run that could not proceed says why.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import zstandard

from tests.support.backup_helpers import (
    PARTITION,
    force_config,
    read_manifest,
    run_backup,
    run_text,
    store_for,
)
from tests.support.list_log import ListLog
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.backups.artifacts import verify_artifact
from twinme_ops.backups.drill import run_drill
from twinme_ops.backups.manifest import DRILL, MANIFEST, manifest_bytes
from twinme_ops.backups.sets import read_set, sweep_leftovers
from twinme_ops.backups.store.base import BackupStore
from twinme_ops.cli import today_partition
from twinme_ops.definitions import build_definitions


@contextmanager
def table_locked(database_url: str) -> Iterator[None]:
    """Hold an ACCESS EXCLUSIVE lock on ``messages`` (what a migration takes): every dump waits
    behind it."""
    with psycopg.connect(database_url) as conn:
        conn.execute("LOCK TABLE public.messages IN ACCESS EXCLUSIVE MODE")
        yield
        conn.rollback()


def _cli(home: Path, *args: str) -> subprocess.Popen[str]:
    """``twinme-ops backup`` in its own process, with its own Dagster instance."""
    home.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-m", "twinme_ops.cli", "backup", *args],
        env={**os.environ, "DAGSTER_HOME": str(home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _waiting_dumps(database_url: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND application_name IN ('pg_dump', 'twinme_ops')"
        ).fetchone()
    return int(row[0]) if row else 0


def _wait_for(predicate, what: str, poll_s: float = 0.2, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll_s)


def _assert_byte_exact_and_drillable(store: BackupStore, set_id: str) -> dict:
    manifest = read_manifest(store, set_id)
    for art in manifest["artifacts"].values():
        assert verify_artifact(store, set_id, art["name"], art["sha256"]) == art["bytes_out"]
    result = run_drill(store, set_id, key=None, log=ListLog(), record=False)
    assert result.passed, result.reason
    return manifest


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_two_processes_racing_on_one_partition_leave_one_complete_set(
    backend: str,
    sandbox,
    backup_env,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    """Both runs pass the "already complete?" check, dump at the same time, and race for the
    manifest: one creates it, the other is refused, removes what it wrote, and says why."""
    if backend == "s3":
        bucket = request.getfixturevalue("s3_bucket")
        monkeypatch.setenv("TWINME_BACKUP_URL", f"s3://{bucket}/race")
    store = store_for(os.environ["TWINME_BACKUP_URL"])
    partition = today_partition()
    with table_locked(sandbox.database_url):
        procs = [_cli(tmp_path / f"instance-{i}") for i in (1, 2)]
        # both are past their start-of-run check and blocked in pg_dump: they overlap for sure
        _wait_for(lambda: _waiting_dumps(sandbox.database_url) >= 2, "both dumps to wait")
    outputs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outputs
    winner_out, _ = outputs[[p.returncode for p in procs].index(0)]
    _, loser_err = outputs[[p.returncode for p in procs].index(1)]

    manifest = _assert_byte_exact_and_drillable(store, partition)
    assert f"(run {manifest['run_id']})" in winner_out
    assert "restore drill passed" in winner_out
    assert f"was completed by run {manifest['run_id']}" in loser_err
    assert "that set is untouched" in loser_err and "force: true" in loser_err
    # the loser removed its own artifacts and records: only what the manifest names is left
    names = set(store.list_artifacts(partition))
    assert names == {MANIFEST, DRILL} | {a["name"] for a in manifest["artifacts"].values()}
    assert not [e for e in store.list_entries(partition) if e.partial]


def test_a_killed_runs_partial_dump_is_removed_by_the_next_run(
    sandbox, backup_env, tmp_path: Path
) -> None:
    """SIGKILL during the dump leaves ``postgres.<run>.dump.zst.tmp-*``; the next successful run
    removes it and says so, and never touches a live writer's file."""
    partition = today_partition()
    set_dir = Path(backup_env["TWINME_BACKUP_URL"].removeprefix("file://")) / partition
    proc = _cli(tmp_path / "killed")
    _wait_for(lambda: list(set_dir.glob("postgres.*.dump.zst.tmp-*")), "the partial dump", 0.01)
    os.killpg(proc.pid, signal.SIGSTOP)  # frozen mid-dump, then killed
    time.sleep(2.5)  # older than the create-then-lock window the sweep allows for
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    (partial,) = set_dir.glob("postgres.*.dump.zst.tmp-*")

    instance = dg.DagsterInstance.ephemeral()
    result = run_backup(partition=partition, instance=instance)
    assert result.success
    assert not partial.exists()
    assert not list(set_dir.glob("*.tmp-*"))
    text = run_text(instance, result)
    assert "removed the unfinished write of postgres." in text and "its writer died" in text
    _assert_byte_exact_and_drillable(store_for(backup_env["TWINME_BACKUP_URL"]), partition)


def test_a_failed_forced_run_leaves_the_old_set_whole(
    sandbox, backup_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """force replaces a set only when the new one is complete: a forced run that fails halfway
    leaves the old set as its manifest says (it used to delete that manifest first)."""
    assert run_backup().success
    store = store_for(backup_env["TWINME_BACKUP_URL"])
    before = read_manifest(store)
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    assert not run_backup(run_config=force_config()).success
    assert read_manifest(store) == before
    _assert_byte_exact_and_drillable(store, PARTITION)
    monkeypatch.delenv("REDIS_URL")
    forced = run_backup(run_config=force_config())
    assert forced.success
    after = read_manifest(store)
    assert after["run_id"] == forced.run_id and after != before
    # the replaced set's artifacts belong to a run that succeeded: a drill of the old manifest
    # may still be reading them, so they wait for the grace period (retention removes them)
    assert all(store.exists(PARTITION, a["name"]) for a in before["artifacts"].values())
    removed = sweep_leftovers(
        store,
        PARTITION,
        after,
        log=ListLog(),
        now=datetime.now(UTC) + timedelta(days=2),
    )
    old = {a["name"] for a in before["artifacts"].values()}
    # the replaced set's artifacts, and what the failed forced run wrote (another instance here)
    assert old <= set(removed)
    assert set(store.list_artifacts(PARTITION)) == {MANIFEST, DRILL} | {
        a["name"] for a in after["artifacts"].values()
    }
    _assert_byte_exact_and_drillable(store, PARTITION)


def test_a_second_run_on_a_complete_set_alerts_that_it_is_complete(
    sandbox, backup_env, slack_receiver: SlackReceiver
) -> None:
    assert run_backup().success
    store = store_for(backup_env["TWINME_BACKUP_URL"])
    before = read_manifest(store)
    slack_receiver.messages.clear()
    instance = dg.DagsterInstance.ephemeral()
    again = run_backup(instance=instance)
    assert not again.success
    assert read_manifest(store) == before
    text = run_text(instance, again)
    assert "already complete" in text and "restore drill passed" in text
    assert slack_receiver.messages
    for message in slack_receiver.messages:
        assert "No manifest was written" not in message
        assert "already complete" in message and "Nothing is lost" in message


def test_drill_of_a_set_that_does_not_exist_names_the_newest_and_writes_nothing(
    sandbox, backup_env
) -> None:
    assert run_backup().success
    store = store_for(backup_env["TWINME_BACKUP_URL"])
    job = build_definitions().resolve_job_def("restore_drill_job")
    instance = dg.DagsterInstance.ephemeral()
    result = job.execute_in_process(
        run_config={"ops": {"restore_drill_op": {"config": {"set_id": "2026-01-05"}}}},
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    text = run_text(instance, result)
    assert (
        f"no backup set 2026-01-05 in {store.describe()}; the newest complete set is {PARTITION}"
        in text
    )
    assert "ParameterCheckError" not in text
    assert "2026-01-05" not in store.list_sets()
    assert not (
        Path(backup_env["TWINME_BACKUP_URL"].removeprefix("file://")) / "2026-01-05"
    ).exists()


def test_corrupt_dump_that_pg_restore_rejects_is_reported_as_a_checksum_mismatch(
    sandbox, backup_env
) -> None:
    """pg_restore stops at the damaged table of contents before the stream ends, so the
    sha256 of the stream is never finished: the drill hashes the stored bytes and names the
    real cause."""
    assert run_backup().success
    store = store_for(backup_env["TWINME_BACKUP_URL"])
    art = read_manifest(store)["artifacts"]["postgres"]
    path = Path(backup_env["TWINME_BACKUP_URL"].removeprefix("file://")) / PARTITION / art["name"]
    # a damaged dump inside a well-formed zstd frame: decompression succeeds, pg_restore fails
    dump = bytearray(zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes()))
    assert dump[:5] == b"PGDMP"
    dump[0:5] = b"XXXXX"
    path.write_bytes(zstandard.ZstdCompressor(write_checksum=True).compress(bytes(dump)))
    result = run_drill(store, PARTITION, key=None, log=ListLog(), record=False)
    assert not result.passed
    assert "checksum mismatch" in result.failures["postgres"]
    assert art["name"] in result.failures["postgres"]


def _fake_set(store: BackupStore, set_id: str, run: str) -> dict:
    arts = {}
    for component, suffix in (("postgres", "dump.zst"), ("redis", "rdb.zst"), ("files", "tar.zst")):
        name = f"{component}.{run}.{suffix}"
        store.put_bytes(set_id, name, b"x")
        arts[component] = {"name": name, "sha256": "0" * 64, "bytes_out": 1}
    manifest = {
        "format": "twinme-backup-set/v1",
        "set_id": set_id,
        "run_id": run,
        "created_at": "2026-11-24T01:00:00+00:00",
        "artifacts": arts,
    }
    store.create_bytes(set_id, MANIFEST, manifest_bytes(manifest))
    return manifest


def test_a_drill_verdict_counts_only_for_the_manifest_it_verified(tmp_path: Path) -> None:
    store = BackupStore(url=f"file://{tmp_path}/store")
    _fake_set(store, PARTITION, "run-a")
    view = read_set(store, PARTITION)
    drill = {"passed": True, "reason": "ok", "manifest_sha256": view.manifest_sha256}
    store.put_bytes(PARTITION, DRILL, json.dumps(drill).encode())
    assert read_set(store, PARTITION).verdict == "passed"
    # force replaced the manifest: the old verdict no longer vouches for the set
    replaced = {**read_manifest(store), "run_id": "run-b"}
    store.put_bytes(PARTITION, MANIFEST, manifest_bytes(replaced))
    assert read_set(store, PARTITION).verdict == "stale"
    # records written before drills named their manifest keep counting
    store.put_bytes(PARTITION, DRILL, json.dumps({"passed": True}).encode())
    assert read_set(store, PARTITION).verdict == "passed"


def test_sweep_removes_only_what_is_safe_to_remove(tmp_path: Path) -> None:
    store = BackupStore(url=f"file://{tmp_path}/store")
    manifest = _fake_set(store, PARTITION, "run-a")
    store.put_bytes(PARTITION, "postgres.run-dead.dump.zst", b"failed run")
    store.put_bytes(PARTITION, "redis.run-live.rdb.zst", b"still writing")
    store.put_bytes(PARTITION, "files.other-instance.tar.zst", b"unknown run")
    store.put_bytes(PARTITION, "postgres.json", b"{}")  # a record of the old unsuffixed layout
    store.put_bytes(PARTITION, "notes.txt", b"a person's file")
    statuses = {"run-dead": "FAILURE", "run-live": "STARTED"}
    lines = ListLog()
    removed = sweep_leftovers(store, PARTITION, manifest, log=lines, run_status=statuses.get)
    assert removed == ["postgres.run-dead.dump.zst"]
    later = datetime.now(UTC) + timedelta(days=2)
    removed = sweep_leftovers(
        store, PARTITION, manifest, log=lines, run_status=statuses.get, now=later
    )
    assert sorted(removed) == [
        "files.other-instance.tar.zst",
        "postgres.json",
        "redis.run-live.rdb.zst",
    ]
    assert set(store.list_artifacts(PARTITION)) == {MANIFEST, "notes.txt"} | {
        a["name"] for a in manifest["artifacts"].values()
    }
    assert any("kept notes.txt" in line for line in lines)


def _nightly_backup_job() -> dg.JobDefinition:
    return build_definitions().resolve_job_def("nightly_backup_job")


def test_reexecution_from_failure_completes_the_set_with_the_parents_components(
    sandbox, backup_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The UI's "Re-execute from failure": the new run backs up only what failed, and its
    manifest names the components its parent finished (found through the run's lineage)."""
    partition = today_partition()
    store = store_for(backup_env["TWINME_BACKUP_URL"])
    tags = {"dagster/partition": partition}
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
        with dg.execute_job(dg.reconstructable(_nightly_backup_job), instance, tags=tags) as first:
            assert not first.success
            first_id = first.run_id
        monkeypatch.setenv("REDIS_URL", sandbox.redis_url)  # Redis is back
        options = dg.ReexecutionOptions.from_failure(first_id, instance)
        with dg.execute_job(
            dg.reconstructable(_nightly_backup_job),
            instance,
            tags=tags,  # the UI copies the parent run's tags, its partition among them
            reexecution_options=options,
        ) as second:
            assert second.success, [
                str(e.step_failure_data.error.message)
                for e in second.all_events
                if e.is_step_failure and e.step_failure_data and e.step_failure_data.error
            ]
            second_id = second.run_id
    arts = _assert_byte_exact_and_drillable(store, partition)["artifacts"]
    assert first_id in arts["postgres"]["name"] and first_id in arts["files"]["name"]
    assert second_id in arts["redis"]["name"]
    assert read_set(store, partition).verdict == "passed"
