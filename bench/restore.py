"""Benchmark (not a test): the restore drill against the raw restore, in one run.

    python -m bench.restore --scale 10
    python -m bench.restore --quick        # CI form: scale 0.1, same code path, seconds

On the bench sandbox of ``bench.backup`` (``--home``, seeded at ``--scale``), for the newest set
of its store (taken first with ``twinme-ops backup`` when there is none), it times

* the raw restore of the set's own dump (named by its manifest): ``zstd -d | pg_restore`` with
  the drill's flags into a fresh database of a scratch PostgreSQL tuned like the drill's
  (:mod:`bench.common`), before and after the drill (averaged);
* the drill as a library call (``run_drill``, no Dagster): sha256 + decompression + a fresh
  scratch server + pg_restore + row counts + a pgvector query, then Redis and files;

and prints throughput ratios (raw time / drill time; goal for PostgreSQL: >= 0.83, i.e. at most
1.2x the raw time). ``bench.backup`` times the same drill inside nightly_backup_job. Exits
non-zero if the drill or a baseline fails.
"""

from __future__ import annotations

import sys
import time

from bench.common import (
    MIB,
    bench_sandbox,
    parse_args,
    raw_restore,
    read_bench_set,
    run_backup_cli,
    scratch_postgres,
    speed,
)
from bench.results_io import report
from twinme_ops.lib.drill import run_drill


def main() -> int:
    args = parse_args((__doc__ or "").splitlines()[0])
    with bench_sandbox(args.home, args.scale) as bench:
        set_files = read_bench_set(bench)
        if set_files is None:
            print("no set in the bench store: taking one with twinme-ops backup...", flush=True)
            set_files = run_backup_cli(bench, quiet=True).set_files
        pg = set_files.postgres
        roles = pg["source"]["policy_roles"]
        with scratch_postgres() as (server, scratch_start_s):
            raw_before = raw_restore(server, set_files.dump, roles)
            started = time.monotonic()
            result = run_drill(
                bench.store(),
                set_files.set_id,
                key=None,
                log=lambda m: print(m, flush=True),
                record=False,
            )
            drill_s = time.monotonic() - started
            raw_after = raw_restore(server, set_files.dump, roles)
    if not result.passed:
        print(f"drill of {set_files.set_id} FAILED: {result.reason}", file=sys.stderr)
        return 1
    raw_s = (raw_before + raw_after) / 2
    results = {
        "scale": args.scale,
        "quick": args.quick,
        "set_id": set_files.set_id,
        "dump_mib": round(pg["bytes_in"] / MIB, 1),
        "raw_restore_s": [round(raw_before, 2), round(raw_after, 2)],
        "scratch_server_start_s": round(scratch_start_s, 2),
        "drill_postgres_s": result.rto_s["postgres"],
        "drill_postgres_vs_raw": speed(raw_s, result.rto_s["postgres"]),
        "drill_total_s": round(drill_s, 2),
        "drill_total_vs_raw": speed(raw_s, drill_s),
        "rto_s": result.rto_s,
    }
    report(
        "restore",
        results,
        f"drill PostgreSQL: {results['drill_postgres_vs_raw']}x the raw restore's throughput "
        f"(zstd -d | pg_restore into a tuned scratch server; goal >= 0.83; "
        f"{result.rto_s['postgres']:.1f} s vs {raw_s:.1f} s); whole drill incl. Redis and "
        f"files: {results['drill_total_vs_raw']}x",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
