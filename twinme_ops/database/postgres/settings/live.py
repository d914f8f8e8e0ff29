"""PostgreSQL settings, live: what the server applies (``pg_settings``) and what its files hold.

:func:`read_settings` gives one :class:`SettingState` per setting: the value in effect, how the
server changes it (reload, restart, new sessions), who set it, and the value the configuration
files (``postgresql.conf``, ``postgresql.auto.conf``) give it, which is what a reload or restart
will apply. A name the server does not know is an :class:`UnknownSettingError` naming close
matches. This module changes nothing. No Dagster in this module.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twinme_ops.database.postgres.settings.values import display_value, same_value

if TYPE_CHECKING:
    import psycopg


class SettingsError(RuntimeError):
    """Settings could not be read or changed; the message names the setting and the fix."""


class UnknownSettingError(SettingsError, ValueError):
    """A desired setting name that the server does not know."""


# The sources that win over ALTER SYSTEM for a session, as a person names them.
_SOURCE_TEXT = {
    "database": "ALTER DATABASE ... SET",
    "user": "ALTER ROLE ... SET",
    "database user": "ALTER ROLE ... IN DATABASE ... SET",
    "client": "the client connection",
    "session": "SET in this session",
    "command line": "the server's command line",
    "environment variable": "an environment variable",
}


@dataclass(frozen=True)
class SettingState:
    """One row of pg_settings, plus what the configuration files say for it."""

    name: str
    setting: str
    display: str
    unit: str | None
    vartype: str
    context: str
    source: str
    pending_restart: bool
    configured: str | None  # last value in postgresql.conf / postgresql.auto.conf, if any

    @property
    def restart_only(self) -> bool:
        return self.context == "postmaster"

    @property
    def per_session(self) -> bool:
        """Fixed at connection start: this session keeps its value, new sessions get the file's."""
        return self.context in ("backend", "superuser-backend")

    @property
    def overridden(self) -> bool:
        """Set by a source that wins over ALTER SYSTEM for this session."""
        return self.source in _SOURCE_TEXT

    @property
    def source_text(self) -> str:
        """Who set the value in effect, as a person names it (``ALTER ROLE ... SET``)."""
        return _SOURCE_TEXT.get(self.source, self.source)

    def same(self, want: str, actual: str | None) -> bool:
        """Whether ``actual`` (a value of this setting) is ``want``, compared normalized."""
        return same_value(want, actual, self.vartype, self.unit)

    def shown(self, value: str) -> str:
        """A value of this setting as a person reads it (with its unit)."""
        return display_value(value, self.vartype, self.unit)


def read_settings(conn: psycopg.Connection[Any], names: Iterable[str]) -> dict[str, SettingState]:
    """The state of each setting of ``names``; raises :class:`UnknownSettingError` first."""
    names = list(names)
    rows = conn.execute(
        "SELECT name, setting, current_setting(name), unit, vartype, context, source, "
        "pending_restart FROM pg_settings WHERE name = ANY(%s)",
        (names,),
    ).fetchall()
    known = {r[0]: r for r in rows}
    unknown = [n for n in names if n not in known]
    if unknown:
        all_names = [r[0] for r in conn.execute("SELECT name FROM pg_settings").fetchall()]
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, all_names, n=3)
            hints.append(f"{name}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        raise UnknownSettingError(
            f"unknown PostgreSQL setting(s): {'; '.join(hints)}. Fix the name in the desired "
            "settings (overrides); `SHOW ALL` lists what this server knows."
        )
    configured = _configured_values(conn, names)
    return {
        name: SettingState(
            name=name,
            setting=str(row[1]),
            display=str(row[2]),
            unit=row[3],
            vartype=str(row[4]),
            context=str(row[5]),
            source=str(row[6]),
            pending_restart=bool(row[7]),
            configured=configured.get(name),
        )
        for name, row in known.items()
    }


def _configured_values(conn: psycopg.Connection[Any], names: list[str]) -> dict[str, str]:
    """The value the configuration files give each setting (the last one read wins).

    pg_file_settings needs superuser or pg_read_all_settings; without it we only know what
    the server applied, which is enough except for a value waiting for a restart.
    """
    import psycopg

    try:
        rows = conn.execute(
            "SELECT name, setting FROM pg_file_settings WHERE name = ANY(%s) ORDER BY seqno",
            (names,),
        ).fetchall()
    except psycopg.errors.InsufficientPrivilege:
        return {}
    return {str(r[0]): str(r[1]) for r in rows}


def file_errors(conn: psycopg.Connection[Any], names: list[str]) -> list[str]:
    """Lines of the configuration files the server rejected (``name = 'value': error``)."""
    import psycopg

    try:
        rows = conn.execute(
            "SELECT name, setting, error FROM pg_file_settings "
            "WHERE error IS NOT NULL AND error <> 'setting could not be applied' "
            "AND (name = ANY(%s) OR name IS NULL)",
            (names,),
        ).fetchall()
    except psycopg.errors.InsufficientPrivilege:
        return []
    return [f"{r[0]} = {r[1]!r}: {r[2]}" for r in rows]


def preload_libraries(conn: psycopg.Connection[Any]) -> list[str]:
    """The libraries of ``shared_preload_libraries``, unquoted."""
    row = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
    return [x.strip().strip('"') for x in str(row[0] if row else "").split(",")]


__all__ = [
    "SettingState",
    "SettingsError",
    "UnknownSettingError",
    "file_errors",
    "preload_libraries",
    "read_settings",
]
