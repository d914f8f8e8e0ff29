"""Benchmark (not a test): nightly_backup_job's two parts against their raw baselines, in one run.

    python -m bench.backup --scale 10      # about 1 GB of database
    python -m bench.backup --quick         # CI form: scale 0.1, same code path, seconds

On the bench sandbox (``--home``, default /tmp/twinme-bench) seeded at ``--scale``, it runs
``twinme-ops backup --force`` (nightly_backup_job: PostgreSQL, Redis and files, zstd level 3 on
all cores, sha256, a local store, then the restore_drill check of the set) in a process of its own
and splits the run, as Dagster recorded its steps, into

* the **backup part** (run start to the end of the last backup step, ``backup_set`` writing the
  manifest), against the raw ``pg_dump -Fc -Z0 | zstd -3 -T0`` of the same database, timed before
  and after the job (averaged, to even out cache effects); and, like for like since the part
  also backs up Redis and the files, against that plus ``redis-cli --rdb - | zstd -3 -T0`` and
  ``tar -c | zstd -3 -T0`` of the files;
* the **drill part** (the ``restore_drill`` check's step: sha256, decompression, a scratch
  PostgreSQL + pg_restore + row counts + a pgvector query, Redis and files), against the raw
  ``zstd -d | pg_restore`` of the set's own dump into a scratch PostgreSQL tuned like the drill's
  (see :mod:`bench.common`).

It also reports the CLI's wall time (with Python and Dagster start-up) and its peak RSS
(``wait4``: the largest process of its tree). Ratios are throughputs, raw time / our time (1.0 is
as fast as the raw commands). Goals: backup part >= 0.9, peak RSS < 300 MiB. Exits non-zero if
the job, its drill or a baseline fails. Figures go to ``bench/results/backup-<stamp>.json``
(or ``$TWINME_BENCH_RESULTS``).
"""

from __future__ import annotations

import shutil
import sys

from bench.common import (
    MIB,
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
    with bench_sandbox(args.home, args.scale) as bench:
        shutil.rmtree(bench.store_dir, ignore_errors=True)
        raw_before = raw_backup(bench.info, args.home)
        run = run_backup_cli(bench, quiet=args.quick)
        raw_after = raw_backup(bench.info, args.home)
        pg = run.set_files.postgres
        with scratch_postgres() as (server, scratch_start_s):
            restore_s = raw_restore(server, run.set_files.dump, pg["source"]["policy_roles"])
    raw = {c: (raw_before[c] + raw_after[c]) / 2 for c in raw_before}
    raw_s, raw_all_s = raw["postgres"], sum(raw.values())
    backup_s, drill_s = run.part_s(drill=False), run.part_s(drill=True)
    drill_pg_s = run.drill_rto_s.get("postgres", 0.0)
    results = {
        "scale": args.scale,
        "quick": args.quick,
        "database_size_mib": round(bench.database_size / MIB, 1),
        "dump_mib": round(pg["bytes_in"] / MIB, 1),
        "set_total_mib": round(run.set_files.manifest["total_bytes"] / MIB, 1),
        "raw_backup_s": {c: [round(raw_before[c], 2), round(raw_after[c], 2)] for c in raw},
        "backup_part_s": round(backup_s, 2),
        "backup_part_vs_raw": speed(raw_s, backup_s),
        "backup_part_vs_raw_all_components": speed(raw_all_s, backup_s),
        "postgres_artifact_s": pg["duration_s"],
        "postgres_artifact_vs_raw": speed(raw_s, pg["duration_s"]),
        "raw_restore_s": round(restore_s, 2),
        "scratch_server_start_s": round(scratch_start_s, 2),
        "drill_part_s": round(drill_s, 2),
        "drill_part_vs_raw": speed(restore_s, drill_s),
        "drill_rto_s": run.drill_rto_s,
        "drill_postgres_vs_raw": speed(restore_s, drill_pg_s),
        "job_run_s": round(run.run_s, 2),
        "steps_s": {k: round(e - s, 2) for k, (s, e) in run.steps_s.items()},
        "cli_wall_s": round(run.cli_wall_s, 2),
        "peak_rss_mib": round(run.peak_rss_mib, 1),
        "run_id": run.run_id,
    }
    report(
        "backup",
        results,
        f"backup part: {results['backup_part_vs_raw']}x the raw pipeline's throughput "
        f"(pg_dump -Fc -Z0 | zstd -3 -T0; goal >= 0.9; {backup_s:.1f} s vs {raw_s:.1f} s); "
        f"against the raw pipelines of all three components ({raw_all_s:.1f} s): "
        f"{results['backup_part_vs_raw_all_components']}x; PostgreSQL artifact alone: "
        f"{results['postgres_artifact_vs_raw']}x\n"
        f"drill part: {results['drill_part_vs_raw']}x the raw restore's throughput (zstd -d | "
        f"pg_restore into a tuned scratch server; {drill_s:.1f} s vs {restore_s:.1f} s); its "
        f"PostgreSQL component alone: {results['drill_postgres_vs_raw']}x\n"
        f"peak RSS {results['peak_rss_mib']} MiB (goal < 300); whole run {run.run_s:.1f} s, "
        f"CLI {run.cli_wall_s:.1f} s",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
