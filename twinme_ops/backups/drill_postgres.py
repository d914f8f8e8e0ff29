"""The PostgreSQL part of a restore drill: roles first, then the dump, on a scratch server.

When the set has a ``globals`` artifact (every set since roles are backed up), its roles are
restored first, every role of the source must then exist, and the dump is restored with its
owners and grants, which must match the source's grants on tables. Older sets restore without
ownership or grants, after creating the roles their row-level-security policies name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from twinme_ops.backups.restore.postgres import pg_restore_stream
from twinme_ops.backups.restore.postgres_globals import restore_globals
from twinme_ops.common.log import Log
from twinme_ops.common.redact import redact
from twinme_ops.scratch.postgres import PostgresServer
from twinme_ops.servers.postgres import table_grants

DRILL_DB = "twinme_drill"
# The scratch server is thrown away after the drill: durability buys nothing there. With
# wal_level=minimal, pg_restore's single transaction writes table data without WAL.
SCRATCH_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
    "autovacuum": "off",
    "maintenance_work_mem": "256MB",
}


class DrillRefused(RuntimeError):
    """The drill would touch something it must never touch (the production database)."""


class RolesFailed(RuntimeError):
    """The set's PostgreSQL roles did not restore (reported as the ``globals`` failure)."""


def same_database(a: str, b: str) -> bool:
    """Whether two PostgreSQL URLs name the same database on the same server."""
    pa, pb = urlsplit(a), urlsplit(b)
    host = {"localhost": "127.0.0.1"}
    return (
        host.get(pa.hostname or "", pa.hostname) == host.get(pb.hostname or "", pb.hostname)
        and (pa.port or 5432) == (pb.port or 5432)
        and pa.path.strip("/") == pb.path.strip("/")
    )


def restore_roles(
    server: PostgresServer,
    roles: tuple[Callable[[], Iterator[bytes]], dict[str, Any]],
    log: Log,
) -> dict[str, Any]:
    """The set's roles onto the scratch server, then check that every role of the source exists."""
    read, source = roles
    try:
        outcome = restore_globals(read(), server.url("postgres"))
        with server.connect() as conn:
            present = {str(r[0]) for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
    except Exception as exc:
        raise RolesFailed(str(exc)) from exc
    missing = sorted(set(source.get("roles", [])) - present)
    if missing:
        raise RolesFailed(
            f"{len(missing)} role(s) of the source missing after the restore: "
            f"{', '.join(missing[:10])}"
        )
    log.info(
        f"postgres: {len(source.get('roles', []))} roles restored "
        f"({len(outcome.created)} created, {len(outcome.kept)} already there)"
    )
    return {"roles": len(source.get("roles", [])), "roles_created": len(outcome.created)}


def verify_postgres(
    chunks: Iterator[bytes],
    source: dict[str, Any],
    workdir: Path,
    production_database_url: str | None,
    log: Log,
    *,
    roles: tuple[Callable[[], Iterator[bytes]], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    from psycopg import sql

    server = PostgresServer.start(workdir / "postgres", settings=SCRATCH_SETTINGS)
    try:
        target = server.url(DRILL_DB)
        if production_database_url and same_database(target, production_database_url):
            raise DrillRefused(
                f"refusing to restore a drill into {redact(target)}: it is the DATABASE_URL "
                "database. Fix: drills restore into scratch servers only."
            )
        with server.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DRILL_DB)))
        restored_roles: dict[str, Any] = {}
        if roles is not None:
            # roles first: the dump's owners and grants then resolve, as on the source
            restored_roles = restore_roles(server, roles, log)
        else:
            # a set taken before roles were backed up: create the roles policies name (no
            # login), and restore data and schema without ownership or grants
            with server.connect() as conn:
                for role in source.get("policy_roles", []):
                    conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        with_roles = roles is not None
        pg_restore_stream(chunks, target, no_owner=not with_roles, no_privileges=not with_roles)
        mismatches: list[str] = []
        restored: dict[str, int] = {}
        with server.connect(DRILL_DB) as conn:
            for table, expected in sorted(source["tables"].items()):
                schema, name = table.split(".", 1)
                query = sql.SQL("SELECT count(*) FROM {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(name)
                )
                row = conn.execute(query).fetchone()
                got = int(row[0]) if row else -1
                restored[table] = got
                if got != expected:
                    mismatches.append(f"{table}: {got} rows, manifest says {expected}")
            if with_roles and "table_grants" in source:
                got_grants = table_grants(conn)
                if got_grants != source["table_grants"]:
                    mismatches.append(
                        f"grants on tables differ: restored {got_grants}, manifest says "
                        f"{source['table_grants']}"
                    )
            neighbours = 0
            if source["tables"].get("public.document_chunks", 0) > 0:
                row = conn.execute(
                    "SELECT count(*) FROM (SELECT id FROM document_chunks ORDER BY embedding <-> "
                    "(SELECT embedding FROM document_chunks ORDER BY id LIMIT 1) LIMIT 5) n"
                ).fetchone()
                neighbours = int(row[0]) if row else 0
                if neighbours == 0:
                    mismatches.append("pgvector nearest-neighbour search returned no rows")
        if mismatches:
            raise RuntimeError("row counts differ: " + "; ".join(mismatches[:5]))
        log.info(f"postgres: {sum(restored.values()):,} rows in {len(restored)} tables match")
        return {
            "tables": len(restored),
            "rows": sum(restored.values()),
            "knn_rows": neighbours,
            **restored_roles,
        }
    finally:
        server.stop(mode="immediate")
