"""PostgreSQL settings, converged: ``ALTER SYSTEM`` only what differs, reload once.

:func:`converge_settings` acts on :func:`~twinme_ops.database.postgres.settings.drift.assess`:
it writes the settings whose configured value differs, reloads the configuration once (waiting
until the server has re-read it), and lists the settings that only a restart applies: it never
restarts the server. ``shared_preload_libraries`` is never managed; a ``'vector'`` left in it by
the spec's setup script gets a note.

The connection must be in autocommit mode (``ALTER SYSTEM`` cannot run in a transaction block).
No Dagster in this module.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from twinme_ops.common.log import Log
from twinme_ops.database.convergence import ConvergeReport
from twinme_ops.database.postgres.objects import first_line
from twinme_ops.database.postgres.settings.declared import refuse_unmanaged
from twinme_ops.database.postgres.settings.drift import ALTER, OVERRIDDEN, RELOAD, assess
from twinme_ops.database.postgres.settings.live import (
    SettingsError,
    file_errors,
    preload_libraries,
    read_settings,
)

if TYPE_CHECKING:
    import psycopg

TARGET_SETTINGS = "postgres_settings"
RELOAD_WAIT_S = 10.0


def _wait_for_reload(conn: psycopg.Connection[Any], before: Any) -> None:
    """pg_reload_conf() only signals the postmaster: wait until this session re-read the files."""
    deadline = time.monotonic() + RELOAD_WAIT_S
    while time.monotonic() < deadline:
        row = conn.execute("SELECT pg_conf_load_time()").fetchone()
        if row and row[0] > before:
            return
        time.sleep(0.02)
    raise SettingsError(
        f"the server did not reload its configuration within {RELOAD_WAIT_S:.0f} s after "
        "pg_reload_conf(); check the server log for configuration file errors"
    )


def _reload(conn: psycopg.Connection[Any], report: ConvergeReport, log: Log | None) -> None:
    row = conn.execute("SELECT pg_conf_load_time()").fetchone()
    before = row[0] if row else None
    conn.execute("SELECT pg_reload_conf()")
    report.add(TARGET_SETTINGS, "SELECT pg_reload_conf()", log)
    if before is not None:
        _wait_for_reload(conn, before)


def converge_settings(
    conn: psycopg.Connection[Any], desired: Mapping[str, str], log: Log | None = None
) -> ConvergeReport:
    """Bring the server's settings to ``desired``: ALTER SYSTEM only what differs, reload once.

    A setting already set in the configuration files to the desired value is not written again
    (so a value waiting for a restart does not cause a change on every run). After the reload,
    settings that only a restart applies (context ``postmaster``, or ``pending_restart``) are
    listed in ``report.pending_restart``: this function never restarts the server. Values are
    compared normalized ('256MB' equals 32768 x 8kB, 'on' equals 'true').

    Raises :class:`UnknownSettingError` for a name the server does not know (before changing
    anything), :class:`SettingsError` when ALTER SYSTEM is refused or a value is invalid.
    """
    import psycopg
    from psycopg import sql

    refuse_unmanaged(desired)
    if not conn.autocommit:
        raise SettingsError(
            "converge_settings needs an autocommit connection: ALTER SYSTEM "
            "cannot run inside a transaction block"
        )
    report = ConvergeReport()
    names = list(desired)
    states = read_settings(conn, names)
    needs_reload = False
    for name, want in desired.items():
        state = states[name]
        status, message = assess(want, state)
        if status == ALTER:
            stmt = sql.SQL("ALTER SYSTEM SET {} = {}").format(
                sql.Identifier(name), sql.Literal(str(want))
            )
            text = stmt.as_string(conn)
            try:
                conn.execute(stmt)
            except psycopg.Error as exc:
                if needs_reload:
                    # Apply what was already written, so the files and the server agree
                    _reload(conn, report, log)
                if isinstance(exc, psycopg.errors.InsufficientPrivilege):
                    raise SettingsError(
                        f"ALTER SYSTEM SET {name} was refused ({first_line(exc)}). A managed "
                        "service usually forbids ALTER SYSTEM: set the value in its parameter "
                        "group (or GRANT ALTER SYSTEM ON PARAMETER to this role)"
                    ) from None
                raise SettingsError(f"cannot set {name} to {want!r}: {first_line(exc)}") from None
            report.add(TARGET_SETTINGS, text, log, detail=f"{state.display} -> {want}")
            needs_reload = True
        elif status == RELOAD:
            needs_reload = True
        elif status == OVERRIDDEN:
            report.notes.append(message)
    if needs_reload:
        _reload(conn, report, log)
        errors = file_errors(conn, names)
        if errors:
            raise SettingsError(
                "the configuration files hold values the server rejected: " + "; ".join(errors)
            )
        states = read_settings(conn, names)
    for name, want in desired.items():
        state = states[name]
        if state.pending_restart or (state.restart_only and not state.same(want, state.setting)):
            report.pending_restart.append(name)
    if report.pending_restart:
        report.notes.append(
            "waiting for a server restart (this tool never restarts the server): "
            + ", ".join(report.pending_restart)
        )
    if "vector" in preload_libraries(conn):
        report.notes.append(
            "shared_preload_libraries contains 'vector' (from the spec's setup script): pgvector "
            "does not need it; this tool leaves it alone"
        )
    return report


__all__ = ["RELOAD_WAIT_S", "TARGET_SETTINGS", "converge_settings"]
