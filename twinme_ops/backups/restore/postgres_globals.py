"""PostgreSQL restore, the roles: a set's ``pg_dumpall --globals-only`` script, before its dump.

The script creates every role the dump's owners, grants and policies name. Replayed as is on a
server that already has some of them (the bootstrap superuser of a scratch server, the live
roles during a recovery) it fails on ``CREATE ROLE`` and would reset existing roles' attributes
and settings to the backup's (re-enabling a role locked out since, say). So
:func:`restore_globals` leaves existing roles as they are: their ``CREATE ROLE``, ``ALTER ROLE``
and ``COMMENT ON ROLE`` statements are skipped, everything else runs, in one transaction with
``ON_ERROR_STOP``: a real error (a missing privilege, a malformed script) fails the restore with
psql's words, and nothing of the script stays applied.

No Dagster in this module: it is plain library code.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from twinme_ops.backups.restore.common import close_iterator, restore_error
from twinme_ops.backups.restore.postgres_databases import connect_admin
from twinme_ops.common.libpq import libpq_fix
from twinme_ops.common.pgtools import pg_bin
from twinme_ops.common.redact import redact
from twinme_ops.servers.postgres_globals import ROLE_IDENT, unquote_ident

# a globals script is kilobytes; anything this large is not one
MAX_SCRIPT_BYTES = 64 << 20
RESTORE_TIMEOUT_S = 600
_STDERR_LINES = 5
# single-line statements about one role: skipped when the role exists on the target
_ROLE_STATEMENT = re.compile(
    rf"^(?:CREATE ROLE (?P<create>{ROLE_IDENT});"
    rf"|ALTER ROLE (?P<alter>{ROLE_IDENT}) (?:WITH|SET|RESET) .*;"
    rf"|COMMENT ON ROLE (?P<comment>{ROLE_IDENT}) IS .*;)$"
)


@dataclass
class GlobalsRestore:
    """What :func:`restore_globals` did: roles created, roles that existed and were kept."""

    created: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    skipped_statements: int = 0


def read_script(chunks: Iterable[bytes]) -> str:
    """The whole script (its stream ends verified: sha256 and decryption) or a restore error."""
    data = bytearray()
    try:
        for chunk in chunks:
            data += chunk
            if len(data) > MAX_SCRIPT_BYTES:
                raise restore_error(
                    f"PostgreSQL roles: the globals artifact is over {MAX_SCRIPT_BYTES >> 20} MiB, "
                    "not a pg_dumpall --globals-only script. Fix: check the set's manifest"
                )
    finally:
        close_iterator(chunks)
    return data.decode("utf-8")


def without_existing_roles(script: str, existing: set[str]) -> tuple[str, GlobalsRestore]:
    """``script`` without the statements about roles in ``existing`` (role names)."""
    outcome = GlobalsRestore()
    lines: list[str] = []
    for line in script.splitlines(keepends=True):
        match = _ROLE_STATEMENT.match(line.rstrip("\n"))
        if match is None:
            lines.append(line)
            continue
        ident = match["create"] or match["alter"] or match["comment"]
        role = unquote_ident(ident)
        if role in existing:
            outcome.skipped_statements += 1
            if match["create"]:
                outcome.kept.append(role)
            continue
        if match["create"]:
            outcome.created.append(role)
        lines.append(line)
    return "".join(lines), outcome


def restore_globals(
    chunks: Iterable[bytes], admin_url: str, env: Mapping[str, str] | None = None
) -> GlobalsRestore:
    """Replay a globals script on the server of ``admin_url`` (a maintenance database), keeping
    the roles that exist there as they are; raise :class:`RestoreError` on any other error."""
    script = read_script(chunks)
    with connect_admin(admin_url, env) as conn:
        existing = {str(r[0]) for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
    filtered, outcome = without_existing_roles(script, existing)
    tool_env = dict(os.environ if env is None else env)
    argv = [
        pg_bin("psql"),
        "-X",
        "--quiet",
        "--no-password",
        "--set=ON_ERROR_STOP=1",
        "--single-transaction",
        f"--dbname={admin_url}",
        "--file=-",
    ]
    try:
        proc = subprocess.run(
            argv,
            input=filtered.encode(),
            capture_output=True,
            env=tool_env,
            timeout=RESTORE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise restore_error(
            f"PostgreSQL roles: psql did not finish in {RESTORE_TIMEOUT_S} s on "
            f"{redact(admin_url)}. Fix: check the server for locks on pg_authid, then re-run"
        ) from None
    if proc.returncode != 0:
        raise restore_error(_psql_message(admin_url, proc.returncode, proc.stderr))
    return outcome


def _psql_message(admin_url: str, code: int, stderr: bytes) -> str:
    lines = [ln for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln or "FATAL" in ln] or lines
    detail = " | ".join(errors[-_STDERR_LINES:]) or "no error output"
    low = detail.lower()
    if "permission denied" in low or "must be superuser" in low or "must have" in low:
        fix = (
            "the restoring role may not create these roles: run it as a role with CREATEROLE "
            "(a superuser for SUPERUSER or REPLICATION roles), or create them first"
        )
    elif known := libpq_fix(low, credentials="(PGPASSWORD) for the target server"):
        fix = known
    else:
        fix = "check the error above; nothing of the roles script was applied (one transaction)"
    return (
        f"PostgreSQL roles restore on {redact(admin_url)} failed: psql exited {code}: {detail}. "
        f"Fix: {fix}."
    )
