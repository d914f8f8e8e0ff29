"""PostgreSQL restore, the databases: creating the one a restore fills, dropping a failed one.

``CREATE``/``DROP DATABASE`` run over :func:`connect_admin`, a connection to a maintenance
database of the same server (never to the database being created or dropped, which
:func:`check_not_current` refuses). The dump is restored by
:func:`~twinme_ops.backups.restore.postgres.pg_restore_stream` and swapped in by
:func:`~twinme_ops.backups.restore.postgres_swap.swap_databases`.

No Dagster in this module: it is plain library code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twinme_ops.backups.restore.common import restore_error
from twinme_ops.common.redact import redact, register_secret
from twinme_ops.servers.postgres import connection_error_message

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql


def connect_admin(
    admin_url: str, env: Mapping[str, str] | None, application_name: str = "twinme_ops restore"
) -> psycopg.Connection[Any]:
    """An autocommit connection to a maintenance database, PGPASSWORD from ``env`` (masked in
    every message), a connection failure turned into a restore error with its fix."""
    import psycopg

    env = env or {}
    password = env.get("PGPASSWORD")
    register_secret(password)
    kwargs: dict[str, Any] = {"password": password} if password else {}
    try:
        return psycopg.connect(
            admin_url,
            autocommit=True,
            connect_timeout=int(env.get("PGCONNECT_TIMEOUT", "10")),
            application_name=application_name,
            **kwargs,
        )
    except psycopg.OperationalError as exc:
        raise restore_error(connection_error_message(redact(admin_url), exc)) from None


def check_not_current(conn: psycopg.Connection[Any], *names: str) -> None:
    """Refuse when ``conn`` is connected to one of ``names``: it cannot create, drop or rename
    the database it is connected to."""
    row = conn.execute("SELECT current_database()").fetchone()
    current = row[0] if row else ""
    if current in names:
        raise restore_error(
            f"PostgreSQL: admin_url points at database {current!r}, one of those being "
            "created, dropped or renamed. Fix: point admin_url at the maintenance database "
            "(postgres) of the same server."
        )


def _database_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
    )


def create_database(
    admin_url: str,
    name: str,
    env: Mapping[str, str] | None = None,
    *,
    owner: str | None = None,
    like: str | None = None,
) -> None:
    """``CREATE DATABASE name TEMPLATE template0``: an empty database to restore into.

    template0, because objects someone added to template1 would make the restore fail or leave
    extra objects. ``like`` copies the encoding and locale of an existing database (the live one)
    so that text sorts and indexes behave the same after the swap. Refuses an existing name.
    """
    import psycopg
    from psycopg import sql

    with connect_admin(admin_url, env) as conn:
        check_not_current(conn, name)
        if _database_exists(conn, name):
            raise restore_error(
                f"PostgreSQL: database {name!r} already exists, a restore needs a fresh one. "
                f"Fix: drop it first (drop_database) or choose another name."
            )
        parts: list[sql.Composable] = [
            sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
        ]
        if owner:
            parts.append(sql.SQL("OWNER {}").format(sql.Identifier(owner)))
        if like:
            parts.extend(_locale_options(conn, like))
        try:
            conn.execute(sql.SQL(" ").join(parts))
        except psycopg.Error as exc:
            raise restore_error(
                f"PostgreSQL: CREATE DATABASE {name!r} failed: {exc}. Fix: the admin user needs "
                "CREATEDB (or superuser) on the target server."
            ) from None


def _locale_options(conn: psycopg.Connection[Any], like: str) -> list[sql.Composable]:
    from psycopg import sql

    row = conn.execute(
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype, datlocprovider, datlocale "
        "FROM pg_database WHERE datname = %s",
        (like,),
    ).fetchone()
    if row is None:
        raise restore_error(
            f"PostgreSQL: database {like!r} (create_database like=) does not exist."
        )
    encoding, collate, ctype, provider, locale = row
    opts: list[sql.Composable] = [
        sql.SQL("ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            sql.Literal(encoding), sql.Literal(collate), sql.Literal(ctype)
        )
    ]
    if provider == "i":
        opts.append(
            sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(locale or "und"))
        )
    elif provider == "b":
        opts.append(
            sql.SQL("LOCALE_PROVIDER builtin BUILTIN_LOCALE {}").format(sql.Literal(locale))
        )
    else:
        opts.append(sql.SQL("LOCALE_PROVIDER libc"))
    return opts


def drop_database(admin_url: str, name: str, env: Mapping[str, str] | None = None) -> None:
    """``DROP DATABASE IF EXISTS name WITH (FORCE)``: its sessions are terminated first.

    Used to discard a failed or superseded restore (and old copies kept by
    :func:`~twinme_ops.backups.restore.postgres_swap.swap_databases`). A no-op when the database
    does not exist.
    """
    import psycopg
    from psycopg import sql

    with connect_admin(admin_url, env) as conn:
        check_not_current(conn, name)
        try:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        except psycopg.Error as exc:
            raise restore_error(
                f"PostgreSQL: DROP DATABASE {name!r} failed: {exc}. Fix: the admin user must own "
                "the database (or be superuser); prepared transactions, logical replication "
                "slots or subscriptions in it must be removed first."
            ) from None
