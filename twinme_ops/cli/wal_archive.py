"""``twinme-ops wal-archive``: continuous archiving of a PostgreSQL that is not the sandbox.

The sandbox archives itself (``twinme-ops sandbox up``). For a team's own server (``DATABASE_URL``)
with the local engine (``TWINME_WAL_ARCHIVE=local``), ``start`` checks the server and starts the
receiver into ``TWINME_WAL_ARCHIVE_ROOT`` (a first full base backup when there is none, the
heartbeat writer with ``--heartbeat``), ``stop`` stops them, ``status`` prints the RPO reading.
The logic is :mod:`twinme_ops.backups.pitr.external`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from twinme_ops.cli.sandbox import positive_float

if TYPE_CHECKING:
    from twinme_ops.backups.pitr.layout import ArchiveLayout

EXIT_CONFIG = 2
EXIT_NOT_RUNNING = 3


class ConfigError(Exception):
    """The environment does not say what to archive where; the message names the fix."""


@dataclass(frozen=True)
class Target:
    url: str
    layout: ArchiveLayout
    slot: str


def _target() -> Target:
    """DATABASE_URL and the local engine's archive root, from the environment (or why not)."""
    import os

    from twinme_ops.common.redact import register_secrets_in
    from twinme_ops.defs.resources import twinme_env, twinme_home, wal_archive_resource

    url = os.environ.get("DATABASE_URL", "").strip()
    register_secrets_in(url)
    if not url:
        raise ConfigError(
            "DATABASE_URL is not set: `twinme-ops wal-archive` archives the PostgreSQL it names. "
            "Fix: export DATABASE_URL=postgresql://<role with REPLICATION>@<host>/<database> "
            "(the sandbox needs none of this: `twinme-ops sandbox up` archives it)"
        )
    archive = wal_archive_resource(twinme_env(), str(twinme_home()))
    try:
        engine = archive.check_engine()
    except Exception as exc:
        raise ConfigError(str(exc)) from None
    if engine != "local":
        raise ConfigError(
            f"the WAL archive engine is {engine} (TWINME_WAL_ARCHIVE), not local: "
            "`twinme-ops wal-archive` runs the local engine's receiver. Fix: export "
            "TWINME_WAL_ARCHIVE=local (and TWINME_WAL_ARCHIVE_ROOT), or leave archiving to "
            + (
                "CloudNativePG's Barman Cloud plugin"
                if engine == "cloudnative-pg"
                else "no one (off)"
            )
        )
    return Target(url, archive.layout(), archive.slot)


class _PrintLog:
    """The Log protocol on stderr (progress of the base backup)."""

    def debug(self, msg: str, /) -> None:
        logging.getLogger("twinme_ops.wal_archive").debug(msg)

    def info(self, msg: str, /) -> None:
        print(msg, file=sys.stderr, flush=True)

    def warning(self, msg: str, /) -> None:
        print(f"warning: {msg}", file=sys.stderr, flush=True)


def _config_error(exc: ConfigError) -> int:
    from twinme_ops.common.redact import redact

    print(f"error: {redact(exc)}", file=sys.stderr)
    return EXIT_CONFIG


def cmd_wal_archive_start(args: argparse.Namespace) -> int:
    """Check DATABASE_URL's server, then start (or keep) its receiver, first base backup and,
    with ``--heartbeat``, the heartbeat writer. Idempotent."""
    from twinme_ops.backups.pitr.external import start_external_archiving
    from twinme_ops.backups.pitr.heartbeat_writer import interval_from_env

    try:
        target = _target()
    except ConfigError as exc:
        return _config_error(exc)
    interval = args.heartbeat_interval or interval_from_env()
    report = start_external_archiving(
        target.layout,
        target.url,
        slot=target.slot,
        base_backup=not args.no_base_backup,
        heartbeat=args.heartbeat,
        heartbeat_interval_s=interval,
        log=_PrintLog(),
    )
    print(f"archiving {report.source} into {report.root}")
    print(f"receiver: pg_receivewal --synchronous, pid {report.receiver_pid}, slot {report.slot}")
    if report.base_backup_taken:
        print(f"base backup: {report.base_backup_taken} (full) taken now")
    else:
        print(f"base backups: {report.base_backups} in the archive")
    if report.heartbeat_pid is not None:
        print(
            f"heartbeat writer: pid {report.heartbeat_pid}, every {report.heartbeat_interval_s:g} s"
        )
    else:
        print("heartbeat writer: not running (--heartbeat starts it)")
    print(
        "# idempotent: run it again from cron or a systemd timer to restart what died; "
        "`twinme-ops wal-archive status` shows the RPO"
    )
    return 0


def cmd_wal_archive_stop(args: argparse.Namespace) -> int:
    """Stop the heartbeat writer and the receiver of the archive root; ``--drop-slot`` also drops
    the server's slot (the archive ends there)."""
    from twinme_ops.backups.pitr.external import stop_external_archiving

    try:
        target = _target()
    except ConfigError as exc:
        return _config_error(exc)
    stopped = stop_external_archiving(
        target.layout, target.url, slot=target.slot, drop_slot=args.drop_slot
    )
    for name in ("heartbeat_writer", "receiver"):
        print(f"{name.replace('_', ' ')}: {'stopped' if stopped[name] else 'was not running'}")
    if stopped["slot_dropped"]:
        print(
            f"slot {target.slot} dropped: the server no longer keeps WAL for {target.layout.root}, "
            "which can restore up to now; to archive again, start into a new, empty "
            "TWINME_WAL_ARCHIVE_ROOT"
        )
    else:
        print(
            f"slot {target.slot} kept: the server keeps every WAL segment for the archive until "
            "the receiver is back (watch its disk); `stop --drop-slot` retires archiving"
        )
    return 0


def cmd_wal_archive_status(args: argparse.Namespace) -> int:
    """Print the archive's RPO reading as JSON; exit 3 when the receiver is not running."""
    from twinme_ops.backups.pitr.external import external_status

    try:
        target = _target()
    except ConfigError as exc:
        return _config_error(exc)
    status = external_status(target.layout, target.url, slot=target.slot)
    print(json.dumps(status, indent=2, sort_keys=True, default=str))
    return 0 if status["receiver_alive"] else EXIT_NOT_RUNNING


def register_wal_archive(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``twinme-ops wal-archive start [--heartbeat] | stop [--drop-slot] | status``."""
    group = subparsers.add_parser(
        "wal-archive",
        help="continuous WAL archiving of DATABASE_URL's server (not the sandbox)",
        description="Archive the WAL of the PostgreSQL named by DATABASE_URL into "
        "TWINME_WAL_ARCHIVE_ROOT (TWINME_WAL_ARCHIVE=local): pg_receivewal on a slot, a first "
        "full base backup, the heartbeat writer. The server is checked, never changed.",
    )
    commands = group.add_subparsers(dest="command", required=True, metavar="COMMAND")
    start = commands.add_parser(
        "start", help="check the server, start the receiver (+ first base backup); idempotent"
    )
    start.add_argument(
        "--heartbeat",
        action="store_true",
        help="also start the heartbeat writer (a row in twinme_ops.heartbeat every few seconds)",
    )
    start.add_argument(
        "--heartbeat-interval",
        type=positive_float,
        default=None,
        help="seconds between heartbeats (default $TWINME_HEARTBEAT_INTERVAL_S or 5)",
    )
    start.add_argument(
        "--no-base-backup",
        action="store_true",
        help="do not take the first full base backup (base_backup_job will)",
    )
    start.set_defaults(handler=cmd_wal_archive_start)
    stop = commands.add_parser("stop", help="stop the heartbeat writer and the receiver")
    stop.add_argument(
        "--drop-slot",
        action="store_true",
        help="also drop the replication slot: the server stops keeping WAL for the archive",
    )
    stop.set_defaults(handler=cmd_wal_archive_stop)
    commands.add_parser(
        "status", help="the RPO, receiver, slot and base backups as JSON (exit 3: not running)"
    ).set_defaults(handler=cmd_wal_archive_status)
