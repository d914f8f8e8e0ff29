"""Continuous archiving of a server twinme_ops does not run (``DATABASE_URL``, not the sandbox).

The sandbox is prepared and archived by :mod:`.continuous` when it starts. A team's own PostgreSQL
is never reconfigured or restarted by twinme_ops: :func:`start_external_archiving` checks it
(:func:`.source.check_source`) and refuses, listing the SQL a superuser runs and whether a restart
follows, when it is not ready; otherwise it starts the ``--synchronous`` receiver
(:mod:`.receiver`), takes a first full base backup when the archive has none, and starts the
heartbeat writer (:mod:`.heartbeat_writer`) when asked. Every part is skipped when already done,
so running it again (from cron or a systemd timer) restarts what died.

An archive root belongs to one server and one unbroken run of WAL. Two situations would silently
break that, and are refused with the fix: base backups of another cluster in the root, and a root
that already holds WAL while the server has lost (or never had) the slot, so the WAL written since
is gone.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from twinme_ops.backups.pitr.basebackup import list_backups, take_base_backup
from twinme_ops.backups.pitr.continuous import stop_continuous_archiving
from twinme_ops.backups.pitr.heartbeat import SCHEMA, TABLE
from twinme_ops.backups.pitr.heartbeat_writer import (
    DEFAULT_INTERVAL_S,
    heartbeat_writer_pid,
    heartbeat_writer_state,
    start_heartbeat_writer,
)
from twinme_ops.backups.pitr.layout import ArchiveLayout, pitr_error
from twinme_ops.backups.pitr.receiver import DEFAULT_SLOT, connect, start_receiver
from twinme_ops.backups.pitr.rpo import measure_rpo
from twinme_ops.backups.pitr.source import Requirement, check_source, fix_statements
from twinme_ops.common.log import Log
from twinme_ops.common.redact import redact_url

CNPG_NOTE = (
    "On CloudNativePG, use TWINME_WAL_ARCHIVE=cloudnative-pg instead (its Barman Cloud plugin "
    "archives the cluster; ALTER SYSTEM is disabled there, settings go in the Cluster's "
    "spec.postgresql.parameters and replication lines in spec.postgresql.pg_hba). A managed "
    "service that accepts no physical replication connection cannot be archived this way"
)


@dataclass
class ExternalArchivingReport:
    """What :func:`start_external_archiving` found and did."""

    root: str
    source: str  # the URL without its password
    slot: str
    receiver_pid: int
    base_backup_taken: str | None  # the id of the full backup taken now
    base_backups: int
    heartbeat_pid: int | None
    heartbeat_interval_s: float | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def not_ready_message(url: str, problems: list[Requirement]) -> str:
    """What the server lacks, the SQL that fixes it, the restart it needs, and the CNPG note."""
    lines = [f"PostgreSQL at {redact_url(url)} is not ready for continuous archiving:"]
    for r in problems:
        why = " (incremental base backups need WAL summaries)" if r.name == "summarize_wal" else ""
        lines.append(f"  - {r.name} is {r.current}, needs {r.wanted}{why}")
    statements, restart = fix_statements(problems)
    fix = ["Fix:"]
    if statements:
        fix.append("as a superuser, run")
        fix += [f"    {statement}" for statement in statements]
    if restart:
        fix.append(f"then restart PostgreSQL ({', '.join(restart)} only change at a restart)")
    for r in problems:
        if r.name.startswith("pg_hba"):
            fix.append(f"and {r.fix}")
    fix.append("then run `twinme-ops wal-archive start` again.")
    return "\n".join(lines + fix + [CNPG_NOTE + "."])


def _slot_exists(conn: Any, slot: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_replication_slots WHERE slot_name = %s", (slot,))
    return row.fetchone() is not None


def _system_identifier(conn: Any) -> str | None:
    """The cluster's identity, or None when this role may not read it."""
    try:
        row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return None
    return row[0] if row else None


def heartbeat_problem(conn: Any) -> str | None:
    """Why the heartbeat writer could not write into this database as this role (None: it can)."""
    row = conn.execute(
        "SELECT current_user, current_database(), to_regclass(%s) IS NOT NULL, "
        "CASE WHEN to_regnamespace(%s) IS NULL "
        "THEN has_database_privilege(current_database(), 'CREATE') "
        "ELSE has_schema_privilege(%s, 'CREATE') END",
        (f"{SCHEMA}.{TABLE}", SCHEMA, SCHEMA),
    ).fetchone()
    role, database, exists, may_create = row
    if exists:
        table = f"{SCHEMA}.{TABLE}"
        may_write = conn.execute(
            "SELECT has_table_privilege(%s, 'INSERT') AND has_table_privilege(%s, 'SELECT') "
            "AND has_table_privilege(%s, 'DELETE')",
            (table, table, table),
        ).fetchone()[0]
        if may_write:
            return None
        return (
            f"role {role} may not insert into {SCHEMA}.{TABLE}. Fix: GRANT INSERT, SELECT, "
            f"DELETE ON {SCHEMA}.{TABLE} TO {role} (and USAGE ON SCHEMA {SCHEMA})"
        )
    if may_create:
        return None
    return (
        f"role {role} may not create the schema {SCHEMA} in database {database} for the "
        f"heartbeat table. Fix: as a superuser, CREATE SCHEMA {SCHEMA} AUTHORIZATION {role}; "
        f"(or GRANT CREATE ON DATABASE {database} TO {role};)"
    )


def check_archive_fits(layout: ArchiveLayout, conn: Any, slot: str) -> None:
    """Refuse a root that belongs to another cluster, or whose WAL run the server cannot extend."""
    backups = list_backups(layout)
    system_id = _system_identifier(conn)
    foreign = [b for b in backups if system_id and b.system_identifier != system_id]
    if foreign:
        raise pitr_error(
            f"the archive in {layout.root} holds base backups of another PostgreSQL cluster "
            f"(system identifier {foreign[-1].system_identifier}, this server's is {system_id}). "
            "Fix: point TWINME_WAL_ARCHIVE_ROOT at a new, empty directory for this server"
        )
    held = layout.segment_files() or layout.partial_files()
    if held and not _slot_exists(conn, slot):
        newest = max(held, key=lambda p: p.name).name
        raise pitr_error(
            f"the archive in {layout.root} holds WAL up to segment {newest}, but the server has "
            f"no replication slot {slot!r}: the WAL written since was not kept for the archive, "
            "so it cannot continue without a gap. Fix: keep that root for restores up to its "
            "last segment, point TWINME_WAL_ARCHIVE_ROOT at a new, empty directory and start "
            "again (a new full base backup is taken there)"
        )


def start_external_archiving(
    layout: ArchiveLayout,
    url: str,
    *,
    slot: str = DEFAULT_SLOT,
    base_backup: bool = True,
    heartbeat: bool = False,
    heartbeat_interval_s: float = DEFAULT_INTERVAL_S,
    log: Log | None = None,
) -> ExternalArchivingReport:
    """Archive the server at ``url`` into ``layout`` (idempotent; see the module docstring).

    Raises :class:`.layout.PitrError` naming what the server lacks and the fix, before anything
    is started or created on the server.
    """
    t0 = time.monotonic()
    with connect(url) as conn:
        problems = [r for r in check_source(conn) if not r.ok]
        if problems:
            raise pitr_error(not_ready_message(url, problems))
        check_archive_fits(layout, conn, slot)
        problem = heartbeat_problem(conn) if heartbeat else None
        if problem:
            raise pitr_error(f"the heartbeat writer cannot start: {problem}")
    started = start_receiver(layout, url, slot=slot, synchronous=True)
    if log is not None:
        log.info(f"WAL receiver pid {started.pid} streams on slot {slot} into {layout.wal_dir}")
    taken: str | None = None
    if base_backup and not list_backups(layout):
        if log is not None:
            log.info("no base backup in the archive yet: taking a full one")
        backup = take_base_backup(layout, url, kind="full", log=log)
        taken = backup.id
        if log is not None:
            log.info(f"full base backup {backup.id} taken in {backup.seconds:.1f} s")
    writer_pid: int | None = None
    interval: float | None = None
    if heartbeat:
        writer = start_heartbeat_writer(layout, url, interval_s=heartbeat_interval_s)
        writer_pid, interval = writer.pid, writer.interval_s
    else:
        writer_pid = heartbeat_writer_pid(layout)
        state = heartbeat_writer_state(layout)
        interval = state.interval_s if writer_pid is not None and state is not None else None
    return ExternalArchivingReport(
        root=str(layout.root),
        source=redact_url(url),
        slot=slot,
        receiver_pid=started.pid,
        base_backup_taken=taken,
        base_backups=len(list_backups(layout)),
        heartbeat_pid=writer_pid,
        heartbeat_interval_s=interval,
        seconds=round(time.monotonic() - t0, 3),
    )


def stop_external_archiving(
    layout: ArchiveLayout,
    url: str | None = None,
    *,
    slot: str = DEFAULT_SLOT,
    drop_slot: bool = False,
) -> dict[str, Any]:
    """Stop the heartbeat writer and the receiver; with ``drop_slot``, drop the slot too (the
    server stops keeping WAL for the archive, which then ends here). What was running."""
    stopped: dict[str, Any] = stop_continuous_archiving(layout)
    stopped["slot_dropped"] = False
    if drop_slot:
        if url is None:
            raise pitr_error("dropping the slot needs the source's URL. Fix: set DATABASE_URL")
        with connect(url) as conn:
            if _slot_exists(conn, slot):
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                stopped["slot_dropped"] = True
    return stopped


def external_status(layout: ArchiveLayout, url: str, *, slot: str = DEFAULT_SLOT) -> dict[str, Any]:
    """The RPO reading (receiver, slot, lag) with the heartbeat writer and the base backups."""
    reading = measure_rpo(layout, url, slot=slot)
    backups = list_backups(layout)
    writer = heartbeat_writer_pid(layout)
    state = heartbeat_writer_state(layout)
    status: dict[str, Any] = {
        "source": redact_url(url),
        **reading.to_metadata(),
        "heartbeat_writer_alive": writer is not None,
        "heartbeat_writer_pid": writer,
        "heartbeat_interval_s": state.interval_s if state is not None else None,
        "base_backups": len(backups),
        "newest_base_backup": backups[-1].id if backups else None,
        "newest_base_backup_kind": backups[-1].kind if backups else None,
        "problems": reading.problems(float("inf")),
    }
    return status
