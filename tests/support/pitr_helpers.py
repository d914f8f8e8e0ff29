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

from tests.support.backup_helpers import ENV_VARS
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


def location_env(
    monkeypatch: Any,
    tmp_path: Path,
    *,
    database_url: str,
    redis_url: str,
    slack_url: str,
    wal_archive: dict[str, str],
) -> dict[str, str]:
    """Set (and return) the code location's environment for a recovery or drill test: a local
    backup store, ``wal_archive``'s TWINME_WAL_ARCHIVE* variables, and nothing of the caller's
    (no cluster, access policy or API URL leaking in from the shell)."""
    for var in (
        *ENV_VARS,
        "KUBECONFIG",
        "TWINME_ACCESS_POLICY",
        "TWINME_API_URL",
        "TWINME_WAL_ARCHIVE_SERVER_NAME",
    ):
        monkeypatch.delenv(var, raising=False)
    files = tmp_path / "files"
    files.mkdir()
    env = {
        "TWINME_HOME": str(tmp_path / "home"),
        "TWINME_BACKUP_URL": f"file://{tmp_path}/backups",
        "SLACK_WEBHOOK_URL": slack_url,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "TWINME_FILES_DIR": str(files),
        **wal_archive,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env
