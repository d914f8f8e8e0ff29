"""The databases a PostgreSQL recovery creates, renames and leaves behind, on the live server.

A recovery restores set X into ``<db>__restore_<stamp>``, then renames the live database to
``<db>__pre_recovery_<stamp>`` (kept, documented: the way back) and the restored one to ``<db>``.
The ``CREATE``/``DROP``/``RENAME DATABASE`` statements run from another database of the same
server (PostgreSQL cannot rename the database a session is connected to):

- :func:`maintenance_url`: ``postgres``, or ``template1`` when the live database is itself
  named ``postgres`` (connecting to template1 only stops others from using it as a ``CREATE
  DATABASE`` template meanwhile; the restore itself copies template0);
- :func:`check_maintenance_access`: the recovery's preflight connects there and checks the role
  may create databases and owns the live one, before the safety backup and the scale-down;
- :func:`restore_lock`: while a recovery owns ``<db>__restore_<stamp>``, it holds a session
  advisory lock named after it in the maintenance database;
- :func:`drop_restore_leftovers`: a later recovery drops the ``<db>__restore_<stamp>`` databases
  a killed recovery left, but only those older than its own, with no session, whose lock it can
  take (so not one a recovery running elsewhere is still filling). ``<db>__pre_recovery_<stamp>``
  copies never match and are never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from twinme_ops.backups.restore.common import restore_error
from twinme_ops.backups.restore.postgres_databases import connect_admin
from twinme_ops.common.redact import redact

if TYPE_CHECKING:
    import psycopg

MAINTENANCE_DATABASES = ("postgres", "template1")
RESTORE_INFIX = "__restore_"
PRE_RECOVERY_INFIX = "__pre_recovery_"
# RecoveryState.stamp: UTC, sortable as text
STAMP = r"\d{8}T\d{6}Z"
_MAX_NAME = 63  # NAMEDATALEN - 1: longer names are truncated by PostgreSQL


def restore_database_name(live: str, stamp: str) -> str:
    """Where a recovery stamped ``stamp`` restores ``live`` before the swap."""
    return f"{live}{RESTORE_INFIX}{stamp}"[:_MAX_NAME]


def pre_recovery_name(live: str, stamp: str) -> str:
    """What the live database is renamed to by the swap (kept: the way back)."""
    return f"{live}{PRE_RECOVERY_INFIX}{stamp}"[:_MAX_NAME]


def maintenance_url(url: str, live: str) -> str:
    """The same server's maintenance database for ``url``, never ``live`` itself."""
    name = next(db for db in MAINTENANCE_DATABASES if db != live)
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


def _connect(admin_url: str, env: Mapping[str, str] | None) -> psycopg.Connection[Any]:
    return connect_admin(admin_url, env, application_name="twinme_ops recovery")


def check_maintenance_access(admin_url: str, live: str, env: Mapping[str, str] | None) -> None:
    """Refuse (``RestoreError``) unless the restore's steps can run from ``admin_url``.

    They need a connection to the maintenance database, a role that may create databases
    (``CREATEDB``) and that owns ``live`` (rename, copy of its settings), or a superuser.
    """
    with _connect(admin_url, env) as conn:
        row = conn.execute(
            "SELECT current_user, r.rolsuper, r.rolcreatedb, "
            "(SELECT pg_has_role(current_user, d.datdba, 'USAGE') "
            " FROM pg_database d WHERE d.datname = %s) "
            "FROM pg_roles r WHERE r.rolname = current_user",
            (live,),
        ).fetchone()
    assert row is not None
    user, superuser, createdb, owns = row
    where = redact(admin_url)
    if owns is None:
        raise restore_error(
            f"PostgreSQL: database {live!r} does not exist on the server of {where}. "
            "Fix: check the database name in DATABASE_URL (or target_database_url)."
        )
    if not (superuser or createdb):
        raise restore_error(
            f"PostgreSQL: role {user!r} may not create databases, and the recovery restores "
            f"into a new database next to {live!r}. Fix: ALTER ROLE {user} CREATEDB (or "
            "recover as the database owner that has it)."
        )
    if not (superuser or owns):
        raise restore_error(
            f"PostgreSQL: role {user!r} does not own database {live!r}, which the recovery "
            f"renames to {pre_recovery_name(live, '<stamp>')}. Fix: recover as its owner (or "
            f"GRANT the owner role to {user})."
        )


def _lock_key(name: str) -> int:
    """The advisory lock (signed 64 bits) that says a recovery owns restore database ``name``."""
    digest = hashlib.sha256(f"twinme_ops restore database {name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def restore_lock(
    admin_url: str, name: str, env: Mapping[str, str] | None = None
) -> Iterator[psycopg.Connection[Any]]:
    """Hold the advisory lock of restore database ``name`` in the maintenance database.

    Taken before the database is created and held until it is renamed or dropped: a session
    lock ends with its session, so a killed recovery leaves a database nobody holds.
    """
    conn = _connect(admin_url, env)
    try:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (_lock_key(name),)).fetchone()
        if not (row and row[0]):
            raise restore_error(
                f"PostgreSQL: another recovery holds restore database {name!r}. Fix: wait for "
                "it to end (one recovery at a time)."
            )
        yield conn
    finally:
        conn.close()


@dataclass
class Leftovers:
    """What :func:`drop_restore_leftovers` dropped, and what it kept and why."""

    dropped: list[str] = field(default_factory=list)
    kept: dict[str, str] = field(default_factory=dict)


def drop_restore_leftovers(
    admin_url: str, live: str, before_stamp: str, env: Mapping[str, str] | None = None
) -> Leftovers:
    """Drop ``<live>__restore_<stamp>`` databases of recoveries that did not finish.

    Only those with a stamp older than ``before_stamp`` (the current recovery's), no client
    session, and whose :func:`restore_lock` no recovery holds. Nothing else matches: the live
    database, its ``__pre_recovery_`` copies and other databases are never considered.
    """
    import psycopg
    from psycopg import sql

    pattern = re.compile(re.escape(live + RESTORE_INFIX) + f"({STAMP})")
    found = Leftovers()
    with _connect(admin_url, env) as conn:
        names = [r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()]
        for name in sorted(names):
            match = pattern.fullmatch(name)
            if not match or match.group(1) >= before_stamp:
                continue
            sessions = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = %s AND backend_type = 'client backend'",
                (name,),
            ).fetchone()
            if sessions and sessions[0]:
                found.kept[name] = f"{sessions[0]} session(s) connected"
                continue
            key = _lock_key(name)
            locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            if not (locked and locked[0]):
                found.kept[name] = "a recovery running elsewhere holds it"
                continue
            try:
                # no FORCE: a session that connected since the check makes this fail, and then
                # the database is kept
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
                found.dropped.append(name)
            except psycopg.Error as exc:
                found.kept[name] = f"DROP DATABASE failed: {redact(str(exc)).strip()}"
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
    return found
