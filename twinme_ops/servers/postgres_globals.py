"""PostgreSQL's global objects: the roles and role memberships ``pg_dump`` leaves out.

A database dump names roles (owners, grants, row-level-security policies) that live outside it,
in the cluster. :func:`globals_dump` takes them with ``pg_dumpall --globals-only``, without
password hashes unless asked: reading them needs a superuser (managed PostgreSQL refuses), and a
set holding them is as sensitive as the passwords. Tablespaces are left out (TwinMe uses the
default one; a restore elsewhere has no such directories).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from twinme_ops.common.libpq import libpq_fix
from twinme_ops.common.pgtools import pg_bin
from twinme_ops.common.redact import redact
from twinme_ops.servers.postgres import PostgresError, PostgresResource

DUMP_TIMEOUT_S = 600
# a role name as pg_dumpall writes it: a plain identifier, or double-quoted with "" inside
ROLE_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_CREATE_ROLE = re.compile(rf"^CREATE ROLE ({ROLE_IDENT});$", re.MULTILINE)
_MEMBERSHIP = re.compile(r"^GRANT .+ TO .+;$", re.MULTILINE)


def unquote_ident(ident: str) -> str:
    """A role name from its SQL form: a plain identifier, or double-quoted with doubled quotes."""
    if ident.startswith('"') and ident.endswith('"'):
        return ident[1:-1].replace('""', '"')
    return ident


@dataclass
class GlobalsFacts:
    """What a globals dump holds: the roles a restore must bring back."""

    server_version: str = ""
    roles: list[str] = field(default_factory=list)
    memberships: int = 0
    passwords: bool = False
    options: list[str] = field(default_factory=list)


def dump_options(passwords: bool) -> list[str]:
    """``pg_dumpall`` options of a globals dump."""
    return ["--globals-only", "--no-tablespaces", *([] if passwords else ["--no-role-passwords"])]


def parse_globals(script: str) -> tuple[list[str], int]:
    """``(role names, role memberships)`` created by a ``pg_dumpall --globals-only`` script."""
    roles = sorted(unquote_ident(m) for m in _CREATE_ROLE.findall(script))
    return roles, len(_MEMBERSHIP.findall(script))


@contextmanager
def globals_dump(
    pg: PostgresResource, *, passwords: bool = False
) -> Iterator[tuple[Iterator[bytes], GlobalsFacts]]:
    """Yield ``(chunks, facts)`` of ``pg_dumpall --globals-only`` of ``pg``'s server.

    The script is a few kilobytes per hundred roles: it is read whole, so the facts (the role
    names a drill checks) describe exactly the bytes stored. ``passwords`` keeps the roles'
    password hashes (needs a superuser). Failures raise :class:`PostgresError` with the fix.
    """
    options = dump_options(passwords)
    with pg.get_connection() as conn:
        row = conn.execute("SELECT current_setting('server_version')").fetchone()
    argv = [pg_bin("pg_dumpall"), *options, "--no-password", f"--dbname={pg.tool_dsn()}"]
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            env=pg.tool_env(),
            timeout=DUMP_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PostgresError(
            f"pg_dumpall --globals-only of {pg.describe()} did not finish in {DUMP_TIMEOUT_S} s. "
            "Fix: check the server's load and locks on pg_authid, then re-run the partition"
        ) from None
    if proc.returncode != 0:
        raise PostgresError(globals_error_message(pg, proc.returncode, proc.stderr, passwords))
    script = proc.stdout.decode("utf-8")
    roles, memberships = parse_globals(script)
    facts = GlobalsFacts(
        server_version=str(row[0]) if row else "",
        roles=roles,
        memberships=memberships,
        passwords=passwords,
        options=options,
    )
    yield iter([proc.stdout]), facts


def globals_error_message(pg: PostgresResource, code: int, stderr: bytes, passwords: bool) -> str:
    """pg_dumpall's own words (redacted) and the fix."""
    lines = [ln for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    detail = redact(" | ".join(lines[-3:])) or "no error output"
    text = detail.lower()
    if passwords and "permission denied" in text and "pg_authid" in text:
        fix = (
            "reading password hashes needs a superuser (managed PostgreSQL never allows it): "
            "set role_passwords: false in the run config (the default)"
        )
    elif known := libpq_fix(text, credentials="in DATABASE_URL"):
        fix = known
    else:
        fix = "check the server and the error above, then re-run the partition"
    return (
        f"pg_dumpall --globals-only of {pg.describe()} failed (exit {code}): {detail}. Fix: {fix}."
    )
