"""PostgreSQL restore, the switch-over: the restored database takes the live one's name.

:func:`swap_databases` copies to the restored database what a pg_dump archive does not hold
(the live database's owner, grants and ``ALTER DATABASE ... SET`` settings), blocks new
connections, ends the sessions, then renames both databases in one transaction: clients see the
old database or the new one, never neither nor a mix. The restored database comes from
:func:`~twinme_ops.backups.restore.postgres.pg_restore_stream` into a database made by
:func:`~twinme_ops.backups.restore.postgres_databases.create_database`.

No Dagster in this module: it is plain library code.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twinme_ops.backups.restore.common import restore_error
from twinme_ops.backups.restore.postgres_databases import check_not_current, connect_admin

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql


def swap_databases(
    admin_url: str,
    live: str,
    restored: str,
    keep_old_as: str,
    env: Mapping[str, str] | None = None,
    *,
    copy_properties: bool = True,
    timeout: float = 60.0,
) -> None:
    """Put the restored database in place of the live one; keep the live one as ``keep_old_as``.

    Steps: copy the live database's owner, grants and ``ALTER DATABASE ... SET`` settings to the
    restored one (they are not in a pg_dump archive); refuse new connections to both databases
    (``ALLOW_CONNECTIONS false``); terminate their sessions; then, in one transaction, rename
    ``live`` -> ``keep_old_as`` and ``restored`` -> ``live`` and let connections in again. The
    renames are atomic: clients see the old database or the new one, never neither nor a mix.

    If anything fails before the renames commit, connections to ``live`` are allowed again and
    nothing is renamed. If the process dies between blocking and renaming, ``live`` refuses
    connections until someone re-runs the swap or runs ``ALTER DATABASE live ALLOW_CONNECTIONS
    true``. Logical replication slots of ``live`` stay with ``keep_old_as`` (they are per
    database oid): recreate subscriptions after a recovery.
    """
    import psycopg

    names = {live, restored, keep_old_as}
    if len(names) != 3:
        raise ValueError("live, restored and keep_old_as must be three different names")
    with connect_admin(admin_url, env) as conn:
        check_not_current(conn, *names)
        allow = dict(
            conn.execute(
                "SELECT datname, datallowconn FROM pg_database WHERE datname = ANY(%s)",
                (list(names),),
            ).fetchall()
        )
        if restored not in allow:
            raise restore_error(f"PostgreSQL swap: restored database {restored!r} does not exist.")
        if live not in allow:
            raise restore_error(
                f"PostgreSQL swap: live database {live!r} does not exist. Fix: check the name; "
                f"if it is really gone, rename {restored!r} to it yourself."
            )
        if keep_old_as in allow:
            raise restore_error(
                f"PostgreSQL swap: {keep_old_as!r} already exists. Fix: drop it (drop_database) "
                "or choose another keep_old_as; the swap never overwrites a database."
            )
        if copy_properties:
            _copy_database_properties(conn, live, restored)
        blocked: list[str] = []
        try:
            for name in (live, restored):
                _allow_connections(conn, name, False)
                blocked.append(name)
            _rename_when_idle(conn, live, restored, keep_old_as, bool(allow[live]), timeout)
        except BaseException:
            # Nothing was renamed: give both databases back their own connection setting.
            for name in blocked:
                with contextlib.suppress(psycopg.Error):
                    _allow_connections(conn, name, bool(allow[name]))
            raise


def _allow_connections(conn: psycopg.Connection[Any], name: str, allowed: bool) -> None:
    from psycopg import sql

    conn.execute(
        sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
            sql.Identifier(name), sql.SQL("true" if allowed else "false")
        )
    )


def _rename_when_idle(
    conn: psycopg.Connection[Any],
    live: str,
    restored: str,
    keep_old_as: str,
    live_allowed: bool,
    timeout: float,
) -> None:
    import psycopg
    from psycopg import sql

    deadline = time.monotonic() + timeout
    last = ""
    while True:
        # Sessions (autovacuum workers included) that were already in keep coming until the
        # block is committed; terminating is asynchronous, so retry the renames until it worked.
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
            ([live, restored],),
        )
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(live), sql.Identifier(keep_old_as)
                    )
                )
                conn.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(restored), sql.Identifier(live)
                    )
                )
                _allow_connections(conn, live, live_allowed)
                # The old copy is kept for inspection (and a swap back), so it may be opened.
                _allow_connections(conn, keep_old_as, True)
            return
        except psycopg.errors.ObjectInUse as exc:
            last = str(exc)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise restore_error(
                f"PostgreSQL swap of {live!r}: {exc}. Fix: the admin user must own both "
                "databases (or be superuser) and be allowed to terminate their sessions "
                "(pg_signal_backend)."
            ) from None
        if time.monotonic() > deadline:
            raise restore_error(
                f"PostgreSQL swap: sessions on {live!r}/{restored!r} did not end within "
                f"{timeout:.0f} s ({last.strip()}). Fix: stop the clients (scale the API to 0), "
                "check for prepared transactions, and re-run."
            )
        time.sleep(0.1)


def _copy_database_properties(conn: psycopg.Connection[Any], live: str, restored: str) -> None:
    """Owner, grants and ``ALTER DATABASE SET`` settings: database state pg_dump does not save."""
    from psycopg import sql

    row = conn.execute(
        "SELECT pg_get_userbyid(datdba), datacl IS NULL FROM pg_database WHERE datname = %s",
        (live,),
    ).fetchone()
    assert row is not None
    owner, default_acl = row
    target = sql.Identifier(restored)
    conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(target, sql.Identifier(owner)))
    if not default_acl:
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(target))
        grants = conn.execute(
            "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, "
            "a.privilege_type, a.is_grantable "
            "FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s",
            (live,),
        ).fetchall()
        for grantee, privilege, grantable in grants:
            conn.execute(
                sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                    sql.SQL(privilege),  # from aclexplode: CREATE, TEMPORARY or CONNECT
                    target,
                    sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee),
                    sql.SQL(" WITH GRANT OPTION" if grantable else ""),
                )
            )
    settings = conn.execute(
        "SELECT unnest(s.setconfig) FROM pg_db_role_setting s "
        "JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = %s AND s.setrole = 0",
        (live,),
    ).fetchall()
    for (entry,) in settings:
        name, _, value = str(entry).partition("=")
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                target, sql.Identifier(name), _setting_value(name, value)
            )
        )


def _setting_value(name: str, value: str) -> sql.Composable:
    """A stored setting as SQL: list settings (search_path...) are one literal per element."""
    from psycopg import sql

    if name.lower() not in _LIST_SETTINGS:
        return sql.Literal(value)
    return sql.SQL(", ").join(sql.Literal(item) for item in _split_setting_list(value))


# GUC_LIST_QUOTE settings: stored as a comma-separated list of (maybe double-quoted) items
_LIST_SETTINGS = {
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "local_preload_libraries",
    "shared_preload_libraries",
    "unix_socket_directories",
}


def _split_setting_list(value: str) -> list[str]:
    items: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t":
            i += 1
        if i < n and value[i] == '"':
            i += 1
            item = []
            while i < n:
                if value[i] == '"':
                    if i + 1 < n and value[i + 1] == '"':
                        item.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                item.append(value[i])
                i += 1
            items.append("".join(item))
            while i < n and value[i] != ",":
                i += 1
        else:
            start = i
            while i < n and value[i] != ",":
                i += 1
            items.append(value[start:i].strip())
        i += 1  # the comma
    return items
