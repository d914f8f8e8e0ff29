"""Restore primitives against real servers: PostgreSQL swap, safe tar extraction, Redis replay."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.compare import redis_snapshot_of, table_digest, tree_of
from tests.conftest import PG_TEST_PASSWORD, REDIS_TEST_PASSWORD
from twinme_ops.lib.files import FilesFacts, tar_stream
from twinme_ops.lib.pgtools import pg_bin
from twinme_ops.lib.postgres import user_tables
from twinme_ops.lib.postgres_server import PostgresServer
from twinme_ops.lib.redis_server import RedisServer, redis_server_candidates
from twinme_ops.lib.redis_snapshot import RedisResource, rdb_snapshot
from twinme_ops.lib.restore import (
    TRASH_PREFIX,
    RestoreError,
    create_database,
    drop_database,
    pg_restore_stream,
    replace_tree,
    replay_redis,
    safe_extract,
    scratch_redis_from_rdb,
    staging_dir_for,
    swap_databases,
)

CHUNK = 64 << 10

# ============================================================================================
# PostgreSQL

SCHEMA = """
CREATE EXTENSION vector;
CREATE SEQUENCE invoice_no START 1000;
CREATE TABLE users (
    id bigserial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    embedding vector(3)
);
CREATE TABLE notes (
    id serial PRIMARY KEY,
    user_id bigint REFERENCES users(id),
    body text
);
CREATE TABLE session_events (
    id bigint GENERATED ALWAYS AS IDENTITY,
    at date NOT NULL,
    kind text,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
CREATE TABLE session_events_2026_01 PARTITION OF session_events
    FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
CREATE TABLE session_events_2026_02 PARTITION OF session_events
    FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
INSERT INTO users (email, embedding)
    SELECT 'u' || g || '@twinme.test', ARRAY[g, g * 0.5, -g]::vector(3)
    FROM generate_series(1, 300) g;
INSERT INTO notes (user_id, body)
    SELECT 1 + g % 300, repeat('n', g % 50) FROM generate_series(1, 500) g;
INSERT INTO session_events (at, kind)
    SELECT date '2026-01-01' + (g % 59), 'k' || (g % 7) FROM generate_series(1, 1000) g;
SELECT setval('invoice_no', 4242);
"""


def _dump(server: PostgresServer, db: str) -> list[bytes]:
    """``pg_dump -Fc -Z0`` through a pipe (no data offsets, like the stored backups), in chunks."""
    out = subprocess.run(
        [pg_bin("pg_dump"), "-Fc", "-Z0", "--no-password", f"--dbname={server.url(db)}"],
        capture_output=True,
        check=True,
    ).stdout
    return [out[i : i + CHUNK] for i in range(0, len(out), CHUNK)]


def _state(server: PostgresServer, db: str) -> dict[str, Any]:
    """Every table's digest and every sequence's position."""
    url = server.url(db)
    with server.connect(db) as conn:
        tables = [f"{s}.{t}" for s, t in user_tables(conn)]
        seqs = conn.execute(
            "SELECT schemaname || '.' || sequencename FROM pg_sequences ORDER BY 1"
        ).fetchall()
        sequences = {
            name: conn.execute(f"SELECT last_value, is_called FROM {name}").fetchone()
            for (name,) in seqs
        }
    return {"tables": {t: table_digest(url, t) for t in tables}, "sequences": sequences}


def _db_exists(server: PostgresServer, name: str) -> bool:
    with server.connect() as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


@pytest.fixture
def live_db(pg_server: PostgresServer) -> Iterator[str]:
    """A database ``app_<n>`` with the schema above, dropped (with its restore copies) after."""
    name = f"app_{time.monotonic_ns() % 10**9}"
    with pg_server.connect() as conn:
        conn.execute(f"CREATE DATABASE {name}")
    with pg_server.connect(name) as conn:
        conn.execute(SCHEMA)
    yield name
    for db in (name, f"{name}_restored", f"{name}_old", f"{name}_bad"):
        drop_database(pg_server.url(), db)


def test_restore_into_fresh_database_and_swap_equals_the_backup(
    pg_server: PostgresServer, live_db: str
) -> None:
    admin = pg_server.url()
    with pg_server.connect() as conn:
        conn.execute("DROP ROLE IF EXISTS app_reader")
        conn.execute("CREATE ROLE app_reader")
        # database-level state that pg_dump does not archive: swap_databases carries it over
        conn.execute(f"REVOKE CONNECT ON DATABASE {live_db} FROM PUBLIC")
        conn.execute(f"GRANT CONNECT ON DATABASE {live_db} TO app_reader")
        conn.execute(f"""ALTER DATABASE {live_db} SET search_path = "$user", public, "odd,name" """)
        conn.execute(f"ALTER DATABASE {live_db} SET app.tenant = 'twin me'")
    dump = _dump(pg_server, live_db)
    at_dump = _state(pg_server, live_db)
    assert at_dump["sequences"]["public.invoice_no"] == (4242, True)
    assert "public.session_events_2026_02" in at_dump["tables"]

    # The live database moves on after the backup.
    with pg_server.connect(live_db) as conn:
        conn.execute("INSERT INTO users (email) VALUES ('late@twinme.test')")
        conn.execute("UPDATE users SET embedding = '[9,9,9]' WHERE id <= 10")
        conn.execute("DELETE FROM session_events WHERE at >= '2026-02-01'")
        conn.execute("DROP TABLE notes")
        conn.execute("CREATE TABLE extra AS SELECT 1 AS x")
        conn.execute("SELECT nextval('invoice_no') FROM generate_series(1, 5)")
    assert _state(pg_server, live_db) != at_dump

    restored = f"{live_db}_restored"
    create_database(admin, restored, like=live_db)
    pg_restore_stream(iter(dump), pg_server.url(restored))
    client = pg_server.connect(live_db)  # an API connection still open during the swap
    try:
        swap_databases(admin, live_db, restored, f"{live_db}_old")
        with pytest.raises(psycopg.OperationalError):
            client.execute("SELECT 1")  # it was terminated, not left on the old database
    finally:
        client.close()

    assert _state(pg_server, live_db) == at_dump
    assert not _db_exists(pg_server, restored)
    with pg_server.connect(live_db) as conn:
        assert conn.execute("SELECT to_regclass('public.extra')").fetchone() == (None,)
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (300,)
    with pg_server.connect(f"{live_db}_old") as conn:  # the previous live database, kept
        assert conn.execute("SELECT count(*) FROM extra").fetchone() == (1,)
    with pg_server.connect() as conn:
        props = conn.execute(
            "SELECT d.datname, d.datallowconn, "
            "has_database_privilege('app_reader', d.oid, 'CONNECT'), "
            "(SELECT array_agg(a.privilege_type ORDER BY 1) FROM aclexplode(d.datacl) a "
            " WHERE a.grantee = 0), "
            "(SELECT setconfig FROM pg_db_role_setting s WHERE s.setdatabase = d.oid "
            " AND s.setrole = 0) "
            "FROM pg_database d WHERE d.datname = ANY(%s) ORDER BY 1",
            ([live_db, f"{live_db}_old"],),
        ).fetchall()
    new, old = props
    assert (
        new[1:]
        == old[1:]
        == (
            True,
            True,
            ["TEMPORARY"],  # PUBLIC lost CONNECT on both
            ['search_path="$user", public, "odd,name"', "app.tenant=twin me"],
        )
    )


def test_parallel_restore_from_a_spool_file(
    pg_server: PostgresServer, live_db: str, server_tmp: Path
) -> None:
    """``jobs=2`` spools the stream (pg_dump wrote it to a pipe: no data offsets) and removes it."""
    copy = f"{live_db}_restored"
    create_database(pg_server.url(), copy)
    pg_restore_stream(
        iter(_dump(pg_server, live_db)), pg_server.url(copy), jobs=2, spool_dir=server_tmp
    )
    assert _state(pg_server, copy) == _state(pg_server, live_db)
    assert os.listdir(server_tmp) == []


def _pg_restore_running(marker: str) -> bool:
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"pg_restore" in cmd and marker.encode() in cmd:
            return True
    return False


@pytest.mark.parametrize("where", ["mid-way", "at-end"])
def test_failing_stream_kills_pg_restore_and_nothing_is_swapped(
    pg_server: PostgresServer, live_db: str, where: str
) -> None:
    admin = pg_server.url()
    with pg_server.connect(live_db) as conn:
        conn.execute(
            "CREATE TABLE bulk AS SELECT g, md5(g::text) AS h FROM generate_series(1, 2e5) g"
        )
    dump = _dump(pg_server, live_db)
    before = _state(pg_server, live_db)

    def corrupted() -> Iterator[bytes]:
        for i, chunk in enumerate(dump):
            if where == "mid-way" and i == len(dump) // 2:
                raise ValueError("checksum mismatch for 2026-11-24/postgres.dump.zst")
            yield chunk
        raise ValueError("checksum mismatch for 2026-11-24/postgres.dump.zst")

    bad = f"{live_db}_bad"
    create_database(admin, bad)
    # The caller's flow: restore, and swap only when the restore returned.
    with pytest.raises(ValueError, match="checksum mismatch"):
        pg_restore_stream(corrupted(), pg_server.url(bad))
        swap_databases(admin, live_db, bad, f"{live_db}_old")
    assert not _pg_restore_running(bad)
    # its server session rolls back and ends on its own (the client is gone), no drop needed
    deadline = time.monotonic() + 10
    with pg_server.connect() as conn:
        while conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (bad,)
        ).fetchone() != (0,):
            assert time.monotonic() < deadline, "pg_restore's session is still running"
            time.sleep(0.05)
    if where == "mid-way":  # one transaction (the default): a killed restore leaves nothing
        with pg_server.connect(bad) as conn:
            assert user_tables(conn) == []
    drop_database(admin, bad)
    assert not _db_exists(pg_server, bad)
    assert not _db_exists(pg_server, f"{live_db}_old")
    assert _state(pg_server, live_db) == before


def test_pg_restore_failure_is_reported_without_the_password(
    pg_password_server: PostgresServer,
) -> None:
    server = pg_password_server
    env = {**os.environ, "PGPASSWORD": PG_TEST_PASSWORD}
    admin = server.url()
    create_database(admin, "app", env)
    try:
        with psycopg.connect(server.url("app"), password=PG_TEST_PASSWORD) as conn:
            conn.execute("CREATE TABLE t AS SELECT 1 AS x")
        out = subprocess.run(
            [pg_bin("pg_dump"), "-Fc", "-Z0", f"--dbname={server.url('app')}"],
            capture_output=True,
            check=True,
            env=env,
        ).stdout
        # Restoring over existing objects is what the fresh database exists to avoid.
        with pytest.raises(RestoreError) as info:
            pg_restore_stream([out], server.url("app"), env)
        message = str(info.value)
        assert "already exists" in message and "Fix: restore into a fresh" in message
        assert PG_TEST_PASSWORD not in message
        # Without the password, the connection error names the fix, again without secrets.
        with pytest.raises(RestoreError, match="Fix: check the user and password"):
            pg_restore_stream([out], server.url("app"), {"PATH": os.environ["PATH"]})
        with pytest.raises(RestoreError, match="already exists.*Fix: drop it"):
            create_database(admin, "app", env)
        # A password given in the DSN is moved to PGPASSWORD (argv is world-readable).
        create_database(admin, "app_copy", env)
        url = server.url("app_copy", with_password=True)
        pg_restore_stream([out], url, {"PATH": os.environ["PATH"]})
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT x FROM t").fetchall() == [(1,)]
    finally:
        drop_database(admin, "app", env)
        drop_database(admin, "app_copy", env)


def test_swap_refuses_to_overwrite_and_leaves_live_open(
    pg_server: PostgresServer, live_db: str
) -> None:
    admin = pg_server.url()
    create_database(admin, f"{live_db}_restored")
    create_database(admin, f"{live_db}_old")
    with pytest.raises(RestoreError, match="already exists. Fix: drop it"):
        swap_databases(admin, live_db, f"{live_db}_restored", f"{live_db}_old")
    with pytest.raises(RestoreError, match="admin_url points at database"):
        swap_databases(pg_server.url(live_db), live_db, f"{live_db}_restored", "other")
    with pg_server.connect(live_db) as conn:  # still accepting connections
        assert conn.execute("SELECT count(*) FROM users").fetchone() == (300,)


# ============================================================================================
# Files


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> list[bytes]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    return [raw[i : i + 4096] for i in range(0, len(raw), 4096)]


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> Any:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = mode
    return info


def _file(name: str, data: bytes = b"pwned\n") -> tuple[tarfile.TarInfo, bytes]:
    return _member(name), data


MALICIOUS = {
    "dotdot": ([_file("ok.txt"), _file("../evil")], "../evil", "'..'"),
    "absolute": ([_file("/abs/evil")], "/abs/evil", "absolute path"),
    "symlink-absolute": (
        [(_member("passwd", tarfile.SYMTYPE, "/etc/passwd"), None), _file("passwd")],
        "passwd",
        "link to absolute path",
    ),
    "symlink-relative-outside": (
        [(_member("up", tarfile.SYMTYPE, ".."), None), _file("up/evil")],
        "up",
        "outside the destination",
    ),
    # each link is inside when made; the second retargets the first one's path outside
    "symlink-retargeted": (
        [
            (_member("z", tarfile.DIRTYPE, mode=0o755), None),
            (_member("x", tarfile.SYMTYPE, "z/y/.."), None),
            (_member("z/y", tarfile.SYMTYPE, ".."), None),
            _file("x/evil"),
        ],
        "x/evil",
        "outside the destination",
    ),
    "hardlink-outside": (
        [(_member("hl", tarfile.LNKTYPE, "../outside.txt"), None)],
        "hl",
        "outside the destination",
    ),
    "hardlink-absolute": (
        [(_member("hl", tarfile.LNKTYPE, "/etc/passwd"), None)],
        "hl",
        "link to absolute path",
    ),
    "device": ([(_member("null", tarfile.CHRTYPE), None)], "null", "device file"),
    "fifo": ([(_member("pipe", tarfile.FIFOTYPE), None)], "pipe", "fifo"),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_tar_is_refused_and_nothing_lands_outside(server_tmp: Path, case: str) -> None:
    members, culprit, why = MALICIOUS[case]
    (server_tmp / "outside.txt").write_text("outside\n")
    passwd = Path("/etc/passwd").read_bytes()
    dest = server_tmp / "dest"
    with pytest.raises(RestoreError) as info:
        safe_extract(_tar(*members), dest)
    message = str(info.value)
    assert f"unsafe member {culprit!r}" in message and why in message
    assert sorted(os.listdir(server_tmp)) == ["dest", "outside.txt"]
    assert (server_tmp / "outside.txt").read_text() == "outside\n"
    assert not Path("/abs").exists()
    assert Path("/etc/passwd").read_bytes() == passwd


def _make_tree(root: Path) -> None:
    (root / "uploads" / "avatars").mkdir(parents=True)
    (root / "exports").mkdir()
    (root / "private").mkdir(mode=0o750)
    (root / "uploads" / "avatars" / "a.png").write_bytes(os.urandom(3 << 20))
    (root / "uploads" / "empty").write_bytes(b"")
    for name, mode in (("secret.key", 0o600), ("run.sh", 0o755), ("readme.txt", 0o644)):
        path = root / "private" / name
        path.write_text(name)
        path.chmod(mode)
    (root / "exports" / "2026.csv").write_text("a,b\n")
    (root / "exports" / "latest.csv").symlink_to("2026.csv")
    (root / "avatars").symlink_to("uploads/avatars")
    os.link(root / "exports" / "2026.csv", root / "exports" / "hardlink.csv")
    for d in (root, root / "uploads", root / "uploads" / "avatars", root / "exports"):
        d.chmod(0o755)
    (root / "private").chmod(0o750)


def test_good_tar_round_trips_and_replace_tree_makes_target_equal(server_tmp: Path) -> None:
    src = server_tmp / "src"
    src.mkdir()
    _make_tree(src)
    facts = FilesFacts(root=str(src))
    staged = server_tmp / "staged"
    counts = safe_extract(tar_stream(src, facts), staged)
    assert counts == {
        "files": facts.files,
        "bytes": facts.bytes,
        "dirs": facts.dirs,
        "symlinks": facts.symlinks,
    }
    assert tree_of(staged) == tree_of(src)
    assert tree_of(staged)["private/secret.key"][1] == 0o600
    assert tree_of(staged)["private/run.sh"][1] == 0o755

    target = server_tmp / "target"
    (target / "uploads").mkdir(parents=True)
    (target / "uploads" / "stale.bin").write_bytes(b"left over")
    (target / "private").write_text("a file where the backup has a directory")
    (target / "exports").mkdir()
    (target / "exports" / "2026.csv").write_text("changed since the backup")
    (target / "exports" / "2026.csv").chmod(0o666)
    target_ino = target.stat().st_ino

    staging = staging_dir_for(target)
    assert staging.parent == target.parent and staging.stat().st_mode & 0o777 == 0o700
    staging.rmdir()
    counts = safe_extract(tar_stream(src, FilesFacts(root=str(src))), staging)
    replace_tree(staging, target)
    assert tree_of(target) == tree_of(src)
    assert target.stat().st_ino == target_ino  # the same directory (it may be a mount point)
    assert not staging.exists()
    assert sorted(os.listdir(server_tmp)) == ["src", "staged", "target"]


def test_replace_tree_stops_on_a_previous_interrupted_run(server_tmp: Path) -> None:
    target = server_tmp / "target"
    (target / f"{TRASH_PREFIX}abc").mkdir(parents=True)
    (target / "keep.txt").write_text("live")
    new = server_tmp / "new"
    new.mkdir()
    with pytest.raises(RestoreError, match="interrupted replace_tree"):
        replace_tree(new, target)
    assert (target / "keep.txt").read_text() == "live"


def test_extract_reads_the_stream_to_its_end_and_refuses_a_non_empty_dest(
    server_tmp: Path,
) -> None:
    chunks = _tar(_file("a.txt", b"a" * 100))

    def verified_at_the_end() -> Iterator[bytes]:
        yield from chunks
        raise ValueError("checksum mismatch for 2026-11-24/files.tar.zst")

    with pytest.raises(ValueError, match="checksum mismatch"):
        safe_extract(verified_at_the_end(), server_tmp / "dest")
    with pytest.raises(RestoreError, match="is not empty"):
        safe_extract(iter(chunks), server_tmp / "dest")


# ============================================================================================
# Redis

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
            assert want - 10_000 < got <= want, key  # type: ignore[operator]
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
    if old is None or new is None:
        pytest.skip("needs both a Redis 6 and a Redis 7 binary")
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
