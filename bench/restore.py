"""Benchmark (not a test): the restore drill against the raw restore, in one run.

    python -m bench.restore --scale 10

On the bench sandbox of ``bench/backup.py`` (seeded at ``--scale``), after one backup, it times

* the raw restore of the same set's dump: ``zstd -d -c postgres.dump.zst | pg_restore`` into a
  fresh database (twice, before and after the drill),
* the drill (``run_drill``): sha256 + decompression + pg_restore into a scratch server + row
  counts + pgvector query, plus Redis and files,

and prints ratios (drill time / raw time; goal: at most 1.2 for PostgreSQL).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg

from bench.results_io import report
from twinme_ops.lib.drill import run_drill
from twinme_ops.lib.pgtools import pg_bin
from twinme_ops.lib.store import BackupStore
from twinme_ops.sandbox.servers import ensure_sandbox


def raw_restore(dump: Path, database_url: str, dbname: str) -> float:
    """Seconds for zstd -d | pg_restore into a fresh database (pipefail)."""
    admin = database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{dbname}"'.encode())
        conn.execute(f'CREATE DATABASE "{dbname}"'.encode())
    target = database_url.rsplit("/", 1)[0] + f"/{dbname}"
    cmd = f"zstd -d -q -c '{dump}' | '{pg_bin('pg_restore')}' --no-owner -d '{target}'"
    started = time.monotonic()
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True)
    elapsed = time.monotonic() - started
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{dbname}"'.encode())
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scale", type=float, default=10.0)
    parser.add_argument("--home", default="/tmp/twinme-bench", help="TWINME_HOME of the bench")
    args = parser.parse_args()
    home = Path(args.home).absolute()
    store_dir = home / "bench-store"
    if not any(store_dir.glob("*/manifest.json")):
        subprocess.run(
            [sys.executable, "-m", "bench.backup", "--scale", str(args.scale)]
            + ["--home", str(home)],
            check=True,
            cwd=Path(__file__).parents[1],
        )
    info = ensure_sandbox(home)
    store = BackupStore(url=f"file://{store_dir}")
    set_id = sorted(p.parent.name for p in store_dir.glob("*/manifest.json"))[-1]
    manifest = json.loads((store_dir / set_id / "manifest.json").read_text())
    dump = store_dir / set_id / manifest["artifacts"]["postgres"]["name"]

    raw_before = raw_restore(dump, info.database_url, "bench_raw_restore")
    started = time.monotonic()
    result = run_drill(store, set_id, key=None, log=lambda m: print(m, flush=True), record=False)
    drill_s = time.monotonic() - started
    raw_after = raw_restore(dump, info.database_url, "bench_raw_restore")
    raw_s = (raw_before + raw_after) / 2
    assert result.passed, result.reason
    results = {
        "scale": args.scale,
        "dump_mib": round(manifest["artifacts"]["postgres"]["bytes_in"] / 2**20, 1),
        "raw_restore_s": [round(raw_before, 2), round(raw_after, 2)],
        "drill_postgres_s": result.rto_s["postgres"],
        "drill_postgres_vs_raw": round(result.rto_s["postgres"] / raw_s, 3),
        "drill_total_s": round(drill_s, 2),
        "drill_total_vs_raw": round(drill_s / raw_s, 3),
        "rto_s": result.rto_s,
    }
    report(
        "restore",
        results,
        f"drill PostgreSQL: {results['drill_postgres_vs_raw']}x the raw restore time (goal <= "
        f"1.2); whole drill incl. Redis and files: {results['drill_total_vs_raw']}x",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
