"""Benchmark (not a test): nightly_backup_job's two parts against their raw baselines, in one run.

    python -m bench.backup --scale 10      # about 1 GB of database
    python -m bench.backup --quick         # CI form: scale 0.1, 1 round, same code path

On the bench sandbox (``--home``, default /tmp/twinme-bench) seeded at ``--scale``, it runs
``twinme-ops backup --force`` (nightly_backup_job: PostgreSQL, Redis and files, zstd level 3 on
all cores, sha256, a local store, then the restore_drill check of the set) in a process of its own
and splits the run, as Dagster recorded its steps, into

* the **backup part** (run start to the end of the last backup step, ``backup_set`` writing the
  manifest), against the raw ``pg_dump -Fc -Z0 | zstd -3 -T0`` of the same database; and, like
  for like since the part also backs up Redis and the files, against that plus
  ``redis-cli --rdb - | zstd -3 -T0`` and ``tar -c | zstd -3 -T0`` of the files;
* the **drill part** (the ``restore_drill`` check's step: sha256, decompression, a scratch
  PostgreSQL + pg_restore + row counts + a pgvector query, Redis and files), against the raw
  ``zstd -d | pg_restore`` of the set's own dump into a scratch PostgreSQL tuned like the drill's
  (see :mod:`bench.common`).

``--rounds N`` (default 3) runs the job N times, each followed by both raw baselines (the raw
backup also runs once before the first job), and compares medians, so that cache effects and a
busy shared machine favour neither side.

It also reports the CLI's wall time (with Python and Dagster start-up) and its peak RSS
(``wait4``: the largest process of its tree). Ratios are throughputs, raw time / our time (1.0 is
as fast as the raw commands). Goals: backup part >= 0.9, peak RSS < 300 MiB. Exits non-zero if
the job, its drill or a baseline fails. Figures go to ``bench/results/backup-<stamp>.json``
(or ``$TWINME_BENCH_RESULTS``).
"""

from __future__ import annotations

import shutil
import sys
from statistics import median

from bench.common import (
    MIB,
    BackupRun,
    bench_sandbox,
    parse_args,
    raw_backup,
    raw_restore,
    run_backup_cli,
    scratch_postgres,
    speed,
)
from bench.results_io import report


def main() -> int:
    args = parse_args((__doc__ or "").splitlines()[0])
    raw: list[dict[str, float]] = []
    runs: list[BackupRun] = []
    restores: list[float] = []
    with bench_sandbox(args.home, args.scale) as bench, scratch_postgres() as (server, start_s):
        raw.append(raw_backup(bench.info, args.home))
        for round_ in range(args.rounds):
            shutil.rmtree(bench.store_dir, ignore_errors=True)
            run = run_backup_cli(bench, quiet=args.quick or round_ > 0)
            runs.append(run)
            raw.append(raw_backup(bench.info, args.home))
            pg = run.set_files.postgres
            restores.append(raw_restore(server, run.set_files.dump, pg["source"]["policy_roles"]))
    last = runs[-1]
    pg = last.set_files.postgres
    raw_s = median(r["postgres"] for r in raw)
    raw_all_s = median(sum(r.values()) for r in raw)
    backup_s = median(run.part_s(drill=False) for run in runs)
    pg_s = median(run.set_files.postgres["duration_s"] for run in runs)
    restore_s = median(restores)
    drill_s = median(run.part_s(drill=True) for run in runs)
    drill_rto = {c: median(run.drill_rto_s.get(c, 0.0) for run in runs) for c in last.drill_rto_s}
    peak_rss = max(run.peak_rss_mib for run in runs)
    results = {
        "scale": args.scale,
        "quick": args.quick,
        "rounds": args.rounds,
        "database_size_mib": round(bench.database_size / MIB, 1),
        "dump_mib": round(pg["bytes_in"] / MIB, 1),
        "set_total_mib": round(last.set_files.manifest["total_bytes"] / MIB, 1),
        "raw_backup_s": {c: [round(r[c], 2) for r in raw] for c in raw[0]},
        "backup_part_s": [round(run.part_s(drill=False), 2) for run in runs],
        "backup_part_vs_raw": speed(raw_s, backup_s),
        "backup_part_vs_raw_all_components": speed(raw_all_s, backup_s),
        "postgres_artifact_s": [run.set_files.postgres["duration_s"] for run in runs],
        "postgres_artifact_vs_raw": speed(raw_s, pg_s),
        "raw_restore_s": [round(r, 2) for r in restores],
        "scratch_server_start_s": round(start_s, 2),
        "drill_part_s": [round(run.part_s(drill=True), 2) for run in runs],
        "drill_part_vs_raw": speed(restore_s, drill_s),
        "drill_rto_s_median": drill_rto,
        "drill_postgres_vs_raw": speed(restore_s, drill_rto.get("postgres", 0.0)),
        "job_run_s": [round(run.run_s, 2) for run in runs],
        "steps_s": {k: round(e - s, 2) for k, (s, e) in last.steps_s.items()},
        "cli_wall_s": [round(run.cli_wall_s, 2) for run in runs],
        "peak_rss_mib": [round(run.peak_rss_mib, 1) for run in runs],
        "run_ids": [run.run_id for run in runs],
    }
    of = f"median of {args.rounds}" if args.rounds > 1 else "1 round"
    report(
        "backup",
        results,
        f"backup part: {results['backup_part_vs_raw']}x the raw pipeline's throughput "
        f"(pg_dump -Fc -Z0 | zstd -3 -T0; goal >= 0.9; {backup_s:.1f} s vs {raw_s:.1f} s, {of}); "
        f"against the raw pipelines of all three components ({raw_all_s:.1f} s): "
        f"{results['backup_part_vs_raw_all_components']}x; PostgreSQL artifact alone: "
        f"{results['postgres_artifact_vs_raw']}x\n"
        f"drill part: {results['drill_part_vs_raw']}x the raw restore's throughput (zstd -d | "
        f"pg_restore into a tuned scratch server; {drill_s:.1f} s vs {restore_s:.1f} s); its "
        f"PostgreSQL component alone: {results['drill_postgres_vs_raw']}x\n"
        f"peak RSS {peak_rss:.1f} MiB (goal < 300); whole run {median(results['job_run_s']):.1f} "
        f"s, CLI {median(results['cli_wall_s']):.1f} s",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
