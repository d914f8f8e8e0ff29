"""PostgreSQL's roles: pg_dumpall --globals-only taken from one server, replayed on another that
already has some of them; existing roles are kept as they are, real errors are not hidden."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from twinme_ops.backups.restore.common import RestoreError
from twinme_ops.backups.restore.postgres_globals import restore_globals, without_existing_roles
from twinme_ops.scratch.postgres import PostgresServer
from twinme_ops.servers.postgres import PostgresError, PostgresResource
from twinme_ops.servers.postgres_globals import globals_dump

SOURCE_ROLES = (
    "CREATE ROLE twinme_reader NOLOGIN",
    'CREATE ROLE "Ops ""Team""" NOLOGIN',
    "CREATE ROLE twinme_api LOGIN PASSWORD 'api-Passw0rd-in-globals' CONNECTION LIMIT 20",
    "GRANT twinme_reader TO twinme_api",
    "ALTER ROLE twinme_api SET statement_timeout = '5s'",
    "COMMENT ON ROLE twinme_reader IS 'read-only access'",
)


@pytest.fixture(scope="module")
def servers(server_tmp_root: Path) -> Iterator[tuple[PostgresServer, Path]]:
    base = Path(tempfile.mkdtemp(prefix="pg-globals-", dir=server_tmp_root))
    base.chmod(0o755)
    source = PostgresServer.start(base / "source")
    try:
        with source.connect() as conn:
            for statement in SOURCE_ROLES:
                conn.execute(statement.encode())
        yield source, base
    finally:
        source.stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def target(servers: tuple[PostgresServer, Path], request: pytest.FixtureRequest):
    base = servers[1] / f"target-{request.node.name[:30]}"
    server = PostgresServer.start(base)
    yield server
    server.stop(mode="immediate")


def _dump(source: PostgresServer, passwords: bool = False) -> tuple[bytes, list[str]]:
    with globals_dump(PostgresResource(url=source.url()), passwords=passwords) as (chunks, facts):
        return b"".join(chunks), facts.roles


def _roles(server: PostgresServer) -> dict[str, tuple[bool, int]]:
    with server.connect() as conn:
        rows = conn.execute(
            "SELECT rolname, rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname !~ '^pg_'"
        ).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def test_dump_lists_every_role_without_password_hashes(
    servers: tuple[PostgresServer, Path],
) -> None:
    script, roles = _dump(servers[0])
    assert roles == sorted(['Ops "Team"', "postgres", "twinme_api", "twinme_reader"])
    text = script.decode()
    assert "PASSWORD" not in text and "SCRAM-SHA-256" not in text
    assert "GRANT twinme_reader TO twinme_api" in text
    with_hashes, _ = _dump(servers[0], passwords=True)
    assert b"SCRAM-SHA-256" in with_hashes


def test_roles_come_back_and_existing_ones_are_kept(
    servers: tuple[PostgresServer, Path], target: PostgresServer
) -> None:
    script, roles = _dump(servers[0])
    with target.connect() as conn:  # a role the target already has, with other attributes
        conn.execute("CREATE ROLE twinme_api LOGIN CONNECTION LIMIT 3")
    outcome = restore_globals(iter([script]), target.url())
    assert sorted(outcome.created) == sorted(['Ops "Team"', "twinme_reader"])
    assert sorted(outcome.kept) == ["postgres", "twinme_api"]
    got = _roles(target)
    assert set(roles) <= set(got)
    assert got["twinme_api"] == (True, 3)  # kept as it was, not reset to the backup's
    assert got["twinme_reader"] == (False, -1)
    with target.connect() as conn:
        member = conn.execute("SELECT pg_has_role('twinme_api', 'twinme_reader', 'MEMBER')")
        assert member.fetchone() == (True,)
        comment = conn.execute(
            "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles "
            "WHERE rolname = 'twinme_reader'"
        ).fetchone()
        assert comment == ("read-only access",)
    # a second replay changes nothing and does not fail
    again = restore_globals(iter([script]), target.url())
    assert again.created == [] and len(again.kept) == 4


def test_a_real_error_fails_and_applies_nothing(
    servers: tuple[PostgresServer, Path], target: PostgresServer
) -> None:
    script, _ = _dump(servers[0])
    broken = script + b"\nGRANT no_such_role TO twinme_api;\n"
    with pytest.raises(RestoreError) as failed:
        restore_globals(iter([broken]), target.url())
    message = str(failed.value)
    assert 'role "no_such_role" does not exist' in message and "Fix:" in message
    assert "twinme_reader" not in _roles(target)  # one transaction: nothing stayed


def test_a_role_without_createrole_is_told_the_fix(
    servers: tuple[PostgresServer, Path], target: PostgresServer
) -> None:
    script, _ = _dump(servers[0])
    with target.connect() as conn:
        conn.execute("CREATE ROLE restorer LOGIN")
    with pytest.raises(RestoreError, match="CREATEROLE"):
        restore_globals(iter([script]), target.url(user="restorer"))


def test_only_single_statements_about_existing_roles_are_skipped() -> None:
    script = (
        "CREATE ROLE app;\n"
        "ALTER ROLE app WITH NOSUPERUSER LOGIN;\n"
        "ALTER ROLE app SET search_path TO app;\n"
        "COMMENT ON ROLE app IS 'x';\n"
        "CREATE ROLE apple;\n"
        "GRANT app TO apple;\n"
    )
    kept, outcome = without_existing_roles(script, {"app"})
    assert kept == "CREATE ROLE apple;\nGRANT app TO apple;\n"
    assert outcome.kept == ["app"] and outcome.created == ["apple"]
    assert outcome.skipped_statements == 4


def test_dump_failure_names_the_fix(servers: tuple[PostgresServer, Path]) -> None:
    source = servers[0]
    with source.connect() as conn:
        conn.execute("DROP ROLE IF EXISTS plain_user")
        conn.execute("CREATE ROLE plain_user LOGIN")
    # reading password hashes needs a superuser
    pg = PostgresResource(url=source.url(user="plain_user"))
    with (
        pytest.raises(PostgresError, match="role_passwords: false"),
        globals_dump(pg, passwords=True),
    ):
        pass
