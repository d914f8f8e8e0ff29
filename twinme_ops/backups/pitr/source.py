"""What the source server needs for continuous archiving, checked and (where we may) set.

* ``wal_level`` replica (or logical), ``max_wal_senders`` and ``max_replication_slots``: the
  receiver and ``pg_basebackup -X stream`` each hold a WAL sender, the receiver a slot. These three
  only change at a restart.
* ``summarize_wal = on``: ``pg_basebackup --incremental`` needs the WAL summaries (a reload).
* a role with ``REPLICATION`` (or a superuser) for the receiver and the base backups;
* a ``pg_hba.conf`` line that lets it open replication connections.

:func:`check_source` only reads; :func:`apply_source_settings` uses ``ALTER SYSTEM`` and a reload
and says which settings wait for a restart; :func:`prepare_local_source` does it all on a server
we run (``pg_hba.conf`` lines, restart included).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twinme_ops.backups.pitr.layout import pitr_error
from twinme_ops.scratch.postgres import PostgresServer

# the receiver, a base backup's two connections (-X stream), and room for a second backup
MIN_WAL_SENDERS = 5
MIN_REPLICATION_SLOTS = 4
LOCAL_HBA_LINES = (
    "local   replication   all                  trust",
    "host    replication   all   127.0.0.1/32   trust",
)


@dataclass
class Requirement:
    """One thing the source needs: what it is now, what it needs, whether that needs a restart."""

    name: str
    current: str
    wanted: str
    ok: bool
    needs_restart: bool = False
    fix: str = ""


@dataclass
class SourceReport:
    """The requirements after :func:`apply_source_settings` / :func:`prepare_local_source`."""

    requirements: list[Requirement] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    # set with ALTER SYSTEM, effective only after a restart
    restart_needed: list[str] = field(default_factory=list)
    restarted: bool = False

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.requirements)

    def problems(self) -> list[str]:
        return [
            f"{r.name} is {r.current}, needs {r.wanted}: {r.fix}"
            for r in self.requirements
            if not r.ok
        ]


SETTINGS = ("wal_level", "summarize_wal", "max_wal_senders", "max_replication_slots")


def _settings(conn: Any) -> dict[str, tuple[str, str, bool]]:
    rows = conn.execute(
        "SELECT name, setting, context, pending_restart FROM pg_settings WHERE name = ANY(%s)",
        (list(SETTINGS),),
    ).fetchall()
    return {name: (setting, context, bool(pending)) for name, setting, context, pending in rows}


def _wanted(name: str, setting: str) -> tuple[bool, str, str]:
    """(ok, wanted as text, value to set)."""
    if name == "wal_level":
        return setting in ("replica", "logical"), "replica or logical", "replica"
    if name == "summarize_wal":
        return setting == "on", "on", "on"
    minimum = MIN_WAL_SENDERS if name == "max_wal_senders" else MIN_REPLICATION_SLOTS
    return int(setting) >= minimum, f">= {minimum}", str(max(minimum, 10))


def setting_statement(name: str, current: str) -> str:
    """``ALTER SYSTEM SET name = 'value'`` with the value the archive needs for ``name``."""
    return f"ALTER SYSTEM SET {name} = '{_wanted(name, current)[2]}'"


def _quote_ident(name: str) -> str:
    return (
        name
        if name.isidentifier() and name == name.lower()
        else '"' + name.replace('"', '""') + '"'
    )


def fix_statements(requirements: list[Requirement]) -> tuple[list[str], list[str]]:
    """The SQL a superuser runs to meet the unmet ``requirements``, and the settings among them
    that only change at a restart. ``pg_hba.conf`` is a file, not SQL: its fix stays in words."""
    statements: list[str] = []
    restart: list[str] = []
    reload = False
    for r in requirements:
        if r.ok:
            continue
        if r.name in SETTINGS:
            if not r.fix.startswith("already set"):
                statements.append(setting_statement(r.name, r.current) + ";")
                reload = True
            if r.needs_restart or r.fix.startswith("already set"):
                restart.append(r.name)
        elif r.name.startswith("role "):
            role = _quote_ident(r.name.removeprefix("role "))
            if r.current == "missing":
                statements.append(f"CREATE ROLE {role} LOGIN REPLICATION;")
            else:
                statements.append(f"ALTER ROLE {role} REPLICATION;")
            statements.append(f"GRANT pg_monitor TO {role};")
    if reload:
        statements.append("SELECT pg_reload_conf();")
    return statements, restart


def check_source(conn: Any, role: str | None = None) -> list[Requirement]:
    """Every requirement of the source, read from the server ``conn`` is connected to."""
    out: list[Requirement] = []
    for name, (setting, context, pending) in sorted(_settings(conn).items()):
        ok, wanted, _ = _wanted(name, setting)
        restart = context == "postmaster"
        fix = setting_statement(name, setting)
        fix += ", then restart the server" if restart else ", then SELECT pg_reload_conf()"
        if pending:
            fix = "already set with ALTER SYSTEM: restart the server"
        out.append(Requirement(name, setting, wanted, ok, restart and not ok, fix))
    out.append(_role_requirement(conn, role))
    out.append(_hba_requirement(conn, role))
    return out


def _role_requirement(conn: Any, role: str | None) -> Requirement:
    row = conn.execute(
        "SELECT rolname, rolreplication OR rolsuper FROM pg_roles "
        "WHERE rolname = coalesce(%s, current_user)",
        (role,),
    ).fetchone()
    name = role or conn.execute("SELECT current_user").fetchone()[0]
    if row is None:
        return Requirement(
            f"role {name}", "missing", "a role with REPLICATION", False,
            fix=f"CREATE ROLE {name} LOGIN REPLICATION (or ensure_replication_role)",
        )  # fmt: skip
    return Requirement(
        f"role {name}",
        "REPLICATION" if row[1] else "no REPLICATION",
        "REPLICATION",
        bool(row[1]),
        fix=f"ALTER ROLE {name} REPLICATION",
    )


def _hba_requirement(conn: Any, role: str | None) -> Requirement:
    import psycopg

    try:
        rows = conn.execute(
            "SELECT type, user_name, auth_method FROM pg_hba_file_rules "
            "WHERE 'replication' = ANY(database) AND error IS NULL"
        ).fetchall()
    except psycopg.errors.InsufficientPrivilege:  # only superusers read the file
        if not conn.autocommit:
            conn.rollback()
        return Requirement(
            "pg_hba.conf replication", "not readable by this role", "a replication line", True,
            fix="checked when the receiver connects",
        )  # fmt: skip
    users = {"all", role or ""}
    allowed = [r for r in rows if users & set(r[1] or [])]
    return Requirement(
        "pg_hba.conf replication",
        ", ".join(f"{t} {m}" for t, _, m in allowed) or "no replication line",
        "a replication line for the role",
        bool(allowed),
        fix="add e.g. 'host replication <role> <address> scram-sha-256' to pg_hba.conf and reload",
    )


def apply_source_settings(conn: Any) -> SourceReport:
    """``ALTER SYSTEM`` for each setting that is not right, then a reload.

    ``conn`` must be a superuser's autocommit connection. The report's ``restart_needed`` names
    the settings that wait for a restart (the server keeps running on the old values until then).
    """
    from psycopg import sql

    if not conn.autocommit:
        raise pitr_error("apply_source_settings needs an autocommit connection (ALTER SYSTEM)")
    report = SourceReport()
    for name, (setting, context, pending) in sorted(_settings(conn).items()):
        ok, _, value = _wanted(name, setting)
        if ok:
            continue
        if not pending:
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
            )
            report.changed.append(name)
        if context == "postmaster":
            report.restart_needed.append(name)
    if report.changed:
        conn.execute("SELECT pg_reload_conf()")
    report.requirements = check_source(conn)
    return report


def ensure_replication_role(conn: Any, role: str) -> bool:
    """Create ``role`` (LOGIN REPLICATION, pg_monitor to read the replication views) if missing,
    or give an existing one REPLICATION. Whether anything changed."""
    from psycopg import sql

    row = conn.execute(
        "SELECT rolreplication OR rolsuper FROM pg_roles WHERE rolname = %s", (role,)
    ).fetchone()
    ident = sql.Identifier(role)
    if row is None:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN REPLICATION").format(ident))
    elif not row[0]:
        conn.execute(sql.SQL("ALTER ROLE {} REPLICATION").format(ident))
    else:
        return False
    conn.execute(sql.SQL("GRANT pg_monitor TO {}").format(ident))
    return True


def _ensure_local_hba(server: PostgresServer) -> bool:
    """Append the loopback replication trust lines the server's rules lack; whether it did."""
    with server.connect() as conn:
        hba = Path(conn.execute("SHOW hba_file").fetchone()[0])
        rules = conn.execute(
            "SELECT type, host(address::inet) FROM pg_hba_file_rules WHERE error IS NULL "
            "AND 'replication' = ANY(database) AND 'all' = ANY(user_name) "
            "AND auth_method = 'trust'"
        ).fetchall()
    have = {("local" if kind == "local" else address) for kind, address in rules}
    missing = [
        line for key, line in zip(("local", "127.0.0.1"), LOCAL_HBA_LINES, strict=True)
        if key not in have
    ]  # fmt: skip
    if not missing:
        return False
    with open(hba, "a") as fh:
        fh.write("\n# twinme_ops: continuous archiving (pg_receivewal, pg_basebackup)\n")
        fh.write("\n".join(missing) + "\n")
    with server.connect() as conn:
        conn.execute("SELECT pg_reload_conf()")
    return True


def prepare_local_source(server: PostgresServer, role: str | None = None) -> SourceReport:
    """Make a server we run ready for archiving: settings, role, replication trust on loopback,
    and a restart when a setting needs one. Raises, naming what is still wrong."""
    with server.connect() as conn:
        report = apply_source_settings(conn)
        if role:
            ensure_replication_role(conn, role)
    if _ensure_local_hba(server):
        report.changed.append("pg_hba.conf")
    if report.restart_needed:
        server.restart()
        report.restarted = True
    with server.connect() as conn:
        report.requirements = check_source(conn, role)
    if not report.ok:
        raise pitr_error(
            f"{server.data_dir} is not ready for archiving: " + "; ".join(report.problems())
        )
    return report
