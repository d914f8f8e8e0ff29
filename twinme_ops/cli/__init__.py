"""``twinme-ops``: command line for the local side of the TwinMe operations.

One sub-command group per module of this package (``sandbox``, ``backup``, ``rollback``,
``heartbeat``, ``wal_archive``, ``pitr``). A group is a ``register_<group>(subparsers)`` function
that adds its parser and sets ``handler`` on each command; :func:`build_parser` calls the
registrars listed in ``COMMAND_GROUPS``, so a new group is one module plus one entry there.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from twinme_ops.cli.backup import cmd_backup, register_backup, today_partition
from twinme_ops.cli.heartbeat import cmd_heartbeat, register_heartbeat
from twinme_ops.cli.pitr import register_pitr
from twinme_ops.cli.rollback import cmd_rollback, register_rollback
from twinme_ops.cli.sandbox import (
    cmd_sandbox_down,
    cmd_sandbox_seed,
    cmd_sandbox_status,
    cmd_sandbox_up,
    register_sandbox,
)
from twinme_ops.cli.wal_archive import (
    cmd_wal_archive_start,
    cmd_wal_archive_status,
    cmd_wal_archive_stop,
    register_wal_archive,
)

__all__ = [
    "COMMAND_GROUPS",
    "build_parser",
    "cmd_backup",
    "cmd_heartbeat",
    "cmd_rollback",
    "cmd_sandbox_down",
    "cmd_sandbox_seed",
    "cmd_sandbox_status",
    "cmd_sandbox_up",
    "cmd_wal_archive_start",
    "cmd_wal_archive_status",
    "cmd_wal_archive_stop",
    "main",
    "today_partition",
]

Handler = Callable[[argparse.Namespace], int]

COMMAND_GROUPS: list[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]] = [
    register_sandbox,
    register_backup,
    register_rollback,
    register_heartbeat,
    register_wal_archive,
    register_pitr,
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
