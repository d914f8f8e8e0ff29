"""Helpers for the point-in-time recovery tests: a heartbeat writer running beside the test, and
an archived source server (receiver + full base backup)."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twinme_ops.backups.pitr.basebackup import BaseBackup, take_base_backup
from twinme_ops.backups.pitr.heartbeat import Heartbeat, ensure_heartbeat_table, write_heartbeat
from twinme_ops.backups.pitr.layout import ArchiveLayout
from twinme_ops.backups.pitr.receiver import start_receiver, stop_receiver
from twinme_ops.backups.pitr.source import prepare_local_source
from twinme_ops.scratch.postgres import PostgresServer


class HeartbeatWriter:
    """Commits a heartbeat every ``interval_s`` on its own connection (to ``dbname``) until
    :meth:`stop`."""

    def __init__(
        self, server: PostgresServer, interval_s: float = 0.25, dbname: str = "postgres"
    ) -> None:
        self.server = server
        self.interval_s = interval_s
        self.dbname = dbname
        self.written: list[Heartbeat] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        with server.connect(dbname) as conn:
            ensure_heartbeat_table(conn)
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)

    def _run(self) -> None:
        conn: Any = None
        try:
            conn = self.server.connect(self.dbname)
            while not self._stop.is_set():
                self.written.append(write_heartbeat(conn))
                self._stop.wait(self.interval_s)
        except BaseException as exc:  # surfaced by the tests through .error
            self.error = exc
        finally:
            if conn is not None:
                conn.close()

    def start(self) -> HeartbeatWriter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@dataclass
class ArchivedSource:
    """A source server archived by a --synchronous pg_receivewal, with one full base backup."""

    base: Path
    source: PostgresServer
    layout: ArchiveLayout
    full: BaseBackup


@contextmanager
def archived_source(root: Path) -> Iterator[ArchivedSource]:
    """Start a source ready for archiving, its receiver and a full base backup; stop and remove
    everything afterwards."""
    base = Path(tempfile.mkdtemp(prefix="pitr-", dir=root))
    base.chmod(0o755)
    source = PostgresServer.start(
        base / "source", settings={"wal_level": "replica", "max_wal_senders": "5"}
    )
    layout = ArchiveLayout.at(base / "archive")
    try:
        prepare_local_source(source)
        start_receiver(layout, source.url(), synchronous=True)
        full = take_base_backup(layout, source.url())
        yield ArchivedSource(base, source, layout, full)
    finally:
        stop_receiver(layout)
        source.stop()
        shutil.rmtree(base, ignore_errors=True)
