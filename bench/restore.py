"""Benchmark (not a test): the restore drill against the raw restore, in one run.

    python -m bench.restore --scale 10
    python -m bench.restore --quick        # CI form: scale 0.1, 1 round, same code path

On the bench sandbox of ``bench.backup`` (``--home``, seeded at ``--scale``), for the newest set
of its store (taken first with ``twinme-ops backup`` when there is none), it times

* the raw restore of the set's own dump (named by its manifest): ``zstd -d | pg_restore`` with
  the drill's flags into a fresh database of a scratch PostgreSQL tuned like the drill's
  (:mod:`bench.common`), before the first drill and after each;
* the drill as a library call (``run_drill``, no Dagster): sha256 + decompression + a fresh
  scratch server + pg_restore + row counts + a pgvector query, then Redis and files;

and prints throughput ratios of the medians over ``--rounds`` (default 3) drills (raw time / drill
time; goal for PostgreSQL: >= 0.83, i.e. at most 1.2x the raw time). ``bench.backup`` times the
same drill inside nightly_backup_job. Exits non-zero if the drill or a baseline fails.
"""

from __future__ import annotations

import sys
import time
from statistics import median

from bench.common import (
    MIB,
    PrintLog,
    bench_sandbox,
    parse_args,
    raw_restore,
    read_bench_set,
    run_backup_cli,
    scratch_postgres,
    speed,
)
from bench.results_io import report
from tests.support.list_log import ListLog
from twinme_ops.backups.drill import DrillResult, run_drill


def main() -> int:
    args = parse_args((__doc__ or "").splitlines()[0])
    raw: list[float] = []
    drills: list[tuple[DrillResult, float]] = []
    with bench_sandbox(args.home, args.scale) as bench:
        set_files = read_bench_set(bench)
        if set_files is None:
            print("no set in the bench store: taking one with twinme-ops backup...", flush=True)
            set_files = run_backup_cli(bench, quiet=True).set_files
        pg = set_files.postgres
        roles = pg["source"]["policy_roles"]
        with scratch_postgres() as (server, scratch_start_s):
            raw.append(raw_restore(server, set_files.dump, roles))
            for round_ in range(args.rounds):
                started = time.monotonic()
                result = run_drill(
                    bench.store(),
                    set_files.set_id,
                    key=None,
                    log=PrintLog() if round_ == 0 else ListLog(),
                    record=False,
                )
                drills.append((result, time.monotonic() - started))
                if not result.passed:
                    print(f"drill of {set_files.set_id} FAILED: {result.reason}", file=sys.stderr)
                    return 1
                raw.append(raw_restore(server, set_files.dump, roles))
    raw_s = median(raw)
    drill_pg_s = median(result.rto_s["postgres"] for result, _ in drills)
    drill_s = median(seconds for _, seconds in drills)
    components = drills[0][0].rto_s
    results = {
        "scale": args.scale,
        "quick": args.quick,
        "rounds": args.rounds,
        "set_id": set_files.set_id,
        "dump_mib": round(pg["bytes_in"] / MIB, 1),
        "raw_restore_s": [round(r, 2) for r in raw],
        "scratch_server_start_s": round(scratch_start_s, 2),
        "drill_postgres_s": [result.rto_s["postgres"] for result, _ in drills],
        "drill_postgres_vs_raw": speed(raw_s, drill_pg_s),
        "drill_total_s": [round(seconds, 2) for _, seconds in drills],
        "drill_total_vs_raw": speed(raw_s, drill_s),
        "rto_s_median": {c: median(r.rto_s[c] for r, _ in drills) for c in components},
    }
    of = f"median of {args.rounds}" if args.rounds > 1 else "1 round"
    report(
        "restore",
        results,
        f"drill PostgreSQL: {results['drill_postgres_vs_raw']}x the raw restore's throughput "
        f"(zstd -d | pg_restore into a tuned scratch server; goal >= 0.83; "
        f"{drill_pg_s:.1f} s vs {raw_s:.1f} s, {of}); whole drill incl. Redis and "
        f"files: {results['drill_total_vs_raw']}x",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
