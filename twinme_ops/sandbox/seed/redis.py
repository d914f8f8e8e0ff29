"""The seed's Redis keys: every type TwinMe uses, some with a TTL, written with pipelines.

Keys are deleted by prefix with ``SCAN`` first (never ``FLUSHALL``: production renames it away
and other data may share the server).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from twinme_ops.sandbox.seed.data import (
    AGENTS,
    CORPUS,
    CORPUS_LONG,
    EVENTS,
    TOPICS,
    SeedCounts,
    SeedReport,
    digest,
    num,
)

logger = logging.getLogger(__package__)  # the seed's one logger, twinme_ops.sandbox.seed

REDIS_PREFIXES = (
    "cache:",
    "session:",
    "ratelimit:",
    "conv:",
    "user:",
    "leaderboard:",
    "events:",
)


def delete_owned_keys(client: redis.Redis, prefixes: tuple[str, ...] = REDIS_PREFIXES) -> int:
    """Delete the keys under the seed's prefixes with SCAN + UNLINK; returns how many."""
    deleted = 0
    for prefix in prefixes:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += int(client.unlink(*batch))  # type: ignore[arg-type]
                batch.clear()
        if batch:
            deleted += int(client.unlink(*batch))  # type: ignore[arg-type]
    return deleted


def _type_counts(total: int) -> dict[str, int]:
    shares = {"hash": 0.2, "list": 0.12, "set": 0.12, "zset": 0.11, "stream": 0.08, "rate": 0.05}
    counts = {kind: max(3, round(total * share)) for kind, share in shares.items()}
    counts["string"] = max(3, total - sum(counts.values()))
    return counts


def seed_redis(redis_url: str, counts: SeedCounts, report: SeedReport) -> None:
    """Every Redis type TwinMe uses, some keys with a TTL, written with pipelines."""
    client = redis.Redis.from_url(redis_url, socket_timeout=60)
    try:
        t0 = time.monotonic()
        removed = delete_owned_keys(client)
        kinds = _type_counts(counts.redis_keys)
        pipe = client.pipeline(transaction=False)
        written = 0

        def flush(force: bool = False) -> None:
            if force or len(pipe) >= 1000:
                pipe.execute()

        for i in range(kinds["string"]):
            if i % 2 == 0:
                key = f"cache:user:{1 + i // 2}:profile"
                value = json.dumps(
                    {"id": 1 + i // 2, "lang": ("fr", "en")[i % 4 // 2], "plan": "pro"},
                    sort_keys=True,
                )
            else:
                key = f"cache:answer:{digest('answer', i).hex()[:16]}"
                value = CORPUS_LONG[num("ans", i) % len(CORPUS) :][: 80 + num("al", i) % 400]
            pipe.set(key, value)
            if i % 3 == 0:
                pipe.expire(key, 30 * 86400 + i)
            written += 1
            flush()
        for i in range(kinds["rate"]):
            key = f"ratelimit:10.0.{i // 250}.{i % 250}"
            pipe.set(key, 1 + num("rl", i) % 100, ex=3600 + i)
            written += 1
        for i in range(kinds["hash"]):
            key = f"session:{digest('session', i).hex()[:32]}"
            pipe.hset(
                key,
                mapping={
                    "user_id": 1 + num("su", i) % counts.users,
                    "created_at": 1_760_000_000 + num("sc", i) % 5_000_000,
                    "user_agent": AGENTS[num("sa", i) % len(AGENTS)],
                    "ip": f"192.0.2.{num('si', i) % 250}",
                },
            )
            pipe.expire(key, 7 * 86400 + i)
            written += 1
            flush()
        for i in range(kinds["list"]):
            key = f"conv:{1 + i}:recent"
            items = [
                f"msg:{1 + i + j * counts.conversations}" for j in range(5 + num("ll", i) % 25)
            ]
            pipe.rpush(key, *items)
            written += 1
            flush()
        for i in range(kinds["set"]):
            key = f"user:{1 + i}:tags"
            tags = {TOPICS[(num("st", i, j)) % len(TOPICS)] for j in range(2 + i % 6)}
            pipe.sadd(key, *sorted(tags))
            written += 1
            flush()
        for i in range(kinds["zset"]):
            key = f"leaderboard:{('daily', 'weekly', 'monthly')[i % 3]}:{i}"
            members = {f"user:{1 + num('zm', i, j) % counts.users}": j * 10 for j in range(15)}
            pipe.zadd(key, members)
            written += 1
            flush()
        for i in range(kinds["stream"]):
            key = f"events:{('chat', 'upload', 'voice', 'audit')[i % 4]}:{i}"
            for j in range(3 + num("sl", i) % 12):
                # Explicit ids (never "*"): the same seed must give the same stream.
                fields: dict[Any, Any] = {
                    "type": EVENTS[num("se", i, j) % len(EVENTS)],
                    "user_id": str(1 + num("sx", i, j) % counts.users),
                }
                pipe.xadd(key, fields, id=f"{1_760_000_000_000 + i * 100_000 + j * 997}-{j}")
            written += 1
            flush()
        flush(force=True)
        report.redis_keys = written
        logger.info(
            "redis: %s keys written (%s old ones removed) in %.1f s",
            written,
            removed,
            time.monotonic() - t0,
        )
    finally:
        client.close()
