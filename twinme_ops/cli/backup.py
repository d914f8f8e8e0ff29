"""``twinme-ops backup``: tonight's backup set from the command line."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any


def _cli_instance() -> Any:
    """The Dagster instance the CLI records its runs in, so that the web UI shows them:

    - ``$DAGSTER_HOME`` when set;
    - else, run from the repository (its ``dagster.yaml`` in the working directory) with no
      ``TWINME_HOME`` either, the repository's instance: the one ``DAGSTER_HOME=$PWD dagster dev``
      opens (README, command 1 and the web UI);
    - else a persistent one under ``$TWINME_HOME/dagster``, telemetry off.
    """
    import dagster as dg

    from twinme_ops.sandbox.servers import default_home

    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    here = Path.cwd()
    if not os.environ.get("TWINME_HOME") and _is_repository_instance(here / "dagster.yaml"):
        return dg.DagsterInstance.from_config(str(here))
    home = default_home() / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.local_temp(
        tempdir=str(home), overrides={"telemetry": {"enabled": False}}
    )


def _is_repository_instance(config: Path) -> bool:
    """The repository's own instance config (it names twinme_ops' run coordinator)."""
    try:
        return "twinme_ops.instance.run_coordinator" in config.read_text()
    except OSError:
        return False


def today_partition() -> str:
    """Today's date in Europe/Paris: the partition the nightly schedule would back up now."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return datetime.now(ZoneInfo("Europe/Paris")).strftime("%Y-%m-%d")


def _source_summary(component: str, src: dict[str, Any]) -> str:
    if component == "postgres":
        return f"{src['total_rows']:,} rows in {len(src['tables'])} tables"
    if component == "redis":
        return f"{src['total_keys']:,} keys"
    if component == "globals":
        return f"{len(src['roles']):,} roles, {src['memberships']:,} memberships"
    return f"{src['files']:,} files, {src['bytes']:,} bytes"


def cmd_backup(args: argparse.Namespace) -> int:
    """Run nightly_backup_job for one partition; print where the set is and what it holds."""
    import yaml

    from twinme_ops.backups.crypto import BackupEncryption
    from twinme_ops.backups.manifest import COMPONENT_LABELS, MANIFEST
    from twinme_ops.backups.sets import read_set
    from twinme_ops.backups.window import (
        BackupPartitionRefused,
        backup_now,
        check_backup_partition,
    )
    from twinme_ops.common.redact import redact
    from twinme_ops.definitions import build_definitions
    from twinme_ops.defs.backups.assets import backup_partitions
    from twinme_ops.defs.resources import build_resources

    # a malformed key or recipient is refused before anything starts
    BackupEncryption(
        key=os.environ.get("TWINME_BACKUP_ENCRYPTION_KEY", ""),
        age_recipients=os.environ.get("TWINME_BACKUP_AGE_RECIPIENTS", ""),
    ).get_keys()
    partition = args.partition or today_partition()
    if not backup_partitions.has_partition_key(partition):
        print(f"error: {partition} is not a backup partition (a YYYY-MM-DD day up to today)")
        return 2
    try:
        check_backup_partition(partition, backup_now())
    except BackupPartitionRefused as exc:  # said once, before any run starts
        print(f"error: {exc}", file=sys.stderr)
        return 2
    store = build_resources()["backup_store"]
    if not args.force:
        existing = read_set(store, partition)
        if existing.manifest is not None:
            # a complete set is not a failure to report at length: say so and how to replace it
            print(
                f"backup set {partition} already exists and is complete: "
                f"{store.set_location(partition)} (run {existing.manifest.get('run_id', '?')}); "
                f"{existing.verdict_line()}"
            )
            print("to replace it: twinme-ops backup --force")
            return 0 if existing.verdict in ("passed", "none") else 1
    # the CLI prints a summary; the run's own log lines stay at INFO
    run_config: dict[str, Any] = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
    if args.config:
        run_config.update(yaml.safe_load(Path(args.config).read_text()) or {})
    if args.force:
        for op in ("postgres_backup", "redis_backup", "files_backup"):
            ops = run_config.setdefault("ops", {})
            ops.setdefault(op, {}).setdefault("config", {})["force"] = True
    job = build_definitions().resolve_job_def("nightly_backup_job")
    print(f"nightly_backup_job: backing up partition {partition}...", file=sys.stderr)
    result = job.execute_in_process(
        partition_key=partition,
        run_config=run_config,
        # who ran it, as the machine knows them (the webserver writes a verified identity)
        tags={"twinme/launched_by": f"{getpass.getuser()}@{socket.gethostname()} (cli)"},
        instance=_cli_instance(),
        raise_on_error=False,
    )
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure and event.step_failure_data:
                message = (
                    event.step_failure_data.error.message if event.step_failure_data.error else ""
                )
                print(f"FAILED {event.step_key}: {redact(message.strip())}", file=sys.stderr)
        print(f"run {result.run_id} failed (errors above)", file=sys.stderr)
        return 1
    manifest = json.loads(store.get_bytes(partition, MANIFEST))
    print(f"backup set {partition} complete: {manifest['location']}")
    print(f"  {MANIFEST}  (run {result.run_id})")
    width = max(len(art["name"]) for art in manifest["artifacts"].values())
    for component, art in manifest["artifacts"].items():
        facts = _source_summary(component, art["source"])
        enc = f", encrypted ({art['encryption']['algorithm']})" if art["encryption"] else ""
        print(
            f"  {art['name']:<{width}} {art['bytes_out'] / 1048576:10.2f} MiB  "
            f"sha256 {art['sha256'][:16]}…  {COMPONENT_LABELS[component]}: {facts}{enc}"
        )
    print(f"  total {manifest['total_bytes'] / 1048576:.2f} MiB")
    view = read_set(store, partition)
    if view.verdict != "none":
        print(view.verdict_line())
    return 0


def register_backup(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``twinme-ops backup [--partition D] [--force] [--config FILE]``."""
    parser = subparsers.add_parser(
        "backup",
        help="run nightly_backup_job now (PostgreSQL, Redis, files -> one backup set)",
        description="Run nightly_backup_job in this process for one daily partition and print "
        "the resulting backup set. Uses the same configuration as the code location.",
    )
    parser.add_argument("--partition", help="YYYY-MM-DD (default: today, Europe/Paris)")
    parser.add_argument("--force", action="store_true", help="replace a complete set")
    parser.add_argument("--config", help="run config YAML (examples/run_config/...)")
    parser.set_defaults(handler=cmd_backup)
