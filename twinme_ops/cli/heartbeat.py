"""``twinme-ops heartbeat``: the heartbeat writer that makes the recovery point measurable."""

from __future__ import annotations

import argparse
import sys

from twinme_ops.cli.sandbox import positive_float


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
    parser.add_argument("--interval", type=positive_float, default=None, help="seconds")
    parser.add_argument("--keep-days", type=int, default=7, help="days of heartbeats kept")
    parser.set_defaults(handler=cmd_heartbeat)
