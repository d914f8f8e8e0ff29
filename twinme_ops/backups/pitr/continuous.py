"""Continuous archiving of a server we run (the sandbox): everything in one idempotent call.

:func:`ensure_continuous_archiving` prepares the server as a source (:func:`.source.
prepare_local_source`), starts the ``--synchronous`` receiver on its slot (:mod:`.receiver`),
takes a first full base backup when the archive has none (:mod:`.basebackup`), and starts the
heartbeat writer (:mod:`.heartbeat_writer`). Each part is skipped when it is already done, so
calling it again after a crash restarts what died, and after a restart of the server the
receiver resumes at the slot's position: the slot kept every segment, there is no gap.
:func:`stop_continuous_archiving` stops the writer and the receiver (the slot stays).

The sandbox layer may not import this package: ``defs/resources.py`` and the CLI, which know both,
call it when the sandbox starts, and register the two processes with the sandbox so that
``stop_sandbox`` stops them before PostgreSQL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from twinme_ops.backups.pitr import heartbeat_writer, receiver
from twinme_ops.backups.pitr.basebackup import list_backups, take_base_backup
from twinme_ops.backups.pitr.heartbeat_writer import (
    DEFAULT_INTERVAL_S,
    start_heartbeat_writer,
    stop_heartbeat_writer,
)
from twinme_ops.backups.pitr.layout import ArchiveLayout
from twinme_ops.backups.pitr.receiver import DEFAULT_SLOT, start_receiver, stop_receiver
from twinme_ops.backups.pitr.source import prepare_local_source
from twinme_ops.common.log import Log
from twinme_ops.scratch.postgres import PostgresServer


@dataclass
class ArchivingReport:
    """What :func:`ensure_continuous_archiving` found and did."""

    root: str
    receiver_pid: int
    heartbeat_pid: int
    source_changed: list[str] = field(default_factory=list)
    restarted_server: bool = False
    base_backup: str | None = None  # the id of the full backup taken now, if one was
    seconds: float = 0.0


@dataclass(frozen=True)
class ArchiveProcess:
    """A detached process of the archive, as the sandbox's stop needs it: pid file and name."""

    name: str
    pid_file: str
    process_hint: str


def archive_processes(layout: ArchiveLayout) -> list[ArchiveProcess]:
    """The heartbeat writer and the receiver, in the order to stop them."""
    writer = heartbeat_writer.heartbeat_writer_process(layout)
    wal_receiver = receiver.receiver_process(layout)
    return [
        ArchiveProcess("heartbeat-writer", str(writer.pid_file), writer.hint),
        ArchiveProcess("wal-receiver", str(wal_receiver.pid_file), wal_receiver.hint),
    ]


def ensure_continuous_archiving(
    server: PostgresServer,
    url: str,
    layout: ArchiveLayout,
    *,
    slot: str = DEFAULT_SLOT,
    heartbeat_interval_s: float = DEFAULT_INTERVAL_S,
    log: Log | None = None,
) -> ArchivingReport:
    """Archive ``server`` continuously into ``layout`` (idempotent; see the module docstring).

    ``url`` is the database the heartbeats go to (the receiver and base backups use the same
    server). Raises :class:`.layout.PitrError` naming what could not be started.
    """
    t0 = time.monotonic()
    prepared = prepare_local_source(server)
    if prepared.changed and log is not None:
        log.info(f"WAL archive source prepared: {', '.join(prepared.changed)}")
    started = start_receiver(layout, url, slot=slot, synchronous=True)
    taken: str | None = None
    if not list_backups(layout):
        backup = take_base_backup(layout, url, kind="full")
        taken = backup.id
        if log is not None:
            log.info(f"first full base backup {backup.id} taken in {backup.seconds:.1f} s")
    writer = start_heartbeat_writer(layout, url, interval_s=heartbeat_interval_s)
    report = ArchivingReport(
        root=str(layout.root),
        receiver_pid=started.pid,
        heartbeat_pid=writer.pid,
        source_changed=list(prepared.changed),
        restarted_server=prepared.restarted,
        base_backup=taken,
        seconds=round(time.monotonic() - t0, 3),
    )
    if log is not None:
        log.info(
            f"continuous archiving into {layout.root}: receiver pid {started.pid}, heartbeat "
            f"writer pid {writer.pid} (every {heartbeat_interval_s:g} s)"
        )
    return report


def stop_continuous_archiving(layout: ArchiveLayout) -> dict[str, Any]:
    """Stop the heartbeat writer, then the receiver (which flushes first); what was running.

    The slot stays: the server keeps the WAL until the receiver comes back.
    """
    return {
        "heartbeat_writer": stop_heartbeat_writer(layout),
        "receiver": stop_receiver(layout),
    }
