"""Shared by ``bench.backup`` and ``bench.restore``: arguments, the seeded bench sandbox, the raw
baselines and ``twinme-ops backup`` run in a process of its own.

The raw baselines are what an operator would type, with the same settings as our code:

* backup: ``pg_dump -Fc -Z0 | zstd -3 -T0`` (multi-threaded, like ``write_artifact``), written to
  a file on the store's filesystem; likewise ``redis-cli --rdb -`` and ``tar -c`` of the files,
  for the whole backup part;
* restore: ``zstd -d | pg_restore --exit-on-error --no-owner --no-privileges
  --single-transaction`` (the flags of the drill) into a fresh database of a scratch PostgreSQL
  started exactly as the drill starts its own (:data:`twinme_ops.backups.drill.SCRATCH_SETTINGS`).

Artifact names always come from the set's manifest, never from a naming convention.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import redis
from psycopg import sql

from twinme_ops.backups.drill import SCRATCH_SETTINGS
from twinme_ops.backups.manifest import MANIFEST
from twinme_ops.backups.store.base import BackupStore
from twinme_ops.common.pgtools import pg_bin
from twinme_ops.sandbox.seed import SeedCounts, SeedReport, seed, seed_redis
from twinme_ops.sandbox.servers import SandboxInfo, ensure_sandbox, sandbox_status, stop_sandbox
from twinme_ops.scratch.postgres import PostgresServer

MIB = 1024 * 1024
DEFAULT_SCALE = 10.0
# rounds alternate raw and ours; medians, so that a busy shared machine favours neither
DEFAULT_ROUNDS = 3
# --quick: the same code path on a database of a few MB, so that CI runs every benchmark
QUICK_SCALE = 0.1
DEFAULT_HOME = "/tmp/twinme-bench"
STORE_DIR = "bench-store"
RAW_RESTORE_DB = "bench_raw_restore"


class PrintLog:
    """A log (``twinme_ops.common.log.Log``) that prints each line as it comes."""

    def debug(self, msg: str, /) -> None:
        print(msg, flush=True)

    def info(self, msg: str, /) -> None:
        print(msg, flush=True)

    def warning(self, msg: str, /) -> None:
        print(f"warning: {msg}", flush=True)


def parse_args(description: str) -> argparse.Namespace:
    """``--scale``, ``--rounds``, ``--quick`` and ``--home``, resolved (quick: QUICK_SCALE, 1
    round)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--scale",
        type=float,
        default=None,
        help=f"sandbox scale, 10 is about 1 GB of database (default {DEFAULT_SCALE:g}; "
        f"--quick: {QUICK_SCALE:g})",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"rounds, each ours then the raw baseline (default {DEFAULT_ROUNDS}; --quick: 1)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"CI form: the same code path at scale {QUICK_SCALE:g} (a few MB), in seconds",
    )
    parser.add_argument("--home", default=DEFAULT_HOME, help="TWINME_HOME of the bench")
    args = parser.parse_args()
    if args.scale is None:
        args.scale = QUICK_SCALE if args.quick else DEFAULT_SCALE
    if args.rounds is None:
        args.rounds = 1 if args.quick else DEFAULT_ROUNDS
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    args.home = Path(args.home).absolute()
    return args


@dataclass(frozen=True)
class BenchSandbox:
    info: SandboxInfo
    home: Path
    scale: float
    database_size: int

    @property
    def store_dir(self) -> Path:
        return self.home / STORE_DIR

    def store(self) -> BackupStore:
        return BackupStore(url=f"file://{self.store_dir}")

    def job_env(self) -> dict[str, str]:
        """The environment of ``twinme-ops backup``: this sandbox and a local store, nothing
        from the caller's configuration (no DAGSTER_HOME, Slack, key or other servers)."""
        dropped = ("DATABASE_", "REDIS_", "TWINME_", "DAGSTER_", "SLACK_", "AWS_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
        env.update(
            TWINME_ENV="local",
            TWINME_HOME=str(self.home),
            TWINME_BACKUP_URL=f"file://{self.store_dir}",
        )
        return env


@contextmanager
def bench_sandbox(home: Path, scale: float) -> Iterator[BenchSandbox]:
    """The sandbox of ``home`` seeded at ``scale`` (seeded only when its row counts differ).
    Servers this call started are stopped on the way out; data stays for the next run."""
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o755)  # the sandbox PostgreSQL runs as another user when we are root
    was_running = bool(sandbox_status(home).get("running"))
    info = ensure_sandbox(home)
    try:
        expected = SeedCounts.for_scale(scale).messages
        with psycopg.connect(info.database_url) as conn:
            row = conn.execute("SELECT count(*) FROM messages").fetchone()
        if not row or row[0] != expected:
            print(f"seeding the bench sandbox at scale {scale:g} (once)...", flush=True)
            seed(info.database_url, info.redis_url, info.files_dir, scale)
        else:
            # seeded rate-limit keys expire from an hour after seeding on, one per second, which
            # a drill reports as a missing key: write them afresh (seconds) for this run
            seed_redis(info.redis_url, SeedCounts.for_scale(scale), SeedReport(scale, "bench"))
        with psycopg.connect(info.database_url) as conn:
            size_row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        # redis-cli --rdb asks for a diskless transfer, which Redis delays by 5 s to wait for
        # other replicas; our snapshot asks for a disk-based one, which it starts at once
        with redis.Redis.from_url(info.redis_url) as client:
            client.config_set("repl-diskless-sync-delay", 0)
        yield BenchSandbox(info, home, scale, int(size_row[0]) if size_row else 0)
    finally:
        if not was_running:
            stop_sandbox(home)


def run_pipe(command: str) -> float:
    """Seconds for a shell pipeline (``pipefail``: any failing stage fails the benchmark)."""
    started = time.monotonic()
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True)
    return time.monotonic() - started


def raw_backup(info: SandboxInfo, out_dir: Path) -> dict[str, float]:
    """Seconds of each component's raw backup into a file in ``out_dir`` (then removed):
    ``pg_dump -Fc -Z0 | zstd -3 -T0``, ``redis-cli --rdb - | zstd -3 -T0`` and
    ``tar -c | zstd -3 -T0`` of the files directory (PAX, like ours)."""
    out = out_dir / "raw-backup.zst"
    zstd = f"zstd -3 -T0 -q -f -o '{out}'"
    commands = {
        "postgres": f"'{pg_bin('pg_dump')}' -Fc -Z0 -d '{info.database_url}' | {zstd}",
        "redis": f"redis-cli -u '{info.redis_url}' --rdb - 2>/dev/null | {zstd}",
        "files": f"tar -C '{info.files_dir}' --format=pax -cf - . | {zstd}",
    }
    try:
        return {component: run_pipe(command) for component, command in commands.items()}
    finally:
        out.unlink(missing_ok=True)


@contextmanager
def scratch_postgres() -> Iterator[tuple[PostgresServer, float]]:
    """A scratch PostgreSQL started the way the drill starts its own (same settings, a fresh
    cluster in the temporary directory), and the seconds its initdb + start took."""
    workdir = Path(tempfile.mkdtemp(prefix="twinme-bench-scratch-"))
    workdir.chmod(0o755)  # as root, the server runs as another user
    started = time.monotonic()
    server = PostgresServer.start(workdir / "postgres", settings=SCRATCH_SETTINGS)
    try:
        yield server, time.monotonic() - started
    finally:
        server.stop(mode="immediate")
        shutil.rmtree(workdir, ignore_errors=True)


def raw_restore(server: PostgresServer, dump: Path, policy_roles: list[str]) -> float:
    """Seconds for ``zstd -d | pg_restore`` (the drill's flags) into a fresh database of
    ``server``; creating the database and the roles its policies name is not timed."""
    with server.connect() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(RAW_RESTORE_DB)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(RAW_RESTORE_DB)))
        for role in policy_roles:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    flags = "--exit-on-error --no-owner --no-privileges --single-transaction"
    target = server.url(RAW_RESTORE_DB)
    seconds = run_pipe(f"zstd -d -q -c '{dump}' | '{pg_bin('pg_restore')}' {flags} -d '{target}'")
    with server.connect() as conn:
        conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(RAW_RESTORE_DB)))
    return seconds


@dataclass(frozen=True)
class SetFiles:
    """A set of the local bench store: its id, manifest and the PostgreSQL dump's path."""

    set_id: str
    manifest: dict[str, Any]
    dump: Path

    @property
    def postgres(self) -> dict[str, Any]:
        return self.manifest["artifacts"]["postgres"]


def read_bench_set(bench: BenchSandbox, set_id: str | None = None) -> SetFiles | None:
    """The set ``set_id`` (default: the newest with a manifest) of the bench store, or None."""
    store = bench.store()
    ids = [set_id] if set_id else sorted(store.list_sets(), reverse=True)
    for sid in ids:
        if not store.exists(sid, MANIFEST):
            continue
        manifest = json.loads(store.get_bytes(sid, MANIFEST))
        dump = bench.store_dir / sid / manifest["artifacts"]["postgres"]["name"]
        if not dump.is_file():
            raise SystemExit(f"{dump} (named by {sid}/{MANIFEST}) is not in the local store")
        return SetFiles(sid, manifest, dump)
    return None


@dataclass(frozen=True)
class BackupRun:
    """One ``twinme-ops backup`` process and the run it executed."""

    set_files: SetFiles
    run_id: str
    cli_wall_s: float
    peak_rss_mib: float
    run_s: float
    steps_s: dict[str, tuple[float, float]]  # step key -> (start, end), seconds after run start
    drill_rto_s: dict[str, float]  # the restore_drill check's rto_<component>_s metadata

    def part_s(self, drill: bool) -> float:
        """Wall seconds of the backup part (run start to the end of its last backup step) or
        of the drill part (the restore_drill check's step)."""
        spans = [span for key, span in self.steps_s.items() if is_drill_step(key) == drill]
        if not spans:
            raise SystemExit(f"run {self.run_id} has no {'drill' if drill else 'backup'} step")
        end = max(e for _, e in spans)
        return end if not drill else end - min(s for s, _ in spans)


def is_drill_step(step_key: str) -> bool:
    """The restore_drill asset check runs as a step of its own (``backup_set_restore_drill``)."""
    return step_key.endswith("restore_drill")


def run_backup_cli(bench: BenchSandbox, *, quiet: bool = False) -> BackupRun:
    """``twinme-ops backup --force`` (nightly_backup_job, in-process executor, today's
    partition) in a process of its own: its wall time, peak RSS (``wait4``: the largest process
    of its tree) and the run's step timings as the Dagster instance recorded them."""
    cli = [sys.executable, "-m", "twinme_ops.cli", "backup", "--force"]
    with tempfile.TemporaryFile() as log:
        started = time.monotonic()
        proc = subprocess.Popen(cli, env=bench.job_env(), stdout=subprocess.PIPE, stderr=log)
        assert proc.stdout is not None
        output = proc.stdout.read().decode(errors="replace")
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        elapsed = time.monotonic() - started
        if proc.returncode != 0:
            log.seek(0)
            tail = "\n".join(log.read().decode(errors="replace").splitlines()[-60:])
            raise SystemExit(
                f"twinme-ops backup failed (exit {proc.returncode}):\n{output}\n{tail}"
            )
    if not quiet:
        print(output, flush=True)
    set_files = read_bench_set(bench)
    if set_files is None:
        raise SystemExit(f"twinme-ops backup succeeded but {bench.store_dir} holds no manifest")
    run_id = str(set_files.manifest["run_id"])
    instance = dg.DagsterInstance.local_temp(tempdir=str(bench.home / "dagster"))
    stats = instance.get_run_stats(run_id)
    assert stats.start_time and stats.end_time, f"run {run_id} has no start or end"
    t0 = stats.start_time
    steps = {
        s.step_key: (s.start_time - t0, s.end_time - t0)
        for s in instance.get_run_step_stats(run_id)
        if s.start_time and s.end_time
    }
    rto: dict[str, float] = {}
    checks = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ).records
    for record in checks:
        event = record.event_log_entry.dagster_event
        data = event.event_specific_data if event else None
        if isinstance(data, dg.AssetCheckEvaluation) and is_drill_step(data.check_name):
            for key, value in data.metadata.items():
                if key.startswith("rto_") and key.endswith("_s") and key != "rto_total_s":
                    rto[key[4:-2]] = float(getattr(value, "value", 0.0) or 0.0)
    return BackupRun(
        set_files=set_files,
        run_id=run_id,
        cli_wall_s=elapsed,
        peak_rss_mib=usage.ru_maxrss / 1024,  # Linux: KiB
        run_s=stats.end_time - t0,
        steps_s=steps,
        drill_rto_s=rto,
    )


def speed(raw_s: float, ours_s: float) -> float:
    """Throughput ratio raw time / our time: 1.0 is as fast as the raw commands."""
    return round(raw_s / ours_s, 3) if ours_s > 0 else 0.0
