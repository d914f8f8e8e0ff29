"""Redis restore: load an RDB into a scratch server, then replay its keys into the live one.

:func:`scratch_redis_from_rdb` loads the RDB into a scratch server, then :func:`replay_redis`
copies every key to the live server with ``DUMP``/``RESTORE`` and removes the others with
``SCAN``/``UNLINK``: production renames ``FLUSHALL``, ``CONFIG`` and ``KEYS`` away, and with
``appendonly yes`` a server ignores an RDB dropped on its disk. Shared parts
(:class:`RestoreError`) are in :mod:`twinme_ops.backups.restore.common`.

No Dagster in this module: it is plain library code.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twinme_ops.backups.restore.common import close_iterator, restore_error
from twinme_ops.scratch.local import LocalServerError
from twinme_ops.scratch.redis import (
    REDIS_DBFILENAME,
    RedisServer,
    rdb_min_redis_version,
    redis_binary_version,
    redis_server_candidates,
)

if TYPE_CHECKING:
    import redis

# Redis (major, minor) -> newest RDB format it reads; a DUMP payload carries its RDB version
# and RESTORE refuses a newer one ("DUMP payload version or checksum are wrong").
_REDIS_RDB = [((7, 4), 12), ((7, 2), 11), ((7, 0), 10), ((5, 0), 9), ((4, 0), 8)]


def _rdb_version_of(version: str) -> int:
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    for since, rdb in _REDIS_RDB:
        if parts >= since:
            return rdb
    return 7


def _db_client(client: redis.Redis, db: int) -> redis.Redis:
    """A client of the same server on logical database ``db``, returning bytes."""
    import redis

    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs["db"] = db
    kwargs["decode_responses"] = False  # DUMP payloads are binary
    return redis.Redis(connection_pool=redis.ConnectionPool(pool.connection_class, **kwargs))


def _keyspace_dbs(client: redis.Redis) -> set[int]:
    info: dict[str, Any] = client.info("keyspace")  # type: ignore[assignment]
    return {int(name[2:]) for name in info if name.startswith("db") and name[2:].isdigit()}


def replay_redis(
    source: redis.Redis, target: redis.Redis, *, batch: int = 500, delete_extra: bool = True
) -> dict[str, Any]:
    """Make ``target`` hold exactly ``source``'s keys, in every logical database.

    For each database of ``source`` (``INFO keyspace``): ``SCAN``, then pipelined ``PTTL`` +
    ``DUMP`` on the source and ``RESTORE key ttl payload REPLACE`` on the target (ttl 0: no
    expiry; keys that expired in between are skipped). Then, with ``delete_extra``, the target's
    keys absent from the source are removed with ``SCAN`` + ``UNLINK``, also in databases the
    source does not use. Only SCAN, DUMP, PTTL, EXISTS, RESTORE, UNLINK and INFO are used, so it
    works where FLUSHALL, FLUSHDB, KEYS and CONFIG are renamed away, with a password and with
    ``appendonly yes`` (every RESTORE goes to the AOF). Clients writing to the target meanwhile
    may add keys: stop them first (the recovery scales the API to 0).

    Returns ``{"restored", "deleted", "expired", "dbs": {db: {"restored", "deleted",
    "expired"}}}``. Raises :class:`RestoreError` when the target cannot read the source's DUMP
    payloads (its Redis is older than the source's RDB format) or a command fails.
    """
    import redis

    where = _describe(target)
    try:
        src_version = str(source.info("server").get("redis_version", "0"))
        dst_version = str(target.info("server").get("redis_version", "0"))
        if _rdb_version_of(src_version) > _rdb_version_of(dst_version):
            raise restore_error(
                f"Redis restore into {where}: the scratch server is Redis {src_version} (RDB "
                f"format {_rdb_version_of(src_version)}) but the target is Redis {dst_version}, "
                "which cannot RESTORE its payloads. Fix: load the backup into a scratch "
                f"redis-server no newer than {dst_version} (scratch_redis_from_rdb picks the "
                "oldest that can read the RDB), or upgrade the target."
            )
        src_dbs = _keyspace_dbs(source)
        dbs = src_dbs | (_keyspace_dbs(target) if delete_extra else set())
        result: dict[str, Any] = {"restored": 0, "deleted": 0, "expired": 0, "dbs": {}}
        for db in sorted(dbs):
            src = _db_client(source, db)
            dst = _db_client(target, db)
            try:
                counts = {"restored": 0, "deleted": 0, "expired": 0}
                if db in src_dbs:
                    _copy_db(src, dst, batch, counts, db, where)
                if delete_extra:
                    _delete_extra(src, dst, batch, counts)
            finally:
                src.close()
                dst.close()
            result["dbs"][db] = counts
            for k in ("restored", "deleted", "expired"):
                result[k] += counts[k]
        return result
    except redis.RedisError as exc:
        raise restore_error(
            f"Redis restore into {where} failed: {exc}. Fix: check that both servers are "
            "reachable and the target's user may run SCAN, RESTORE and UNLINK."
        ) from None


def _describe(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix:{kw['path']}"
    return f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}"


def _batches(client: redis.Redis, batch: int) -> Iterator[list[bytes]]:
    keys: list[bytes] = []
    for key in client.scan_iter(count=batch):
        keys.append(key)
        if len(keys) >= batch:
            yield keys
            keys = []
    if keys:
        yield keys


def _copy_db(
    src: redis.Redis,
    dst: redis.Redis,
    batch: int,
    counts: dict[str, int],
    db: int,
    where: str,
) -> None:
    for keys in _batches(src, batch):
        read = src.pipeline(transaction=False)
        for key in keys:
            read.pttl(key)
            read.dump(key)
        replies = read.execute()
        write = dst.pipeline(transaction=False)
        written: list[bytes] = []
        for i, key in enumerate(keys):
            pttl, payload = int(replies[2 * i]), replies[2 * i + 1]
            # -1: no expiry (RESTORE's ttl 0). -2 or 0: expired (or deleted) since SCAN; 0 must
            # not become RESTORE's 0, which would make a dying key immortal.
            if payload is None or pttl == 0 or pttl < -1:
                counts["expired"] += 1
                continue
            write.restore(key, pttl if pttl > 0 else 0, payload, replace=True)
            written.append(key)
        for key, reply in zip(written, write.execute(raise_on_error=False), strict=True):
            if isinstance(reply, Exception):
                text = str(reply)
                fix = (
                    "the target Redis is older than the scratch server: use a scratch "
                    "redis-server no newer than the target"
                    if "payload version" in text
                    else "check the target's memory (maxmemory) and its user's permissions"
                )
                raise restore_error(
                    f"Redis restore into {where}: RESTORE of key {key[:200]!r} in db {db} "
                    f"failed: {text}. Fix: {fix}."
                )
            counts["restored"] += 1


def _delete_extra(src: redis.Redis, dst: redis.Redis, batch: int, counts: dict[str, int]) -> None:
    for keys in _batches(dst, batch):
        check = src.pipeline(transaction=False)
        for key in keys:
            check.exists(key)
        extra = [k for k, n in zip(keys, check.execute(), strict=True) if not n]
        if extra:
            counts["deleted"] += int(dst.unlink(*extra))  # type: ignore[arg-type]


def scratch_redis_from_rdb(
    rdb_chunks: Iterable[bytes],
    workdir: Path,
    *,
    extra_config: list[str] | None = None,
    binary: str | None = None,
) -> RedisServer:
    """Write the RDB to ``workdir/dump.rdb`` and start a scratch redis-server that loads it.

    The server runs from ``workdir/server`` on 127.0.0.1 without password nor persistence
    (``appendonly no``, so it loads the RDB and never rewrites it). Its binary is the *oldest*
    available redis-server that can read the RDB's format: a Redis 7 RDB needs Redis >= 7 (a
    Redis 6.2 refuses it), and the oldest keeps its DUMP payloads readable by as many targets as
    possible for :func:`replay_redis`. The file is complete (and a verifying stream checked)
    before the server starts. The caller stops the server.
    """
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    rdb = workdir / REDIS_DBFILENAME
    part = workdir / f".{REDIS_DBFILENAME}.part"
    try:
        with open(part, "wb") as fh:
            for chunk in rdb_chunks:
                fh.write(chunk)
        os.replace(part, rdb)
    finally:
        close_iterator(rdb_chunks)
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    try:
        need = rdb_min_redis_version(rdb)
        if binary is None:
            binary = _oldest_redis_for(need)
        return RedisServer.start(
            workdir / "server", rdb_file=rdb, extra_config=extra_config, binary=binary
        )
    except LocalServerError as exc:
        raise restore_error(
            f"Redis restore: scratch server on {rdb} did not start: {exc}"
        ) from None


def _oldest_redis_for(need: tuple[int, int] | None) -> str:
    usable: list[tuple[tuple[int, ...], str]] = []
    seen: list[str] = []
    for candidate in redis_server_candidates():
        try:
            version = redis_binary_version(candidate)
        except (OSError, subprocess.CalledProcessError, LocalServerError):
            continue
        seen.append(f"{candidate} ({version})")
        parsed = tuple(int(p) for p in version.split("."))
        if need is None or parsed[:2] >= need:
            usable.append((parsed, candidate))
    if not usable:
        wanted = f" >= {need[0]}.{need[1]}" if need else ""
        raise restore_error(
            f"Redis restore: no redis-server{wanted} to load the backup (have: "
            f"{', '.join(seen) or 'none'}). Fix: install Redis 7 (apt-get install redis-server)."
        )
    return min(usable)[1]
