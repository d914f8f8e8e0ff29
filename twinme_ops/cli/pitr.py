"""``twinme-ops pitr``: continuous archiving and point-in-time recovery, from the command line.

``status`` reads the archive's RPO now (the sensor's reading), ``drill`` runs ``pitr_drill_job``
(a random second of the recovery window, then the latest point, each proved by the heartbeats),
``recover`` runs ``recover_job`` with ``target_time`` for PostgreSQL (the same guards, safety
backup and swap as from the web UI). On the sandbox they need no set-up: it archives itself
(``docs/backups.md``, "Continuous archiving in the sandbox").
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import Any

from twinme_ops.cli.jobs import run_job

EXIT_NOT_RUNNING = 3


def _archive() -> tuple[Any, Any]:
    """The ``wal_archive`` and ``postgres`` resources of the code location's configuration."""
    from twinme_ops.defs.resources import build_resources

    resources = build_resources()
    return resources["wal_archive"], resources["postgres"]


def cmd_pitr_status(args: argparse.Namespace) -> int:
    """The RPO reading of the local engine's archive (the sandbox's, started if needed)."""
    from twinme_ops.backups.pitr.external import external_status

    wal_archive, postgres = _archive()
    engine = wal_archive.check_engine()
    if engine != "local":
        print(
            f"error: the WAL archive engine is {engine} (TWINME_WAL_ARCHIVE): its RPO is "
            "measured by Prometheus from the Barman Cloud plugin's metrics (docs/alerts.md). "
            "Fix: run this where TWINME_WAL_ARCHIVE=local",
            file=sys.stderr,
        )
        return 2
    url = postgres.resolved_url()  # the sandbox starts (and archives itself) on first use
    status = external_status(wal_archive.layout(), url, slot=wal_archive.slot)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True, default=str))
    else:
        rpo = "unknown" if status["rpo_s"] is None else f"{status['rpo_s']:.3f} s"
        receiver = "streaming" if status["receiver_alive"] else "NOT RUNNING"
        print(f"continuous archiving of {status['source']} into {wal_archive.layout().root}")
        print(f"  receiver (pg_receivewal --synchronous): {receiver}; slot {wal_archive.slot}")
        print(f"  RPO now: {rpo} ({status['rpo_basis']}); archived to {status['archived_up_to']}")
        writer = "running" if status["heartbeat_writer_alive"] else "not running"
        print(
            f"  heartbeat writer: {writer}; base backups: {status['base_backups']} (newest "
            f"{status['newest_base_backup']})"
        )
        for problem in status["problems"]:
            print(f"  PROBLEM: {problem}")
    return 0 if status["receiver_alive"] else EXIT_NOT_RUNNING


def _step_metadata(result: Any, step: str) -> dict[str, Any]:
    """The metadata of ``step``'s output, or of its failure, as plain values."""
    for event in result.all_events:
        if event.step_key != step:
            continue
        data = None
        if event.is_successful_output:
            data = event.step_output_data.metadata
        elif event.is_step_failure and event.step_failure_data.user_failure_data:
            data = event.step_failure_data.user_failure_data.metadata
        if data is not None:
            return {key: value.value for key, value in data.items()}
    return {}


def _restore_line(meta: dict[str, Any], name: str, label: str) -> str:
    if f"{name}_total_s" not in meta:
        return f"  {label}: not restored"
    beats = json.loads(json.dumps(meta.get("details", {})))["heartbeats"].get(name, {})
    proof = (
        f"{beats.get('present')} of {beats.get('expected')} heartbeats before it present, "
        f"{beats.get('unexpected')} after it"
    )
    return (
        f"  {label}: restored in {meta[f'{name}_total_s']:.2f} s (base backup "
        f"{meta[f'{name}_restore_s']:.2f} s, WAL replay {meta[f'{name}_replay_s']:.2f} s at "
        f"{meta[f'{name}_replay_mb_s']:.1f} MB/s), reached {meta[f'{name}_reached_time']}; "
        f"{proof}"
    )


def cmd_pitr_drill(args: argparse.Namespace) -> int:
    """Run ``pitr_drill_job`` here and print what it proved."""
    config: dict[str, Any] = {"seed": args.seed if args.seed is not None else -1}
    run_config = {
        "loggers": {"console": {"config": {"log_level": "INFO"}}},
        "ops": {"point_in_time_drill": {"config": config}},
    }
    print("pitr_drill_job: restoring the WAL archive to a random second...", file=sys.stderr)
    result = run_job("pitr_drill_job", run_config)
    meta = _step_metadata(result, "point_in_time_drill")
    if meta.get("skipped"):
        print("point-in-time drill skipped: continuous archiving is off (TWINME_WAL_ARCHIVE)")
        return 0
    verdict = "passed" if result.success else "FAILED"
    print(
        f"point-in-time drill {verdict} ({meta.get('engine', '?')} archive, seed "
        f"{meta.get('seed', '?')}): {meta.get('reason', '')}"
    )
    if meta.get("target"):
        print(
            f"  random target {meta['target']} (recovery window {meta.get('window_start')} to "
            f"{meta.get('window_end')})"
        )
    print(_restore_line(meta, "target", "to the target"))
    print(_restore_line(meta, "latest", "to the latest point"))
    if "achieved_rpo_s" in meta:
        print(f"  achieved RPO {meta['achieved_rpo_s']:.3f} s")
    if result.success and meta.get("target"):
        print(f"to return PostgreSQL to that second: twinme-ops pitr recover {meta['target']}")
    return 0 if result.success else 1


def cmd_pitr_recover(args: argparse.Namespace) -> int:
    """Run ``recover_job`` with ``target_time`` (PostgreSQL alone) and print its report."""
    from twinme_ops.defs.resources import build_resources

    target = args.target_time
    if target != "latest":
        try:
            parsed = datetime.fromisoformat(target)
        except ValueError:
            print(
                f"error: {target!r} is not a time. Fix: give ISO 8601 with a time zone "
                "(2026-12-05T09:14:00+01:00), or latest",
                file=sys.stderr,
            )
            return 2
        if parsed.tzinfo is None:
            print(
                f"error: {target} has no time zone. Fix: add one (+00:00 for UTC)",
                file=sys.stderr,
            )
            return 2
    database = build_resources()["postgres"].database_name
    config = {"target_time": target, "components": ["postgres"], "confirm": args.confirm}
    run_config = {
        "loggers": {"console": {"config": {"log_level": "INFO"}}},
        "ops": {"recovery_preflight": {"config": config}},
    }
    print(
        f"recover_job: returning PostgreSQL ({database}) to {target} from the WAL archive...",
        file=sys.stderr,
    )
    result = run_job("recover_job", run_config)
    if not result.success:
        return 1
    state = result.output_for_node("recovery_restore")
    facts = state.details.get("postgres", {})
    print(f"recovered PostgreSQL ({database}) to {target} (run {result.run_id})")
    print(f"  safety backup of what was there: set {state.safety_set_id}")
    print(
        f"  restored from the {facts.get('engine')} archive, base backup "
        f"{facts.get('base_backup')}: reached {facts.get('reached_time')} (LSN "
        f"{facts.get('reached_lsn')}) in {facts.get('restore_s', 0):.2f} s + "
        f"{facts.get('replay_s', 0):.2f} s of WAL replay"
    )
    return 0


def register_pitr(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``twinme-ops pitr status [--json] | drill [--seed N] | recover TIME --confirm DB``."""
    group = subparsers.add_parser(
        "pitr",
        help="continuous archiving: the RPO now, a point-in-time drill, recovery to a second",
        description="Continuous WAL archiving and point-in-time recovery of PostgreSQL, with "
        "the code location's configuration (the sandbox by default, which archives itself).",
    )
    commands = group.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser("status", help="the archive's RPO now (exit 3: not archiving)")
    status.add_argument("--json", action="store_true", help="the whole reading as JSON")
    status.set_defaults(handler=cmd_pitr_status)
    drill = commands.add_parser(
        "drill", help="run pitr_drill_job: restore to a random second and to latest, proved"
    )
    drill.add_argument("--seed", type=int, default=None, help="replay a drill's random target")
    drill.set_defaults(handler=cmd_pitr_drill)
    recover = commands.add_parser(
        "recover", help="run recover_job with target_time: PostgreSQL back to that second"
    )
    recover.add_argument(
        "target_time", help="ISO 8601 with a time zone (2026-12-05T09:14:00+01:00), or latest"
    )
    recover.add_argument(
        "--confirm",
        required=True,
        help="the target database's name (recover_job refuses to start without it)",
    )
    recover.set_defaults(handler=cmd_pitr_recover)
