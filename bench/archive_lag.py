"""Benchmark (not a test): how far behind the WAL archive is under a steady write load, ours against
PostgreSQL's own archiving, in one run.

    python -m bench.archive_lag              # 100 transactions/s for 180 s, archive_timeout=60
    python -m bench.archive_lag --quick      # CI form: 5 s, archive_timeout=2, same code path

One server (:mod:`bench.pitr_common`) is archived two ways at once, under the same load:

* **ours**: the local engine's ``pg_receivewal --synchronous`` on its slot (``start_receiver``);
* **raw**: ``archive_mode = on``, ``archive_command`` copying each completed segment into a
  directory (``cp`` then ``mv``, so a half-copied file is never seen), ``archive_timeout = 60``:
  what PostgreSQL does without a streaming archiver.

The load is pgbench from the wheel at a steady ``--rate`` (``-R``: a Poisson schedule), two
clients: nine in ten transactions TPC-B-like (five statements), one in ten a heartbeat
(``twinme_ops.heartbeat``), so the RPO's heartbeat basis has a commit every 0.1 s at 100/s.
Before the load, one heartbeat and a segment switch that both archives complete, so that each
holds a heartbeat from the start. Every ``--interval`` (0.1 s) it samples

* ours as the RPO sensor measures it: ``measure_rpo`` (``backups/pitr/rpo.py``: 0 when the archive
  has flushed everything, else the age of the newest heartbeat it holds) and ``archive_status``'s
  ``lag_bytes`` (``pg_current_wal_lsn()`` minus the receiver's ``flush_lsn``), plus
  ``pg_stat_replication.flush_lag`` (PostgreSQL's own time lag of the receiver's flushes);
* raw, by the same definitions: the archived position is the end of the newest segment in the
  archive directory; its lag in bytes, and the age of the newest heartbeat at or before it.

Reported: p50 / p95 / max of each, the load's achieved tps and latency, and the ratio ours/raw of
the RPO's p95 and max. Exits non-zero if pgbench fails or no sample was taken.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.pitr_common import (
    archived_server,
    fmt_bytes,
    pgbench,
    pgbench_argv,
    pgbench_figures,
    quick_args,
    spread,
)
from bench.pitr_common import wal_lsn as wal_position
from bench.results_io import report
from twinme_ops.backups.pitr.heartbeat import (
    SCHEMA,
    TABLE,
    ensure_heartbeat_table,
    write_heartbeat,
)
from twinme_ops.backups.pitr.layout import (
    DEFAULT_SEGMENT_SIZE,
    SEGMENT_RE,
    as_user,
    format_lsn,
    parse_lsn,
    segment_start,
)
from twinme_ops.backups.pitr.receiver import wait_for_flush
from twinme_ops.backups.pitr.rpo import measure_rpo
from twinme_ops.scratch.local import PG_SYSTEM_USER, ensure_system_user

HEARTBEAT_SQL = (
    f"INSERT INTO {SCHEMA}.{TABLE} (at, lsn) VALUES (clock_timestamp(), pg_current_wal_lsn()) "
    "ON CONFLICT DO NOTHING;\n"
)


SAMPLED = ("ours_rpo_s", "ours_lag_bytes", "ours_flush_lag_ms", "raw_rpo_s", "raw_lag_bytes")


def archive_settings(archive_dir: Path, timeout_s: int) -> dict[str, str]:
    """PostgreSQL's own archiving into ``archive_dir``: each completed segment, or every
    ``timeout_s`` seconds at the latest (a forced segment switch)."""
    command = f"cp %p {archive_dir}/%f.tmp && mv {archive_dir}/%f.tmp {archive_dir}/%f"
    return {
        "archive_mode": "on",
        "archive_command": command,
        "archive_timeout": str(timeout_s),
    }


def archived_end(archive_dir: Path) -> int | None:
    """The end of the newest segment ``archive_command`` has completed (None: none yet)."""
    names = [n for n in os.listdir(archive_dir) if SEGMENT_RE.match(n)]
    if not names:
        return None
    return segment_start(max(names))[1] + DEFAULT_SEGMENT_SIZE


def start_both_archives(conn: Any, src: Any, archive_dir: Path) -> None:
    """A heartbeat, then a segment switch that both archives complete: from here on each holds a
    heartbeat, so each RPO is measured from the start (never unknown)."""
    write_heartbeat(conn)
    switched = conn.execute("SELECT pg_switch_wal()::text").fetchone()[0]
    wait_for_flush(conn, parse_lsn(switched), timeout_s=60)
    deadline = time.monotonic() + 60
    while (archived_end(archive_dir) or 0) < parse_lsn(switched):
        if time.monotonic() > deadline:
            raise SystemExit(f"archive_command did not archive the segment ending at {switched}")
        time.sleep(0.05)


def sample(src: Any, conn: Any, archive_dir: Path) -> dict[str, Any]:
    """One reading of both archives (see the module docstring)."""
    reading = measure_rpo(src.layout, src.url)
    now = time.time()
    current, flush_lag = conn.execute(
        "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn, "
        "(SELECT extract(epoch FROM flush_lag)::float8 FROM pg_stat_replication "
        " WHERE application_name = 'twinme_wal_archive')"
    ).fetchone()
    end = archived_end(archive_dir)
    raw_lag = None if end is None else max(0, int(current) - end)
    raw_rpo: float | None = None
    if raw_lag == 0:
        raw_rpo = 0.0
    elif end is not None:
        row = conn.execute(
            f"SELECT extract(epoch FROM at)::float8 FROM {SCHEMA}.{TABLE} "
            "WHERE lsn <= %s::pg_lsn ORDER BY at DESC LIMIT 1",
            (format_lsn(end),),
        ).fetchone()
        raw_rpo = None if row is None else max(0.0, now - row[0])
    return {
        "ours_rpo_s": reading.rpo_s,
        "ours_basis": reading.basis,
        "ours_lag_bytes": reading.status.lag_bytes,
        "ours_flush_lag_ms": None if flush_lag is None else flush_lag * 1000,
        "raw_rpo_s": raw_rpo,
        "raw_lag_bytes": raw_lag,
    }


def column(samples: list[dict[str, Any]], key: str) -> list[float]:
    return [float(s[key]) for s in samples if s[key] is not None]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=int, default=None, help="transactions/s (default 100)")
    parser.add_argument("--seconds", type=int, default=None, help="load time (default 180)")
    parser.add_argument("--archive-timeout", type=int, default=None, help="default 60")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between samples")
    args = quick_args(parser, {"rate": (100, 50), "seconds": (180, 5), "archive_timeout": (60, 2)})
    archive_dir = Path(tempfile.mkdtemp(prefix="twinme-bench-archive-command-"))
    if os.geteuid() == 0:  # archive_command runs as the server's user
        ensure_system_user(PG_SYSTEM_USER)
        uid, gid, _ = as_user(PG_SYSTEM_USER)
        os.chown(archive_dir, uid or 0, gid or 0)
    samples: list[dict[str, Any]] = []
    settings = archive_settings(archive_dir, args.archive_timeout)
    with archived_server("twinme-bench-lag-", settings) as src:
        pgbench(src.server, ["-i", "-s", "1", "-q"])
        script = src.workdir / "heartbeat.sql"
        script.write_text(HEARTBEAT_SQL)
        with src.connect() as conn:
            ensure_heartbeat_table(conn)
            start_both_archives(conn, src, archive_dir)
            load_start = wal_position(conn)
            load = ["-n", "-c", "2", "-j", "2", "-R", str(args.rate), "-T", str(args.seconds)]
            load += ["-b", "tpcb-like@9", "-f", f"{script}@1"]
            proc = subprocess.Popen(
                pgbench_argv(src.server, load),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                stdin=subprocess.DEVNULL,
            )
            started = time.monotonic()
            time.sleep(min(1.0, args.seconds / 5))  # the load is under way
            while proc.poll() is None:
                tick = time.monotonic()
                samples.append({"t": round(tick - started, 3), **sample(src, conn, archive_dir)})
                time.sleep(max(0.0, args.interval - (time.monotonic() - tick)))
            output = proc.stdout.read() if proc.stdout else ""
            if proc.returncode != 0:
                raise SystemExit(f"pgbench failed (exit {proc.returncode}):\n{output}")
            wal_bytes = wal_position(conn) - load_start
    if not samples:
        raise SystemExit("no sample was taken")
    load_figures = pgbench_figures(output)
    figures = {
        key: spread(column(samples, key))
        for key in (
            "ours_rpo_s",
            "ours_lag_bytes",
            "ours_flush_lag_ms",
            "raw_rpo_s",
            "raw_lag_bytes",
        )
        if column(samples, key)
    }
    ours, raw = figures["ours_rpo_s"], figures.get("raw_rpo_s", {"p95": 0.0, "max": 0.0})
    bases = sorted({s["ours_basis"] for s in samples})
    results = {
        "quick": args.quick,
        "date": datetime.now(UTC).date().isoformat(),
        "machine": f"{os.cpu_count()} cores",
        "rate_tps": args.rate,
        "seconds": args.seconds,
        "archive_timeout_s": args.archive_timeout,
        "interval_s": args.interval,
        "samples": len(samples),
        "raw_rpo_samples": len(column(samples, "raw_rpo_s")),
        "ours_rpo_bases": bases,
        "load": load_figures,
        "wal_mb_per_s": round(wal_bytes / 1e6 / max(args.seconds, 1), 3),
        **figures,
        "ours_vs_raw_rpo": {
            "p95": round(ours["p95"] / raw["p95"], 4) if raw["p95"] else None,
            "max": round(ours["max"] / raw["max"], 4) if raw["max"] else None,
        },
    }
    lag = figures.get("ours_flush_lag_ms", {"p50": 0.0, "p95": 0.0, "max": 0.0})
    lines = [
        f"load: {load_figures.get('tps', 0):.1f} tps (asked {args.rate}), latency "
        f"{load_figures.get('latency_avg_ms', 0):.2f} ms, {len(samples)} samples every "
        f"{args.interval:g} s over {args.seconds} s",
        f"ours (pg_receivewal --synchronous): RPO p50/p95/max {ours['p50']:.3f} / "
        f"{ours['p95']:.3f} / {ours['max']:.3f} s; behind by "
        + " / ".join(fmt_bytes(figures["ours_lag_bytes"][k]) for k in ("p50", "p95", "max"))
        + f"; flush_lag {lag['p50']:.1f} / {lag['p95']:.1f} / {lag['max']:.1f} ms",
        f"raw (archive_command, archive_timeout={args.archive_timeout}): RPO p50/p95/max "
        f"{raw.get('p50', 0):.1f} / {raw['p95']:.1f} / {raw['max']:.1f} s; behind by "
        + " / ".join(
            fmt_bytes(figures.get("raw_lag_bytes", {}).get(k, 0)) for k in ("p50", "p95", "max")
        ),
        f"RPO ours/raw: p95 {results['ours_vs_raw_rpo']['p95']}x, max "
        f"{results['ours_vs_raw_rpo']['max']}x",
    ]
    report("archive_lag", results, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
