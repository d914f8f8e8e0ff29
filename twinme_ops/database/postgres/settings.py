"""PostgreSQL settings as declared state: desired values, converge, drift.

The specification's ``production-setup.sql`` sets fixed values with ``ALTER SYSTEM`` once. Here
the values come from the declared instance (:class:`InstanceResources`) through PGTune's
"web application" formulas, so another instance size gets consistent values, and
:data:`SPEC_INSTANCE` gives exactly the specification's numbers. :func:`converge_settings`
changes only what differs and reloads once; settings that only a restart applies are reported,
never applied by restarting the server. ``shared_preload_libraries`` is never managed: pgvector
does not need it (the spec's ``shared_preload_libraries = 'vector'`` is a trap).

Every function takes a psycopg connection in autocommit mode (``ALTER SYSTEM`` cannot run in a
transaction block). Extensions are in :mod:`twinme_ops.database.postgres.extensions`. No Dagster in
this
module.
"""

from __future__ import annotations

import difflib
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from twinme_ops.database.convergence import ConvergeReport, Log
from twinme_ops.database.postgres.objects import first_line

TARGET_SETTINGS = "postgres_settings"
STORAGE_TYPES = ("ssd", "hdd", "san")
# Never managed: a wrong value keeps the server from starting, and pgvector does not need it.
UNMANAGED_SETTINGS = frozenset({"shared_preload_libraries"})
RELOAD_WAIT_S = 10.0

_KB = 1
_MB = 1024 * _KB
_GB = 1024 * _MB


class SettingsError(RuntimeError):
    """Settings could not be read or changed; the message names the setting and the fix."""


class UnknownSettingError(SettingsError, ValueError):
    """A desired setting name that the server does not know."""


# ------------------------------------------------------------------------------------------
# desired values


@dataclass(frozen=True)
class InstanceResources:
    """What the PostgreSQL instance has: the inputs of the tuning formulas.

    ``storage`` is ``ssd``, ``hdd`` or ``san`` (it sets ``random_page_cost`` and
    ``effective_io_concurrency``); ``max_connections`` is what the application plans for.
    """

    memory_mb: int
    cpus: int
    storage: str
    max_connections: int

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.memory_mb, int) or self.memory_mb < 256:
            problems.append(f"memory_mb must be an integer >= 256 (MiB), got {self.memory_mb!r}")
        if not isinstance(self.cpus, int) or self.cpus < 1:
            problems.append(f"cpus must be an integer >= 1, got {self.cpus!r}")
        if self.storage not in STORAGE_TYPES:
            problems.append(
                f"storage must be one of {', '.join(STORAGE_TYPES)}, got {self.storage!r}"
            )
        if not isinstance(self.max_connections, int) or not 1 <= self.max_connections <= 262_143:
            problems.append(
                f"max_connections must be an integer in 1..262143, got {self.max_connections!r}"
            )
        if problems:
            raise ValueError("invalid instance resources: " + "; ".join(problems))


SPEC_INSTANCE = InstanceResources(memory_mb=1024, cpus=2, storage="ssd", max_connections=200)
"""The instance the specification's values were written for: 1 GiB RAM, 2 vCPUs, SSD, 200
connections (the size of an AWS db.t4g.micro). 1 GiB is the only size for which PGTune's
shared_buffers = RAM/4 and maintenance_work_mem = RAM/16 give the spec's 256MB and 64MB; the
CPU count does not appear in the spec's values (2 keeps PostgreSQL's worker defaults)."""

SPEC_LOGGING: dict[str, str] = {
    "log_statement": "mod",
    "log_min_duration_statement": "1000ms",
    "log_checkpoints": "on",
    "log_connections": "on",
    "log_disconnections": "on",
    "log_lock_waits": "on",
}


def _fmt_kb(kb: int) -> str:
    """PostgreSQL memory syntax, in the largest unit that divides exactly (as PGTune prints)."""
    if kb % _GB == 0:
        return f"{kb // _GB}GB"
    if kb % _MB == 0:
        return f"{kb // _MB}MB"
    return f"{kb}kB"


def desired_settings(
    res: InstanceResources, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Server settings for ``res`` (PGTune, "web application" profile), then ``overrides``.

    Formulas (RAM in kB; PGTune = github.com/le0pard/pgtune, configurationSlice.js):

    - ``max_connections`` = the declared value.
    - ``shared_buffers`` = RAM/4; ``maintenance_work_mem`` = RAM/16, capped at 8GB (PGTune).
    - ``effective_cache_size`` = RAM. **Not PGTune** (3/4 RAM, 768MB for the spec's instance):
      the spec asks 1GB on a 1 GiB instance, and no instance size gives both RAM/4 = 256MB and
      3/4 RAM = 1GB. It is a planner estimate of shared_buffers plus the OS page cache, which
      on a dedicated database server approaches all of RAM; nothing is allocated from it.
    - ``wal_buffers`` = shared_buffers/16, capped at 16MB (one WAL segment), at least 32kB.
      **Not PGTune** (3% of shared_buffers, i.e. 7864kB for 256MB; 16MB only from 534MB of
      shared_buffers): the spec asks 16MB with 256MB of shared_buffers. It is twice
      PostgreSQL's own auto-tuning (shared_buffers/32, same 16MB cap) and costs at most 16MB.
    - ``checkpoint_completion_target`` 0.9, ``default_statistics_target`` 100,
      ``min_wal_size`` 1GB, ``max_wal_size`` 4GB (PGTune, web).
    - ``random_page_cost``: hdd 4, ssd/san 1.1; ``effective_io_concurrency``: hdd 2, ssd 200,
      san 300 (PGTune, Linux).
    - Parallelism from CPUs: ``max_parallel_workers`` = CPUs, ``max_parallel_workers_per_gather``
      and ``max_parallel_maintenance_workers`` = ceil(CPUs/2) capped at 4 (0 on one CPU),
      ``max_worker_processes`` = max(8, CPUs). PGTune sets these only from 4 CPUs, with
      ``max_worker_processes`` = CPUs; we keep PostgreSQL's floor of 8 because that pool also
      serves logical replication and extensions' background workers, and changing it needs a
      restart.
    - ``work_mem`` = (RAM - shared_buffers) / ((max_connections + max_worker_processes) * 3),
      at least 4MB (PGTune, web).
    - The spec's logging: ``log_statement`` mod, ``log_min_duration_statement`` 1000ms,
      ``log_checkpoints``, ``log_connections``, ``log_disconnections``, ``log_lock_waits`` on.

    ``overrides`` win over the formulas. ``shared_preload_libraries`` is never part of the
    result and is refused as an override: pgvector does not need it.
    """
    ram_kb = res.memory_mb * _MB
    shared_buffers = ram_kb // 4
    max_worker_processes = max(8, res.cpus)
    per_gather = 0 if res.cpus < 2 else min(4, math.ceil(res.cpus / 2))
    work_mem = (ram_kb - shared_buffers) // ((res.max_connections + max_worker_processes) * 3)
    settings: dict[str, str] = {
        "max_connections": str(res.max_connections),
        "shared_buffers": _fmt_kb(shared_buffers),
        "effective_cache_size": _fmt_kb(ram_kb),
        "maintenance_work_mem": _fmt_kb(min(ram_kb // 16, 8 * _GB)),
        "checkpoint_completion_target": "0.9",
        "wal_buffers": _fmt_kb(max(32, min(16 * _MB, shared_buffers // 16))),
        "default_statistics_target": "100",
        "random_page_cost": "4" if res.storage == "hdd" else "1.1",
        "effective_io_concurrency": {"hdd": "2", "ssd": "200", "san": "300"}[res.storage],
        "work_mem": _fmt_kb(max(4 * _MB, work_mem)),
        "min_wal_size": "1GB",
        "max_wal_size": "4GB",
        "max_worker_processes": str(max_worker_processes),
        "max_parallel_workers": str(res.cpus),
        "max_parallel_workers_per_gather": str(per_gather),
        "max_parallel_maintenance_workers": str(per_gather),
        **SPEC_LOGGING,
    }
    for name, value in (overrides or {}).items():
        if name.lower() in UNMANAGED_SETTINGS:
            raise ValueError(
                f"{name} is not managed by this tool: pgvector does not need it, and a wrong "
                "value keeps the server from starting. Set it in the server's own configuration "
                "(or the managed service's parameter group) if another extension needs it."
            )
        settings[name] = str(value)
    return settings


# ------------------------------------------------------------------------------------------
# value normalization

_MEMORY_UNITS = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_TIME_UNITS = {"us": 1, "ms": 1000, "s": 1_000_000, "min": 60_000_000, "h": 3_600_000_000}
_TIME_UNITS["d"] = 24 * _TIME_UNITS["h"]
_NUMBER = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)\s*$")
_TRUE = {"on", "true", "yes", "1", "t", "y"}
_FALSE = {"off", "false", "no", "0", "f", "n"}


def _unit_factor(unit: str) -> tuple[str, float] | None:
    """('memory'|'time', size of one unit in bytes or microseconds) for a pg_settings unit."""
    match = re.fullmatch(r"(\d*)\s*([A-Za-z]+)", unit or "")
    if not match:
        return None
    count = int(match.group(1) or 1)
    name = match.group(2)
    if name in _MEMORY_UNITS:
        return "memory", count * _MEMORY_UNITS[name]
    if name in _TIME_UNITS:
        return "time", count * _TIME_UNITS[name]
    return None


def normalize(value: str, vartype: str, unit: str | None) -> Any:
    """A comparable form of a setting value, as PostgreSQL would store it.

    Numbers with a unit ('256MB', '1s') become a count of the setting's own unit ('8kB',
    'ms', ...), rounded like PostgreSQL rounds integers; a bare number is already in that unit.
    Booleans become True/False, enums lower case. Raises ValueError on a malformed value.
    """
    text = str(value).strip()
    if vartype == "bool":
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{value!r} is not a boolean (on/off)")
    if vartype in ("integer", "real"):
        match = _NUMBER.match(text)
        if not match:
            raise ValueError(f"{value!r} is not a number with an optional unit")
        number, suffix = float(match.group(1)), match.group(2)
        if suffix:
            base = _unit_factor(unit or "")
            given = _unit_factor(suffix)
            if base is None or given is None or base[0] != given[0]:
                raise ValueError(f"{value!r}: unit {suffix!r} does not apply (the unit is {unit})")
            number = number * given[1] / base[1]
        if vartype == "integer":
            # PostgreSQL rounds half away from zero when converting units
            return int(math.floor(abs(number) + 0.5)) * (1 if number >= 0 else -1)
        return round(number, 9)
    if vartype == "enum":
        return text.lower()
    return text


def _same(want: str, actual: str | None, state: _SettingState) -> bool:
    if actual is None:
        return False
    try:
        return normalize(want, state.vartype, state.unit) == normalize(
            actual, state.vartype, state.unit
        )
    except ValueError:
        return want.strip() == actual.strip()


def _display(value: str, state: _SettingState) -> str:
    """A value as a person reads it: a bare number gets the setting's unit ('1000' -> '1000ms')."""
    match = _NUMBER.match(value) if state.vartype == "integer" else None
    factor = _unit_factor(state.unit or "")
    if not match or match.group(2) or factor is None:
        return value
    amount = int(float(match.group(1)) * factor[1])
    if amount <= 0:
        return value  # -1 and 0 mean "default" / "disabled": no unit
    units = _MEMORY_UNITS if factor[0] == "memory" else _TIME_UNITS
    for name, size in sorted(units.items(), key=lambda item: -item[1]):
        if amount % size == 0:
            return f"{amount // size}{name}"
    return value


# ------------------------------------------------------------------------------------------
# reading the server


@dataclass(frozen=True)
class _SettingState:
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
        return self.source in (
            "database",
            "user",
            "database user",
            "client",
            "session",
            "command line",
            "environment variable",
        )


_SOURCE_TEXT = {
    "database": "ALTER DATABASE ... SET",
    "user": "ALTER ROLE ... SET",
    "database user": "ALTER ROLE ... IN DATABASE ... SET",
    "client": "the client connection",
    "session": "SET in this session",
    "command line": "the server's command line",
    "environment variable": "an environment variable",
}


def _read_settings(conn: psycopg.Connection[Any], names: Iterable[str]) -> dict[str, _SettingState]:
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
        name: _SettingState(
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
    try:
        rows = conn.execute(
            "SELECT name, setting FROM pg_file_settings WHERE name = ANY(%s) ORDER BY seqno",
            (names,),
        ).fetchall()
    except psycopg.errors.InsufficientPrivilege:
        return {}
    return {str(r[0]): str(r[1]) for r in rows}


# ------------------------------------------------------------------------------------------
# assessment: what a setting needs


_OK, _ALTER, _RELOAD, _RESTART, _OVERRIDDEN = "ok", "alter", "reload", "restart", "overridden"


def _assess(want: str, st: _SettingState) -> tuple[str, str]:
    """(what the setting needs, a sentence for the drift report)."""
    want_text = _display(want, st)
    effective_ok = _same(want, st.setting, st)
    # What the server will use after a reload/restart: the files' value, else the current one
    configured = st.configured if st.configured is not None else st.setting
    configured_ok = _same(want, configured, st)
    if not configured_ok:
        if effective_ok:
            return _ALTER, (
                f"{st.name} is {st.display}, but the configuration files hold "
                f"{_display(st.configured or '', st)} (applied at the next "
                f"{'restart' if st.restart_only else 'reload'}); want {want_text}"
            )
        needs = " (needs a restart)" if st.restart_only else ""
        return _ALTER, f"{st.name} is {st.display}, want {want_text}{needs}"
    if st.per_session:
        # This session's value was fixed when it connected; new sessions get the files' value.
        return _OK, ""
    if not effective_ok and st.overridden:
        return _OVERRIDDEN, (
            f"{st.name} is {st.display}, want {want_text}: overridden by "
            f"{_SOURCE_TEXT.get(st.source, st.source)}, which wins over ALTER SYSTEM"
        )
    if st.restart_only:
        if not effective_ok:
            return _RESTART, (f"{st.name} is {st.display}, want {want_text} (set, pending restart)")
        if st.pending_restart:
            return _RELOAD, f"{st.name} is {want_text}, pending restart flag set (reload clears it)"
        return _OK, ""
    if effective_ok:
        return _OK, ""
    return _RELOAD, f"{st.name} is {st.display}, want {want_text} (set, pending reload)"


def _check_desired(desired: Mapping[str, str]) -> None:
    bad = sorted(n for n in desired if n.lower() in UNMANAGED_SETTINGS)
    if bad:
        raise ValueError(
            f"refusing to manage {', '.join(bad)}: pgvector does not need it, and a wrong value "
            "keeps the server from starting"
        )


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


def _file_errors(conn: psycopg.Connection[Any], names: list[str]) -> list[str]:
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
    _check_desired(desired)
    if not conn.autocommit:
        raise SettingsError(
            "converge_settings needs an autocommit connection: ALTER SYSTEM "
            "cannot run inside a transaction block"
        )
    report = ConvergeReport()
    names = list(desired)
    states = _read_settings(conn, names)
    needs_reload = False
    for name, want in desired.items():
        state = states[name]
        status, _ = _assess(want, state)
        if status == _ALTER:
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
        elif status == _RELOAD:
            needs_reload = True
        elif status == _OVERRIDDEN:
            report.notes.append(_assess(want, state)[1])
    if needs_reload:
        _reload(conn, report, log)
        errors = _file_errors(conn, names)
        if errors:
            raise SettingsError(
                "the configuration files hold values the server rejected: " + "; ".join(errors)
            )
        states = _read_settings(conn, names)
    for name, want in desired.items():
        state = states[name]
        if state.pending_restart or (state.restart_only and not _same(want, state.setting, state)):
            report.pending_restart.append(name)
    if report.pending_restart:
        report.notes.append(
            "waiting for a server restart (this tool never restarts the server): "
            + ", ".join(report.pending_restart)
        )
    _note_preload_vector(conn, report)
    return report


def _note_preload_vector(conn: psycopg.Connection[Any], report: ConvergeReport) -> None:
    row = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
    libraries = [x.strip().strip('"') for x in str(row[0] if row else "").split(",")]
    if "vector" in libraries:
        report.notes.append(
            "shared_preload_libraries contains 'vector' (from the spec's setup script): pgvector "
            "does not need it; this tool leaves it alone"
        )


def settings_drift(conn: psycopg.Connection[Any], desired: Mapping[str, str]) -> list[str]:
    """Differences between ``desired`` and the server, one sentence each; empty when converged.

    A value set by ALTER SYSTEM but waiting for a restart (or a reload) is drift too, and says
    so ("shared_buffers is 128MB, want 256MB (set, pending restart)").
    """
    _check_desired(desired)
    states = _read_settings(conn, list(desired))
    drift = []
    for name, want in desired.items():
        status, message = _assess(want, states[name])
        if status != _OK:
            drift.append(message)
    return drift


__all__ = [
    "SPEC_INSTANCE",
    "SPEC_LOGGING",
    "InstanceResources",
    "SettingsError",
    "UnknownSettingError",
    "converge_settings",
    "desired_settings",
    "normalize",
    "settings_drift",
]
