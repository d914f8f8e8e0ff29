"""Benchmark (not a test): loading the code location against a bare ``import dagster``.

    python -m bench.load --rounds 7
    python -m bench.load --quick        # CI form: 1 round, same code path

Each round starts, one after the other, three fresh processes (interleaved, so that other work
on a shared machine weighs on each side alike) and times each from start to exit:

* ``python -c "import dagster"``: the floor, what any code location pays;
* the load: import ``twinme_ops.definitions``, build the definitions (the autoloaded ``defs/``
  objects and the resources of the environment) and their repository with every job resolved:
  what the code server, the daemon and every run worker do before anything runs;
* ``dagster definitions validate -m twinme_ops.definitions``: the same load through Dagster's
  CLI, which also starts a temporary instance and builds the snapshots the webserver reads.

It prints the min and median of each and the ratio of the medians, load / ``import dagster``
(goal: under 2x). The processes run with ``TWINME_ENV=local`` and nothing configured (the
defaults of a fresh checkout), from a temporary ``DAGSTER_HOME`` with the repository's
``dagster.yaml``, and load compiled bytecode, as in the image (``pip install`` compiles the
package): a first untimed round writes ``__pycache__`` beside the sources even where
``PYTHONDONTWRITEBYTECODE`` is set (without it every load would also compile the package's
modules, about 0.2 s here, which ``import dagster``, compiled in site-packages, does not pay).
Exits non-zero if a process fails.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from bench.results_io import report

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROUNDS = 7
GOAL = 2.0
LOAD = (
    "import twinme_ops.definitions as location\n"
    "location.defs().get_repository_def().get_all_jobs()\n"
)


def _commands() -> dict[str, list[str]]:
    dagster_cli = str(Path(sys.executable).with_name("dagster"))
    return {
        "import dagster": [sys.executable, "-c", "import dagster"],
        "load": [sys.executable, "-c", LOAD],
        "definitions validate": [
            dagster_cli,
            *("definitions", "validate", "-m", "twinme_ops.definitions"),
        ],
    }


def _env(home: Path) -> dict[str, str]:
    """This environment without what would configure servers, a store or a cluster, writing
    bytecode."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TWINME_", "DAGSTER_", "AWS_", "DATABASE_", "REDIS_"))
        and key not in ("KUBECONFIG", "SLACK_WEBHOOK_URL", "PYTHONDONTWRITEBYTECODE")
    }
    return {**env, "PYTHONPATH": str(REPO), "DAGSTER_HOME": str(home)}


def _timed(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(
            f"{' '.join(argv[:3])} exited with {proc.returncode}:\n{proc.stderr[-3000:]}"
        )
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS)
    parser.add_argument("--quick", action="store_true", help="1 round (CI)")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    commands = _commands()
    times: dict[str, list[float]] = {name: [] for name in commands}
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        home = Path(tmp)
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        env = _env(home)
        for argv in commands.values():  # bytecode and the file cache: no first-run penalty
            _timed(argv, env, home)
        for round_ in range(rounds):
            for name, argv in commands.items():
                times[name].append(_timed(argv, env, home))
            print(
                f"round {round_ + 1}: "
                + ", ".join(f"{name} {times[name][-1]:.2f} s" for name in commands),
                flush=True,
            )
    floor = median(times["import dagster"])
    figures = {
        name: {
            "runs_s": [round(t, 3) for t in values],
            "min_s": round(min(values), 3),
            "median_s": round(median(values), 3),
            "ratio_of_medians": round(median(values) / floor, 2),
        }
        for name, values in times.items()
    }
    lines = [
        f"{name}: min {fig['min_s']:.2f} s, median {fig['median_s']:.2f} s, "
        f"{fig['ratio_of_medians']:.2f}x import dagster"
        for name, fig in figures.items()
    ]
    load = figures["load"]["ratio_of_medians"]
    lines.append(
        f"load the code location: {load:.2f}x import dagster (goal < {GOAL:g}x"
        f"{', met' if load < GOAL else ', NOT met'}), {rounds} interleaved round(s)"
    )
    report("load", {"rounds": rounds, "quick": args.quick, "figures": figures}, "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
