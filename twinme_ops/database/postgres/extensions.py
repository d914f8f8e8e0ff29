"""PostgreSQL extensions as declared state: ``CREATE EXTENSION`` what is missing, drift.

The TwinMe database needs ``vector`` (pgvector) and ``pg_trgm``. :func:`ensure_extensions`
creates the ones missing from the connected database; an extension the server cannot provide
raises :class:`MissingExtensionError` with what the server offers and how to install it.
:func:`extensions_drift` changes nothing. No Dagster in this module.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twinme_ops.common.log import Log
from twinme_ops.database.convergence import ConvergeReport
from twinme_ops.database.postgres.objects import first_line

if TYPE_CHECKING:
    import psycopg

TARGET_EXTENSIONS = "postgres_extensions"


class MissingExtensionError(RuntimeError):
    """The server cannot create an extension: it is not installed on the server's file system."""


INSTALL_HINTS = {
    "vector": (
        "pgvector is not installed on this server. Self-hosted: install the package "
        "postgresql-{major}-pgvector (Debian/Ubuntu, PGDG repository) or pgvector_{major} "
        "(RHEL), or build it from github.com/pgvector/pgvector. Managed service: enable 'vector' "
        "in its extension allow-list (e.g. Azure azure.extensions; RDS and Cloud SQL ship it). "
        "No shared_preload_libraries entry is needed."
    ),
    "pg_trgm": (
        "pg_trgm is part of PostgreSQL's contrib modules: install postgresql-contrib (RHEL "
        "postgresql{major}-contrib; Debian's postgresql-{major} already contains it). Managed "
        "service: enable 'pg_trgm' in its extension allow-list."
    ),
}


def missing_extension_message(name: str, available: list[str], server_major: int) -> str:
    """Why ``name`` cannot be created, what the server offers instead, and how to install it."""
    stem = name.replace("pg", "").strip("_") or name
    similar = sorted(a for a in available if stem in a or (len(a) >= 4 and a in name))
    similar += [a for a in difflib.get_close_matches(name, available, n=3) if a not in similar]
    if similar:
        offered = f"similar names it offers: {', '.join(similar)}"
    else:
        shown = sorted(available)[:15]
        more = f", ... ({len(available)} in all)" if len(available) > len(shown) else ""
        offered = f"it offers: {', '.join(shown)}{more}" if shown else "it offers no extension"
    hint = INSTALL_HINTS.get(
        name,
        "install the extension's package for PostgreSQL {major} on the server, or enable it in "
        "the managed service's extension allow-list.",
    ).format(major=server_major)
    return (
        f"extension {name!r} is not available on this server (pg_available_extensions; "
        f"{offered}). {hint}"
    )


def _server_major(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    return int(row[0]) // 10000 if row else 0


def _extension_states(
    conn: psycopg.Connection[Any], names: Iterable[str]
) -> tuple[dict[str, str], dict[str, tuple[str, str | None]]]:
    """(installed name -> version, available name -> (default_version, installed_version))."""
    installed = {
        str(r[0]): str(r[1])
        for r in conn.execute(
            "SELECT extname, extversion FROM pg_extension WHERE extname = ANY(%s)", (list(names),)
        ).fetchall()
    }
    available = {
        str(r[0]): (str(r[1]), r[2])
        for r in conn.execute(
            "SELECT name, default_version, installed_version FROM pg_available_extensions"
        ).fetchall()
    }
    return installed, available


def ensure_extensions(
    conn: psycopg.Connection[Any],
    names: Iterable[str] = ("vector", "pg_trgm"),
    log: Log | None = None,
) -> ConvergeReport:
    """Create the extensions missing from the connected database (``CREATE EXTENSION``).

    Nothing runs for an extension already there. An extension the server cannot provide raises
    :class:`MissingExtensionError` before anything is created, listing what
    ``pg_available_extensions`` offers and how to install it. An installed extension older than
    the server's default version gets a note (``ALTER EXTENSION ... UPDATE`` is left to a person:
    it can rewrite indexes).
    """
    import psycopg
    from psycopg import sql

    names = list(dict.fromkeys(names))
    report = ConvergeReport()
    installed, available = _extension_states(conn, names)
    missing = [n for n in names if n not in installed and n not in available]
    if missing:
        major = _server_major(conn)
        raise MissingExtensionError(
            " ".join(missing_extension_message(n, sorted(available), major) for n in missing)
        )
    for name in names:
        if name in installed:
            default_version = available.get(name, (installed[name], None))[0]
            if default_version != installed[name]:
                report.notes.append(
                    f"extension {name} {installed[name]} is installed; the server offers "
                    f"{default_version} (ALTER EXTENSION {name} UPDATE)"
                )
            continue
        stmt = sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(name))
        text = stmt.as_string(conn)
        try:
            conn.execute(stmt)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise MissingExtensionError(
                f"not allowed to create extension {name!r} ({first_line(exc)}): connect as "
                "the database owner or a superuser, or ask the service to allow it"
            ) from None
        report.add(TARGET_EXTENSIONS, text, log)
    return report


def extensions_drift(
    conn: psycopg.Connection[Any], names: Iterable[str] = ("vector", "pg_trgm")
) -> list[str]:
    """Extensions missing from the connected database, one sentence each; empty when converged."""
    names = list(dict.fromkeys(names))
    installed, available = _extension_states(conn, names)
    row = conn.execute("SELECT current_database()").fetchone()
    database = row[0] if row else "?"
    drift = []
    for name in names:
        if name in installed:
            continue
        if name in available:
            drift.append(f"extension {name} is not installed in database {database}")
        else:
            drift.append(
                f"extension {name} is not installed in database {database}, and the server "
                "cannot provide it (not in pg_available_extensions)"
            )
    return drift


__all__ = [
    "MissingExtensionError",
    "ensure_extensions",
    "extensions_drift",
    "missing_extension_message",
]
