"""``twinme-ops sandbox``: start, stop, inspect and reseed the embedded local environment."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


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


def positive_float(text: str) -> float:
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
        type=positive_float,
        default=0.02,
        help="1 is about 100 MB of database, 10 about 1 GB (default: 0.02)",
    )
    seed_parser.set_defaults(handler=cmd_sandbox_seed)
