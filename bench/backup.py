"""Benchmark (not a test): nightly_backup_job against the raw pipeline, in one run.

    python -m bench.backup --scale 10

On the sandbox seeded at ``--scale`` (10 is about 1 GB of database), it times

* the raw pipeline ``pg_dump -Fc -Z0 | zstd -3 > /dev/null`` on the same database (twice: before
  and after the job, to average out cache effects),
* ``twinme-ops backup`` (nightly_backup_job: PostgreSQL + Redis + files, zstd level 3, sha256,
  written to a local store): the run's duration as Dagster records it, the CLI's wall time
  (with Python and Dagster start-up), and peak RSS (``wait4``: the largest process of its tree),

then prints throughput ratios (raw time / job time; > 1 means the job is faster) and writes them
to ``bench/results/backup-<timestamp>.json``. Goal: ratio >= 0.9, peak RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import psycopg

from bench.results_io import report
from twinme_ops.lib.pgtools import pg_bin
from twinme_ops.sandbox.seed import SeedCounts, seed
from twinme_ops.sandbox.servers import ensure_sandbox

MIB = 1024 * 1024


def raw_pipeline(database_url: str) -> float:
    """Seconds for pg_dump -Fc -Z0 | zstd -3 > /dev/null (pipefail: a failed dump fails)."""
    cmd = f"'{pg_bin('pg_dump')}' -Fc -Z0 -d '{database_url}' | zstd -3 -q -c > /dev/null"
    started = time.monotonic()
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)
    return time.monotonic() - started


def run_job(env: dict[str, str], partition: str) -> tuple[float, float, float]:
    """``twinme-ops backup --force`` in its own process: its wall seconds, the run's own duration
    as Dagster records it (RUN_START to RUN_SUCCESS, what the UI shows), and peak RSS (MiB)."""
    cli = [sys.executable, "-m", "twinme_ops.cli", "backup", "--force", "--partition", partition]
    started = time.monotonic()
    proc = subprocess.Popen(cli, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.monotonic() - started
    output = proc.stdout.read().decode() if proc.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"nightly_backup_job failed:\n{output}")
    print(output)
    run_id = re.search(r"\(run ([0-9a-f-]{36})\)", output)
    assert run_id, output
    instance = dg.DagsterInstance.local_temp(tempdir=str(Path(env["TWINME_HOME"]) / "dagster"))
    stats = instance.get_run_stats(run_id.group(1))
    assert stats.start_time and stats.end_time
    return elapsed, stats.end_time - stats.start_time, usage.ru_maxrss / 1024  # Linux: KiB


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--home", default="/tmp/twinme-bench", help="TWINME_HOME of the bench")
    args = parser.parse_args()

    home = Path(args.home).absolute()
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o755)
    info = ensure_sandbox(home)
    expected = SeedCounts.for_scale(args.scale).messages
    with psycopg.connect(info.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM messages").fetchone()
    if not row or row[0] != expected:
        print(f"seeding the bench sandbox at scale {args.scale} (once)...", flush=True)
        seed(info.database_url, info.redis_url, info.files_dir, args.scale)
    with psycopg.connect(info.database_url) as conn:
        size_row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    db_size = int(size_row[0]) if size_row else 0

    store = home / "bench-store"
    shutil.rmtree(store, ignore_errors=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_"))},
        "TWINME_HOME": str(home),
        "TWINME_BACKUP_URL": f"file://{store}",
    }
    env.pop("SLACK_WEBHOOK_URL", None)
    env.pop("TWINME_BACKUP_ENCRYPTION_KEY", None)
    partition = datetime.now(UTC).strftime("%Y-%m-%d")

    raw_before = raw_pipeline(info.database_url)
    cli_s, job_s, rss_mib = run_job(env, partition)
    raw_after = raw_pipeline(info.database_url)
    raw_s = (raw_before + raw_after) / 2

    manifest = json.loads((store / partition / "manifest.json").read_text())
    pg = manifest["artifacts"]["postgres"]
    pg_step_s = pg["duration_s"]
    results = {
        "scale": args.scale,
        "database_size_mib": round(db_size / MIB, 1),
        "dump_bytes_mib": round(pg["bytes_in"] / MIB, 1),
        "raw_pipeline_s": [round(raw_before, 2), round(raw_after, 2)],
        "job_run_s": round(job_s, 2),
        "job_vs_raw_throughput": round(raw_s / job_s, 3),
        "cli_wall_s": round(cli_s, 2),
        "cli_vs_raw_throughput": round(raw_s / cli_s, 3),
        "postgres_step_s": round(pg_step_s, 2),
        "postgres_step_vs_raw_throughput": round(raw_s / pg_step_s, 3),
        "raw_mib_s": round(pg["bytes_in"] / MIB / raw_s, 1),
        "postgres_step_mib_s": round(pg["bytes_in"] / MIB / pg_step_s, 1),
        "peak_rss_mib": round(rss_mib, 1),
        "set_total_mib": round(manifest["total_bytes"] / MIB, 1),
    }
    report(
        "backup",
        results,
        f"whole job: {results['job_vs_raw_throughput']}x the raw pipeline's throughput "
        f"(goal >= 0.9); with CLI start-up: {results['cli_vs_raw_throughput']}x; "
        f"postgres step alone: {results['postgres_step_vs_raw_throughput']}x; "
        f"peak RSS {results['peak_rss_mib']} MiB (goal < 300)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
