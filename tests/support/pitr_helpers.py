"""Helpers for the point-in-time recovery tests: a heartbeat writer running beside the test."""

from __future__ import annotations

import threading
from typing import Any

from twinme_ops.backups.pitr.heartbeat import Heartbeat, ensure_heartbeat_table, write_heartbeat
from twinme_ops.scratch.postgres import PostgresServer


class HeartbeatWriter:
    """Commits a heartbeat every ``interval_s`` on its own connection until :meth:`stop`."""

    def __init__(self, server: PostgresServer, interval_s: float = 0.25) -> None:
        self.server = server
        self.interval_s = interval_s
        self.written: list[Heartbeat] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        with server.connect() as conn:
            ensure_heartbeat_table(conn)
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)

    def _run(self) -> None:
        conn: Any = None
        try:
            conn = self.server.connect()
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
