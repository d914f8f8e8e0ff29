"""REDIS_URL with Sentinel: parsing, clear errors, and which server each operation uses.

Against real Sentinels (tests/support/redis_ha.py) wherever a server answers.
"""

from __future__ import annotations

import pytest

from tests.support.redis_ha import RedisHA, free_port, wait_until
from twinme_ops.servers.redis import RedisResource, RedisSnapshotError, rdb_snapshot
from twinme_ops.servers.redis_sentinel import (
    RedisSentinelError,
    parse_sentinel_url,
    snapshot_address,
)

SECRET = "pa:ss@w/rd-91x"
ENCODED = "pa%3Ass%40w%2Frd-91x"


def test_a_sentinel_url_names_the_sentinels_service_db_and_credentials() -> None:
    parsed = parse_sentinel_url(f"redis+sentinel://ops:{ENCODED}@s1:26379,s2:26380,s3/mymaster/2")
    assert parsed.sentinels == (("s1", 26379), ("s2", 26380), ("s3", 26379))
    assert (parsed.service, parsed.db, parsed.username, parsed.password) == (
        "mymaster",
        2,
        "ops",
        SECRET,
    )
    # the data nodes get the same credentials, percent-encoded back
    assert parsed.server_url("10.0.0.7", 6379) == f"redis://ops:{ENCODED}@10.0.0.7:6379/2"
    assert parse_sentinel_url("redis+sentinel://sentinel:26379/mymaster").db == 0


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"redis+sentinel://:{ENCODED}@sentinel:26379", "no service name"),
        (f"redis+sentinel://:{ENCODED}@sentinel:26379/", "no service name"),
        (f"redis+sentinel://:{ENCODED}@sentinel:port/mymaster/0", "is not a port number"),
        (f"redis+sentinel://:{ENCODED}@sentinel:99999/mymaster/0", "is not a port number"),
        (f"redis+sentinel://:{ENCODED}@sentinel:26379/mymaster/zero", "/service or /service/db"),
        (f"redis+sentinel://:{ENCODED}@sentinel:26379/mymaster/0/x", "/service or /service/db"),
        (f"redis+sentinel://:{ENCODED}@sentinel:26379/mymaster/0?tls=1", "query or fragment"),
        (f"redis+sentinel://{ENCODED}@sentinel:26379/mymaster/0", "no ':' before the password"),
        (f"redis+sentinel://:{ENCODED}@:26379/mymaster/0", "is not host:port"),
    ],
)
def test_malformed_sentinel_urls_say_what_is_wrong_and_how_to_write_it(
    url: str, problem: str
) -> None:
    with pytest.raises(RedisSentinelError) as info:
        parse_sentinel_url(url)
    message = str(info.value)
    assert problem in message
    assert "Fix: write it as redis+sentinel://:password@redis-sentinel:26379/mymaster/0" in message
    assert ENCODED not in message and SECRET not in message


def test_plain_operations_use_the_primary_and_snapshots_a_replica(redis_ha: RedisHA) -> None:
    res = RedisResource(url=redis_ha.url)
    primary, (replica,) = redis_ha.primary_port(), redis_ha.replica_ports()
    assert res.resolved_url() == redis_ha.server_url(primary)
    assert redis_ha.password not in res.describe()
    client = res.get_client()
    client.set("written", "through the resource")
    assert client.info("replication")["role"] == "master"
    url, source = res.snapshot_source()
    assert url == redis_ha.server_url(replica)
    assert source is not None and source.role == "replica" and source.primary[1] == primary
    with rdb_snapshot(res) as (chunks, facts):
        data = b"".join(chunks)
    assert data.startswith(b"REDIS")
    assert facts.source == f"replica 127.0.0.1:{replica}"


def test_without_a_replica_in_sync_the_snapshot_reads_the_primary(redis_ha: RedisHA) -> None:
    replica = redis_ha.replica_ports()[0]
    index = redis_ha.redis_ports.index(replica)
    redis_ha.procs[f"redis-{index}"].terminate()
    redis_ha.procs[f"redis-{index}"].wait(timeout=10)
    wait_until(
        lambda: snapshot_address(redis_ha.url).role == "primary", "the replica to be skipped"
    )
    source = snapshot_address(redis_ha.url)
    assert source.port == redis_ha.primary_port()
    assert f"127.0.0.1:{replica}" in source.reason
    with rdb_snapshot(RedisResource(url=redis_ha.url)) as (chunks, facts):
        assert b"".join(chunks).startswith(b"REDIS")
    assert facts.source == f"primary 127.0.0.1:{redis_ha.primary_port()}"


def test_wrong_password_or_service_or_no_sentinel_gives_a_clear_error(
    redis_ha: RedisHA,
) -> None:
    hosts = ",".join(f"127.0.0.1:{p}" for p in redis_ha.sentinel_ports)
    cases = {
        f"redis+sentinel://:{ENCODED}@{hosts}/mymaster/0": "check the password in REDIS_URL",
        f"redis+sentinel://:{redis_ha.password}@{hosts}/nosuch/0": "check the service name",
        f"redis+sentinel://:{ENCODED}@127.0.0.1:{free_port()}/mymaster/0": (
            "check that the Sentinels run and are reachable"
        ),
    }
    for url, fix in cases.items():
        with pytest.raises(RedisSnapshotError) as info:
            RedisResource(url=url).get_client()
        message = str(info.value)
        assert "gave no primary" in message and f"Fix: {fix}" in message, message
        assert SECRET not in message and ENCODED not in message
