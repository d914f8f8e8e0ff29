"""Compare a restored copy with its source: rows, Redis keys, file trees."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import psycopg
import redis
from psycopg import sql


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
