"""``twinme-ops backup``: tonight's backup set from the command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from twinme_ops.cli.jobs import run_job


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
    print(f"nightly_backup_job: backing up partition {partition}...", file=sys.stderr)
    result = run_job("nightly_backup_job", run_config, partition=partition)
    if not result.success:
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
