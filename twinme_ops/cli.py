"""``twinme-ops``: command line for the local side of the TwinMe operations.

One sub-command group per domain (``sandbox``, ``backup``). A group is a
``register_<group>(subparsers)`` function that adds its parser and sets ``handler`` on each
command; :func:`build_parser` calls the registrars listed in ``COMMAND_GROUPS``, so a new group is
one function plus one entry there.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], int]


def _home(args: argparse.Namespace) -> Path:
    from twinme_ops.sandbox.servers import default_home

    return Path(args.home).absolute() if args.home else default_home()


def cmd_sandbox_up(args: argparse.Namespace) -> int:
    """Start (or reuse) the sandbox and print where it is.

    With the local WAL archive engine (the default here), it is archived continuously: the
    receiver, a first base backup and the heartbeat writer start with it, and a receiver or
    writer that died is started again (idempotent).
    """
    from twinme_ops.backups.pitr.heartbeat_writer import interval_from_env
    from twinme_ops.backups.pitr.layout import PitrError
    from twinme_ops.common.redact import redact
    from twinme_ops.defs.resources import (
        sandbox_archive_root,
        sandbox_archiving_hook,
        start_sandbox_archiving,
    )
    from twinme_ops.sandbox.servers import ensure_sandbox, sandbox_postgres

    home = _home(args)
    root = sandbox_archive_root(str(home))
    interval = interval_from_env()
    info = ensure_sandbox(home, on_start=sandbox_archiving_hook(root, interval))
    print(f"DATABASE_URL={info.database_url}")
    print(f"REDIS_URL={info.redis_url}")
    print(f"TWINME_FILES_DIR={info.files_dir}")
    print(f"TWINME_HOME={info.home}")
    server = sandbox_postgres(home)
    if root and server is not None:
        try:
            report = start_sandbox_archiving(info, server, root, interval)
        except PitrError as exc:
            print(f"error: continuous archiving did not start: {redact(exc)}", file=sys.stderr)
            return 1
        print(f"TWINME_WAL_ARCHIVE_ROOT={report.root}")
        print(
            f"# archiving: receiver pid {report.receiver_pid}, heartbeat writer pid "
            f"{report.heartbeat_pid} (every {interval:g} s)"
        )
    return 0


def cmd_sandbox_down(args: argparse.Namespace) -> int:
    """Stop the sandbox servers, and the WAL receiver and heartbeat writer first (data is kept;
    the slot keeps the WAL, so the next ``up`` resumes archiving with no gap)."""
    from twinme_ops.sandbox.servers import stop_sandbox

    stopped = stop_sandbox(_home(args))
    print("sandbox stopped" if stopped else "sandbox was not running")
    return 0


def cmd_sandbox_status(args: argparse.Namespace) -> int:
    """Print the sandbox status as JSON; exit code 3 when it is not running."""
    from twinme_ops.sandbox.servers import sandbox_status

    status = sandbox_status(_home(args))
    print(json.dumps(status, indent=2, sort_keys=True))
    return 0 if status["running"] else 3


def cmd_sandbox_seed(args: argparse.Namespace) -> int:
    """Start the sandbox if needed, then replace its demo data at ``--scale``."""
    from twinme_ops.sandbox.seed import seed
    from twinme_ops.sandbox.servers import ensure_sandbox

    info = ensure_sandbox(_home(args))
    report = seed(info.database_url, info.redis_url, info.files_dir, args.scale)
    print(json.dumps(report.as_dict(), indent=2, sort_keys=True))
    return 0


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def register_sandbox(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``twinme-ops sandbox up | down | status | seed [--scale S]``."""
    group = subparsers.add_parser(
        "sandbox",
        help="the embedded local PostgreSQL + Redis + files environment",
        description="Manage the embedded sandbox under TWINME_HOME (default ./.twinme).",
    )
    group.add_argument("--home", help="state directory (default: $TWINME_HOME or ./.twinme)")
    commands = group.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("up", help="start (or reuse) the sandbox, print its URLs").set_defaults(
        handler=cmd_sandbox_up
    )
    commands.add_parser(
        "down", aliases=["stop"], help="stop the sandbox servers (and its WAL archiving)"
    ).set_defaults(handler=cmd_sandbox_down)
    commands.add_parser("status", help="show whether it runs, sizes and counts").set_defaults(
        handler=cmd_sandbox_status
    )
    seed_parser = commands.add_parser("seed", help="replace the demo data (deterministic)")
    seed_parser.add_argument(
        "--scale",
        type=_positive_float,
        default=0.02,
        help="1 is about 100 MB of database, 10 about 1 GB (default: 0.02)",
    )
    seed_parser.set_defaults(handler=cmd_sandbox_seed)


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

    # a malformed key is refused before anything starts
    BackupEncryption(key=os.environ.get("TWINME_BACKUP_ENCRYPTION_KEY", "")).get_key()
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
        enc = ", encrypted" if art["encryption"] else ""
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


def cmd_rollback(args: argparse.Namespace) -> int:
    """Roll the API Deployment back by hand: patch, wait for the rollout, verify, tell Slack."""
    import getpass

    import dagster as dg

    from twinme_ops.alerting.alert import Alert, Fact
    from twinme_ops.defs.resources import build_resources
    from twinme_ops.release.rollback import rollback

    log = logging.getLogger("twinme_ops.rollback")
    keys = ("kubernetes", "release_settings", "postgres", "redis", "slack")
    wanted = {k: v for k, v in build_resources().items() if k in keys}
    with dg.build_resources(wanted) as res:
        kube, settings = res.kubernetes, res.release_settings
        if not kube.is_configured():
            print(
                "error: no Kubernetes cluster configured. Fix: set KUBECONFIG (and "
                "TWINME_K8S_NAMESPACE), or run inside the cluster with TWINME_ENV=production.",
                file=sys.stderr,
            )
            return 2
        container = args.container or settings.container
        current = kube.current_image(container)
        target = args.image or kube.previous_image()
        if not target:
            print(
                f"error: {kube.describe()} records no previous image. Fix: pass --image "
                "REGISTRY/REPO@sha256:... (the previous_image of api_deployment in the UI).",
                file=sys.stderr,
            )
            return 2
        if target == current:
            print(f"{kube.describe()} already runs {target}: nothing to do")
            return 0
        print(f"{kube.describe()}, container {container}:\n  now   {current}\n  back to {target}")
        if not args.yes:
            answer = input("roll back? [y/N] ") if sys.stdin.isatty() else ""
            if answer.strip().lower() not in ("y", "yes"):
                print("not rolled back (confirm with --yes, or answer y)", file=sys.stderr)
                return 3
        verify = settings.verifier(res.postgres, res.redis, log)
        reason = f"manual rollback by {getpass.getuser()} from {current}"
        outcome = rollback(kube, container, target, reason, verify, log)
        res.slack.send(
            Alert(
                headline=f"TwinMe API rolled back by hand ({getpass.getuser()})",
                severity="success" if outcome.healthy else "failure",
                emoji=":leftwards_arrow_with_hook:",
                facts=[
                    Fact("Deployment", kube.describe()),
                    Fact("Was running", current),
                    Fact("Rollback", outcome.sentence()),
                ],
                advice=""
                if outcome.healthy
                else "The API is NOT healthy on this image either: "
                "check the Deployment and /health now, or roll back to another known-good digest.",
            ),
            log=log,
        )
        print(outcome.sentence())
        return 0 if outcome.healthy else 1


def register_rollback(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``twinme-ops rollback [--image REF] [--yes]``."""
    parser = subparsers.add_parser(
        "rollback",
        help="roll the API back to the previous (or a given) image, wait, verify",
        description="Patch the API Deployment back to the image the last release replaced "
        "(recorded in the twinme.ai/previous-image annotation) or to --image, wait for the "
        "rollout like kubectl rollout status, run the deployment verification when "
        "TWINME_API_URL is set, and tell Slack. Exit code 0 only when the result is healthy.",
    )
    parser.add_argument("--image", help="digest-pinned image to go back to (default: previous)")
    parser.add_argument("--container", help="container to patch (default: api)")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.set_defaults(handler=cmd_rollback)


# Add a group here: each entry adds one sub-command tree to the parser.
def cmd_heartbeat(args: argparse.Namespace) -> int:
    """Commit a heartbeat every few seconds into DATABASE_URL until stopped (SIGTERM)."""
    from twinme_ops.backups.pitr.heartbeat_writer import interval_from_env, serve, url_from_env
    from twinme_ops.backups.pitr.layout import PitrError
    from twinme_ops.common.redact import redact

    try:
        interval = args.interval if args.interval is not None else interval_from_env()
        url = url_from_env()
    except PitrError as exc:
        print(f"error: {redact(exc)}", file=sys.stderr)
        return 2
    return serve(url, interval, args.keep_days)


def register_heartbeat(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``twinme-ops heartbeat [--interval S] [--keep-days N]`` (the production Deployment)."""
    parser = subparsers.add_parser(
        "heartbeat",
        help="commit a heartbeat every few seconds (continuous RPO measurement)",
        description="Commit a row into twinme_ops.heartbeat every --interval seconds (default: "
        "$TWINME_HEARTBEAT_INTERVAL_S or 5) in DATABASE_URL (or TWINME_HEARTBEAT_URL), until "
        "SIGTERM. Rows older than --keep-days are deleted hourly.",
    )
    parser.add_argument("--interval", type=_positive_float, default=None, help="seconds")
    parser.add_argument("--keep-days", type=int, default=7, help="days of heartbeats kept")
    parser.set_defaults(handler=cmd_heartbeat)


COMMAND_GROUPS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    register_sandbox,
    register_backup,
    register_rollback,
    register_heartbeat,
]


def build_parser() -> argparse.ArgumentParser:
    """The full ``twinme-ops`` parser."""
    parser = argparse.ArgumentParser(
        prog="twinme-ops", description="Operations of the TwinMe IA API (local tools)."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    groups = parser.add_subparsers(dest="group", required=True, metavar="GROUP")
    for register in COMMAND_GROUPS:
        register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``twinme-ops`` script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.verbose:
        # Dagster's SQLite storage migrates through alembic: a dozen INFO lines per run that say
        # nothing to a person (-v shows them)
        logging.getLogger("alembic").setLevel(logging.WARNING)
    handler: Handler = args.handler
    try:
        return handler(args)
    except Exception as exc:
        from twinme_ops.common.redact import redact

        if args.verbose:
            raise
        print(f"error: {redact(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
