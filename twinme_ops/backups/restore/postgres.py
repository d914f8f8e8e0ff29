"""PostgreSQL restore: stream a dump into a fresh database, then swap it over the live one.

:func:`pg_restore_stream` (here) restores into a fresh database made by
:func:`~twinme_ops.backups.restore.postgres_databases.create_database`, then
:func:`~twinme_ops.backups.restore.postgres_swap.swap_databases` renames it over the live one
(``psql < dump`` into a live database fails on existing objects or duplicates rows);
:func:`~twinme_ops.backups.restore.postgres_databases.drop_database` discards a failed restore or
an old copy. Shared parts (:class:`RestoreError`) are in :mod:`twinme_ops.backups.restore.common`.

No Dagster in this module: it is plain library code.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO

from twinme_ops.backups.restore.common import close_iterator, restore_error
from twinme_ops.common.libpq import libpq_fix
from twinme_ops.common.pgtools import pg_bin
from twinme_ops.common.redact import redact, register_secret

_STDERR_LINES = 5


def pg_restore_stream(
    chunks: Iterable[bytes],
    dsn: str,
    env: Mapping[str, str] | None = None,
    *,
    no_owner: bool = True,
    jobs: int = 1,
    no_privileges: bool = False,
    single_transaction: bool | None = None,
    spool_dir: Path | None = None,
) -> None:
    """Restore a custom-format dump (its decompressed bytes) into the database ``dsn``.

    The password travels in ``env["PGPASSWORD"]`` (see :meth:`PostgresResource.tool_env`),
    never in argv: one found in ``dsn`` is moved there. The target should be a fresh database
    (``create_database``); ``--exit-on-error`` stops at the first error.

    ``jobs == 1`` (default) streams the bytes into ``pg_restore``'s stdin: nothing is written to
    disk. ``jobs > 1`` needs a seekable archive, so the dump is first spooled to a temporary file
    in ``spool_dir`` (as large as the dump). On the 2-core reference machine, for a 1 GiB dump,
    spooling + ``--jobs=2`` took as long as streaming (median 15.6 s vs 14.9 s): writing the spool
    eats what the second job gains.

    ``single_transaction`` (default: on when ``jobs == 1``; pg_restore cannot combine it with
    jobs) runs the whole restore in one transaction, so a failed or killed restore leaves an empty
    database rather than a partial one. It was also faster on the reference machine (median
    12.0 s vs 14.9 s for 1 GiB). Its limit: one lock per restored table and index must fit in the
    lock table (``max_locks_per_transaction`` x ``max_connections``), which thousands of
    partitions can exceed; pass False then. ``no_privileges`` skips GRANT/REVOKE, for scratch
    servers that lack the production roles.

    If ``chunks`` raises (a checksum mismatch is raised at the very end of a verified stream),
    ``pg_restore`` is killed and the exception propagates: the target holds an untrusted partial
    restore that the caller must drop. A ``pg_restore`` failure raises :class:`RestoreError` with
    its last stderr lines.
    """
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    if jobs < 1:
        raise ValueError("jobs must be >= 1")
    if single_transaction is None:
        single_transaction = jobs == 1
    if jobs > 1 and single_transaction:
        raise ValueError("pg_restore cannot combine --jobs with --single-transaction")
    tool_env = dict(os.environ if env is None else env)
    params = conninfo_to_dict(dsn)
    if "password" in params:
        # A password in the DSN would be visible in argv (ps, /proc): move it to the environment.
        tool_env["PGPASSWORD"] = str(params.pop("password"))
        dsn = make_conninfo("", **params)
    register_secret(tool_env.get("PGPASSWORD"))
    argv = [pg_bin("pg_restore"), "--exit-on-error", "--no-password", f"--dbname={dsn}"]
    if no_owner:
        argv.append("--no-owner")
    if no_privileges:
        argv.append("--no-privileges")
    if single_transaction:
        argv.append("--single-transaction")
    with tempfile.TemporaryFile() as stderr:
        if jobs == 1:
            _restore_from_stdin(chunks, argv, tool_env, stderr, dsn)
            return
        with tempfile.NamedTemporaryFile(dir=spool_dir, prefix="pg-restore-", suffix=".dump") as f:
            try:
                for chunk in chunks:
                    f.write(chunk)
                f.flush()
            finally:
                close_iterator(chunks)
            proc = subprocess.run(
                [*argv, f"--jobs={jobs}", f.name],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=tool_env,
                check=False,
            )
            if proc.returncode != 0:
                raise restore_error(_pg_restore_message(dsn, proc.returncode, stderr))


def _restore_from_stdin(
    chunks: Iterable[bytes], argv: list[str], env: dict[str, str], stderr: IO[bytes], dsn: str
) -> None:
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr, env=env
    )
    assert proc.stdin is not None
    finished = False
    try:
        for chunk in chunks:
            if finished:
                continue  # keep reading: the stream's checksum is verified at its very end
            try:
                proc.stdin.write(chunk)
            except BrokenPipeError:
                if proc.wait() != 0:
                    break  # pg_restore failed: report its error, do not download the rest
                finished = True  # it had read all it needed (the archive's trailing bytes)
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
    except BaseException:
        # The stream failed (checksum, network, Ctrl-C): pg_restore must not finish on its own
        # with what it already has, and the server rolls back the COPY it was running.
        proc.kill()
        proc.wait()
        with contextlib.suppress(OSError):
            proc.stdin.close()
        raise
    finally:
        close_iterator(chunks)
    code = proc.wait()
    if code != 0:
        raise restore_error(_pg_restore_message(dsn, code, stderr))


def _pg_restore_message(dsn: str, code: int, stderr: IO[bytes]) -> str:
    stderr.seek(0)
    lines = [ln for ln in stderr.read().decode(errors="replace").splitlines() if ln.strip()]
    detail = " | ".join(lines[-_STDERR_LINES:]) or "no error output"
    low = detail.lower()
    if "already exists" in low:
        fix = "restore into a fresh, empty database (create_database), never into the live one"
    elif "role" in low and "does not exist" in low:
        fix = "create the missing role on the target server, or restore with no_privileges=True"
    elif "max_locks_per_transaction" in low or "out of shared memory" in low:
        fix = (
            "too many tables for one transaction: restore with single_transaction=False "
            "(or raise max_locks_per_transaction on the target)"
        )
    elif known := libpq_fix(low, credentials="(PGPASSWORD) for the target server"):
        fix = known
    elif "unsupported version" in low or "input file does not appear" in low:
        fix = "the artifact is not a pg_dump custom-format archive this pg_restore can read"
    else:
        fix = "drop the partially restored database, check the error above and re-run"
    return (
        f"PostgreSQL restore into {redact(dsn)} failed: pg_restore exited {code}: {detail}. "
        f"Fix: {fix}."
    )
