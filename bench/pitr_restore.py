"""Benchmark (not a test): a point-in-time restore by twinme_ops against the raw tools, in one run.

    python -m bench.pitr_restore                 # pgbench scale 15 (~225 MB), ~300 MB of WAL
    python -m bench.pitr_restore --quick         # CI form: scale 1, 16 MB of WAL, 1 round

It builds an archive with the local engine (:mod:`bench.pitr_common`: a fresh server, the
``--synchronous`` receiver): ``pgbench -i -s SCALE``, one full base backup (``take_base_backup``:
``pg_basebackup -Fp -X stream`` + ``pg_verifybackup``), then at least ``--wal-mb`` of WAL from
unthrottled TPC-B-like pgbench transactions while a thread commits a heartbeat every 0.2 s. The
load ends with ``pg_switch_wal()`` once the archive has flushed everything, so that every commit is
in a completed segment and the raw ``restore_command`` (a plain ``cp``, without our ``.partial``
fallback) reaches as far as ours.

Then, for a random target (a second drawn inside the recovery window, the same for both sides)
and for the latest point, ``--rounds`` times (alternating which side goes first), it times

* **ours**: ``restore_to_point`` (``backups/pitr/restore.py``): choose the chain,
  ``pg_combinebackup`` into a fresh directory, the recovery settings, start on a free port, wait
  until ``pg_is_in_recovery()`` is false;
* **raw**, what an operator types: ``cp -a`` of the base backup, ``restore_command = 'cp
  <wal>/%f "%p"'``, ``recovery_target_time``, ``recovery_target_action = 'promote'``,
  ``recovery.signal``, ``pg_ctl -w start``, then ``SELECT pg_is_in_recovery()`` every 0.1 s until
  false. It runs with the same server settings as ours (``RESTORED_SETTINGS``: archiving and
  fsync off), so that the ratio measures the tool, not the settings.

Each restored server is checked against the heartbeats (all those at or before the target present,
none after it) and must reach the same WAL position as the other side (for the latest point ours
may replay a few more records: the ``.partial`` segment after the switch); a failure exits
non-zero.
Reported: copy (restore), replay and total seconds, replay MB/s (medians over the rounds), and
the time ratio ours/raw of each round's pair (same target, back to back), its median and range
(below 1.0: ours is faster).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from statistics import median
from typing import Any

import psycopg

from bench.pitr_common import (
    MB,
    MIB,
    ArchivedServer,
    HeartbeatThread,
    archived_server,
    pgbench,
    quick_args,
    wal_lsn,
)
from bench.results_io import report
from twinme_ops.backups.pitr.basebackup import BaseBackup, take_base_backup
from twinme_ops.backups.pitr.heartbeat import Heartbeat, read_heartbeats, verify_heartbeats
from twinme_ops.backups.pitr.layout import ArchiveLayout, as_user, format_lsn, parse_lsn
from twinme_ops.backups.pitr.receiver import wait_for_flush
from twinme_ops.backups.pitr.restore import RESTORED_SETTINGS, restore_to_point
from twinme_ops.common.pgtools import pg_bin
from twinme_ops.scratch.local import free_port

HEARTBEAT_INTERVAL_S = 0.2
LOAD_CHUNK_S = 2
RESTORE_TIMEOUT_S = 1800.0
PHASES = ("restore_s", "replay_s", "total_s")


@dataclass
class Timing:
    """One restore: where it stopped and what it took."""

    side: str
    kind: str  # "target" or "latest"
    target: str | None
    restore_s: float
    replay_s: float
    total_s: float
    wal_bytes: int
    replay_mb_s: float
    reached_lsn: str
    heartbeats_present: int
    heartbeats_expected: int


def build_archive(src: ArchivedServer, scale: int, wal_mb: int) -> tuple[BaseBackup, int]:
    """pgbench tables at ``scale``, a full base backup, then ``wal_mb`` MB of WAL with heartbeats;
    every commit flushed into a completed segment. The backup and the WAL bytes written."""
    t0 = time.monotonic()
    pgbench(src.server, ["-i", "-s", str(scale), "-q"])
    print(f"pgbench -i -s {scale}: {time.monotonic() - t0:.1f} s", flush=True)
    backup = take_base_backup(src.layout, src.url)
    print(f"full base backup: {backup.bytes / MIB:.0f} MiB in {backup.seconds:.1f} s", flush=True)
    start = parse_lsn(backup.start_lsn)
    t0 = time.monotonic()
    with src.connect() as conn, HeartbeatThread(src.server, HEARTBEAT_INTERVAL_S):
        load_start = wal_lsn(conn)
        while wal_lsn(conn) - load_start < wal_mb * MB:
            pgbench(src.server, ["-n", "-c", "2", "-j", "2", "-T", str(LOAD_CHUNK_S)])
        time.sleep(2 * HEARTBEAT_INTERVAL_S)  # a heartbeat after the last pgbench commit
    with src.connect() as conn:
        switched = conn.execute("SELECT pg_switch_wal()::text").fetchone()[0]
        segment = conn.execute("SELECT pg_walfile_name(%s::pg_lsn)", (switched,)).fetchone()[0]
        wait_for_flush(conn, timeout_s=120)
        wal_bytes = wal_lsn(conn) - start
    deadline = time.monotonic() + 60
    while not (src.layout.wal_dir / segment).exists():  # renamed from .partial by the receiver
        if time.monotonic() > deadline:
            raise SystemExit(f"the receiver never completed segment {segment}")
        time.sleep(0.05)
    print(
        f"{wal_bytes / MB:.0f} MB of WAL after the base backup's start in "
        f"{time.monotonic() - t0:.1f} s; archived up to {switched}",
        flush=True,
    )
    return backup, wal_bytes


def _conf(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def scalar(conn: Any, query: str) -> Any:
    row = conn.execute(query).fetchone()
    assert row is not None, query
    return row[0]


def _as_pg(argv: list[str], run_as: str | None, timeout: float | None = None) -> None:
    uid, gid, groups = as_user(run_as)
    subprocess.run(
        argv, check=True, cwd="/", user=uid, group=gid, extra_groups=groups, timeout=timeout,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def raw_restore(
    layout: ArchiveLayout,
    backup: BaseBackup,
    dest: Path,
    target: datetime | None,
    known: list[Heartbeat],
) -> Timing:
    """The operator's restore by hand (see the module docstring), timed like ours."""
    began = time.monotonic()
    _as_pg(["cp", "-a", str(backup.data_dir), str(dest)], layout.run_as)
    lines = {**RESTORED_SETTINGS, "restore_command": f'cp {layout.wal_dir}/%f "%p"'}
    lines["recovery_target_action"] = "promote"
    if target is not None:
        lines["recovery_target_time"] = target.isoformat(sep=" ")
    with open(dest / "postgresql.auto.conf", "a") as fh:
        fh.writelines(f"{key} = {_conf(value)}\n" for key, value in lines.items())
    (dest / "recovery.signal").touch()
    if layout.run_as:
        uid, gid, _ = as_user(layout.run_as)
        os.chown(dest / "recovery.signal", uid or 0, gid or 0)
    restored = time.monotonic()
    port = free_port()
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {dest}"
    ctl = [pg_bin("pg_ctl"), "-D", str(dest), "-l", str(dest / "raw-restore.log")]
    _as_pg([*ctl, "-o", opts, "-w", "-t", str(int(RESTORE_TIMEOUT_S)), "start"], layout.run_as)
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    try:
        deadline = time.monotonic() + RESTORE_TIMEOUT_S
        while True:
            with psycopg.connect(url, autocommit=True) as conn:
                if not scalar(conn, "SELECT pg_is_in_recovery()"):
                    break
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"the raw restore was still in recovery after {RESTORE_TIMEOUT_S} s"
                )
            time.sleep(0.1)
        replayed = time.monotonic()
        with psycopg.connect(url, autocommit=True) as conn:
            lsn = scalar(conn, "SELECT pg_last_wal_replay_lsn()::text")
            check = verify_heartbeats(conn, known, target)
    finally:
        _as_pg([*ctl, "-m", "immediate", "-w", "stop"], layout.run_as, timeout=120)
    wal_bytes = max(0, parse_lsn(lsn) - parse_lsn(backup.start_lsn))
    replay_s = replayed - restored
    if not check.ok:
        raise SystemExit(f"the raw restore to {target} is not exact: {check.to_metadata()}")
    return Timing(
        side="raw",
        kind="latest" if target is None else "target",
        target=target.isoformat() if target else None,
        restore_s=round(restored - began, 3),
        replay_s=round(replay_s, 3),
        total_s=round(replayed - began, 3),
        wal_bytes=wal_bytes,
        replay_mb_s=round(wal_bytes / MB / replay_s, 1) if replay_s > 0 else 0.0,
        reached_lsn=format_lsn(parse_lsn(lsn)),
        heartbeats_present=check.present,
        heartbeats_expected=check.expected,
    )


def our_restore(
    layout: ArchiveLayout, dest: Path, target: datetime | None, known: list[Heartbeat]
) -> Timing:
    """``restore_to_point``, then the same heartbeat check as the raw side (not timed)."""
    result = restore_to_point(layout, dest, target_time=target, timeout_s=RESTORE_TIMEOUT_S)
    try:
        with result.server.connect() as conn:
            check = verify_heartbeats(conn, known, target)
    finally:
        result.server.stop(mode="immediate")
    if not check.ok:
        raise SystemExit(f"restore_to_point to {target} is not exact: {check.to_metadata()}")
    return Timing(
        side="ours",
        kind="latest" if target is None else "target",
        target=target.isoformat() if target else None,
        restore_s=result.restore_s,
        replay_s=result.replay_s,
        total_s=result.total_s,
        wal_bytes=result.wal_bytes,
        replay_mb_s=round(result.replay_mb_s, 1),
        reached_lsn=result.reached_lsn,
        heartbeats_present=check.present,
        heartbeats_expected=check.expected,
    )


def check_positions(reached: dict[str, str], latest: bool) -> None:
    """Both sides stop at the same WAL position; for the latest point ours may go further: its
    ``restore_command`` also reads the ``.partial`` segment (the records after the switch)."""
    ours, raw = parse_lsn(reached["ours"]), parse_lsn(reached["raw"])
    if ours == raw or (latest and ours > raw):
        return
    raise SystemExit(f"the two sides stopped at different WAL positions: {reached}")


def draw_target(rng: random.Random, backup: BaseBackup, known: list[Heartbeat]) -> datetime:
    """A second inside the recovery window: after the backup, before the newest heartbeat."""
    start = backup.finished + timedelta(seconds=0.5)
    end = known[-1].at - timedelta(seconds=0.5)
    if end <= start:
        raise SystemExit("the recovery window is empty: raise --wal-mb")
    return (start + (end - start) * rng.random()).astimezone(UTC)


def medians(timings: list[Timing]) -> dict[str, float]:
    keys = ("restore_s", "replay_s", "total_s", "replay_mb_s")
    return {k: round(median(float(getattr(t, k)) for t in timings), 3) for k in keys}


def ratio(ours: float, raw: float) -> float:
    """Time ratio ours / raw: below 1.0 ours is faster."""
    return round(ours / raw, 3) if raw > 0 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--scale", type=int, default=None, help="pgbench -i scale (default 15)")
    parser.add_argument("--wal-mb", type=int, default=None, help="WAL after the base backup")
    parser.add_argument("--rounds", type=int, default=None, help="default 5; --quick: 1")
    parser.add_argument("--seed", type=int, default=14, help="seed of the random targets")
    args = quick_args(parser, {"scale": (15, 1), "wal_mb": (300, 16), "rounds": (5, 1)})
    rng = random.Random(args.seed)
    timings: list[Timing] = []
    with archived_server("twinme-bench-pitr-") as src:
        backup, wal_bytes = build_archive(src, args.scale, args.wal_mb)
        with src.connect() as conn:
            known = read_heartbeats(conn)
            db_bytes = conn.execute("SELECT pg_database_size('postgres')").fetchone()[0]
        restores = src.workdir / "restores"  # the raw side copies as the servers' user
        restores.mkdir()
        if src.layout.run_as:
            uid, gid, _ = as_user(src.layout.run_as)
            os.chown(restores, uid or 0, gid or 0)
        n = 0
        for round_ in range(args.rounds):
            target = draw_target(rng, backup, known)
            for point in (target, None):
                sides = ["ours", "raw"] if round_ % 2 == 0 else ["raw", "ours"]
                reached: dict[str, str] = {}
                for side in sides:
                    n += 1
                    dest = restores / f"restore-{n}"
                    if side == "ours":
                        timing = our_restore(src.layout, dest, point, known)
                    else:
                        timing = raw_restore(src.layout, backup, dest, point, known)
                    shutil.rmtree(dest, ignore_errors=True)
                    timings.append(timing)
                    reached[side] = timing.reached_lsn
                    print(
                        f"round {round_ + 1} {timing.kind:6} {side:4}: {timing.total_s:.2f} s "
                        f"(copy {timing.restore_s:.2f} + replay {timing.replay_s:.2f}, "
                        f"{timing.replay_mb_s:.1f} MB/s) reached {timing.reached_lsn}",
                        flush=True,
                    )
                check_positions(reached, latest=point is None)
    results: dict[str, Any] = {
        "quick": args.quick,
        "rounds": args.rounds,
        "seed": args.seed,
        "machine": f"{os.cpu_count()} cores",
        "date": datetime.now(UTC).date().isoformat(),
        "pgbench_scale": args.scale,
        "database_mib": round(db_bytes / MIB, 1),
        "base_backup_mib": round(backup.bytes / MIB, 1),
        "wal_mb_after_backup": round(wal_bytes / MB, 1),
        "heartbeats": len(known),
        "restores": [asdict(t) for t in timings],
    }
    lines = []
    for kind in ("target", "latest"):
        ours = medians([t for t in timings if t.kind == kind and t.side == "ours"])
        raw = medians([t for t in timings if t.kind == kind and t.side == "raw"])
        # each round restores both sides to the same target: compare within rounds
        per_round = [
            ratio(o.total_s, r.total_s)
            for o, r in zip(
                [t for t in timings if t.kind == kind and t.side == "ours"],
                [t for t in timings if t.kind == kind and t.side == "raw"],
                strict=True,
            )
        ]
        results[kind] = {
            "ours": ours,
            "raw": raw,
            "ours_vs_raw_of_medians": {k: ratio(ours[k], raw[k]) for k in PHASES},
            "ours_vs_raw_total_per_round": per_round,
            "ours_vs_raw_total": round(median(per_round), 3),
        }
        label = "random target" if kind == "target" else "latest"
        spread_ = f", rounds {min(per_round)}-{max(per_round)}" if len(per_round) > 1 else ""
        lines.append(
            f"{label}: ours {ours['total_s']:.2f} s (pg_combinebackup {ours['restore_s']:.2f} + "
            f"replay {ours['replay_s']:.2f} s, {ours['replay_mb_s']:.1f} MB/s) vs raw "
            f"{raw['total_s']:.2f} s (cp -a {raw['restore_s']:.2f} + replay "
            f"{raw['replay_s']:.2f} s, {raw['replay_mb_s']:.1f} MB/s): "
            f"{results[kind]['ours_vs_raw_total']}x ours/raw{spread_}"
        )
    of = f"median of {args.rounds}" if args.rounds > 1 else "1 round"
    report(
        "pitr_restore",
        results,
        f"point-in-time restore of a {backup.bytes / MIB:.0f} MiB base backup + "
        f"{wal_bytes / MB:.0f} MB of WAL ({of}; time ratio ours/raw, below 1.0 ours is faster):\n"
        + "\n".join(lines),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
