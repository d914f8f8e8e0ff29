"""Backups and recovery against a replicated Redis behind Sentinel (deploy/redis/ha/).

Real servers on 127.0.0.1 (tests/support/redis_ha.py): a primary, a replica and three Sentinels
run from the production configs. REDIS_URL is the ``redis+sentinel://`` URL the API is given.
The nightly job's snapshot must read the replica, a failover during the snapshot must fail the
backup without leaving a set that looks good, and recovery must write to whichever server is
the primary after the failover.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import dagster as dg
import pytest
import redis

from tests.support.backup_helpers import PARTITION, run_backup, run_text, store_for
from tests.support.redis_ha import RedisHA, wait_until
from twinme_ops.backups.recovery import RecoveryState, restore_redis
from twinme_ops.backups.sets import read_set
from twinme_ops.common.log import DEFAULT_LOG
from twinme_ops.servers.redis import RedisResource


def _failure_text(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(
        str(e.step_failure_data.error.message)  # type: ignore[union-attr]
        for e in result.all_events
        if e.is_step_failure
    )


def _full_syncs(ha: RedisHA, port: int) -> int:
    """How many full syncs (RDB transfers: replicas and snapshots) ``port`` has served."""
    return int(ha.client(port).info("stats")["sync_full"])


def _fill(ha: RedisHA, keys: int) -> None:
    primary = ha.client(ha.primary_port())
    pipe = primary.pipeline(transaction=False)
    for i in range(keys):
        pipe.set(f"session:{i}", f"user-{i}")
    pipe.hset("config:flags", mapping={"beta": "1", "dark": "0"})
    pipe.set("cache:ttl", "soon", ex=3600)
    pipe.execute()
    db1 = redis.Redis(host="127.0.0.1", port=ha.primary_port(), db=1, password=ha.password)
    db1.rpush("queue:jobs", "a", "b", "c")
    assert primary.wait(1, 10_000) == 1  # the replica has every write


def test_nightly_backup_reads_the_replica_and_its_drill_restores(
    sandbox, backup_env, redis_ha: RedisHA, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill(redis_ha, 500)
    primary, (replica,) = redis_ha.primary_port(), redis_ha.replica_ports()
    before = {p: _full_syncs(redis_ha, p) for p in (primary, replica)}
    monkeypatch.setenv("REDIS_URL", redis_ha.url)

    instance = dg.DagsterInstance.ephemeral()
    result = run_backup(instance=instance)
    assert result.success, _failure_text(result)

    # the RDB came over the replication protocol from the replica; the primary did no fork
    assert _full_syncs(redis_ha, replica) == before[replica] + 1
    assert _full_syncs(redis_ha, primary) == before[primary]
    store = store_for(backup_env["TWINME_BACKUP_URL"])
    view = read_set(store, PARTITION)
    assert view.manifest is not None
    source = view.manifest["artifacts"]["redis"]["source"]
    assert source["total_keys"] == 503
    assert view.verdict == "passed", view.verdict_line()
    (materialization,) = [m for m in result.asset_materializations_for_node("redis_backup")]
    assert materialization.metadata["snapshot_source"].value == f"replica 127.0.0.1:{replica}"
    assert redis_ha.password not in run_text(instance, result)


def test_failover_during_the_backup_fails_it_cleanly_then_backup_and_recovery_follow(
    sandbox, backup_env, redis_ha: RedisHA, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _fill(redis_ha, 3000)
    old_primary, (old_replica,) = redis_ha.primary_port(), redis_ha.replica_ports()
    # Redis's own throttle for tests: 3 ms per key makes the replica's snapshot last ~9 s
    redis_ha.client(old_replica).execute_command(
        redis_ha.config_command, "SET", "rdb-key-save-delay", "3000"
    )
    monkeypatch.setenv("REDIS_URL", redis_ha.url)

    failed_over: list[float] = []

    def fail_over_while_streaming() -> None:
        replica = redis_ha.client(old_replica)
        wait_until(
            lambda: int(replica.info("persistence")["rdb_bgsave_in_progress"]) == 1,
            "the replica to start streaming the snapshot",
            timeout=60,
        )
        redis_ha.failover()
        failed_over.append(time.monotonic())

    thread = threading.Thread(target=fail_over_while_streaming)
    thread.start()
    instance = dg.DagsterInstance.ephemeral()
    result = run_backup(instance=instance)
    thread.join()

    assert failed_over, "the failover was not triggered during the backup"
    assert not result.success
    failed = {e.step_key for e in result.all_events if e.is_step_failure}
    assert "redis_backup" in failed
    message = _failure_text(result)
    assert "failover happened during" in message and "Fix: re-run the backup" in message
    assert f"it is now 127.0.0.1:{old_replica}" in message
    assert redis_ha.password not in run_text(instance, result)
    # no half-written artifact: no manifest, nothing of redis left, the set says incomplete
    store = store_for(backup_env["TWINME_BACKUP_URL"])
    view = read_set(store, PARTITION)
    assert not view.complete
    assert not [n for n in store.list_artifacts(PARTITION) if n.startswith("redis")]

    # the next backup works against the new topology: it reads the old primary, now a replica
    assert redis_ha.wait_new_primary(old_primary) == old_replica
    redis_ha.wait_ready()
    redis_ha.client(old_replica).execute_command(
        redis_ha.config_command, "SET", "rdb-key-save-delay", "0"
    )
    syncs = _full_syncs(redis_ha, old_primary)
    again = run_backup(instance=instance)
    assert again.success, _failure_text(again)
    assert _full_syncs(redis_ha, old_primary) == syncs + 1
    view = read_set(store, PARTITION)
    assert view.complete and view.verdict == "passed", view.verdict_line()
    assert view.manifest is not None

    # recovery restores to the new primary, whose replica follows
    new_primary = redis_ha.client(old_replica)
    new_primary.set("session:0", "changed after the backup")
    new_primary.set("extra", "not in the backup")
    state = RecoveryState(
        set_id=PARTITION, components=["redis"], target_database="", manifest=view.manifest
    )
    restore_redis(store, state, RedisResource(url=redis_ha.url), None, DEFAULT_LOG)
    assert new_primary.get("session:0") == b"user-0"
    assert new_primary.get("extra") is None
    assert new_primary.dbsize() == 3002
    assert new_primary.wait(1, 10_000) == 1
    follower = redis_ha.client(old_primary)
    assert follower.get("session:0") == b"user-0" and follower.dbsize() == 3002
