"""Restore primitives: PostgreSQL, files and Redis, for restore drills and the guarded recovery.

Every primitive restores *next to* what is live and switches over only once the restored copy is
complete, because a backup artifact is verified (sha256, last encryption chunk, end of the zstd
frame) only when its stream ends (:func:`twinme_ops.lib.artifacts.read_artifact`):

- PostgreSQL: :func:`pg_restore_stream` into a fresh database made by :func:`create_database`,
  then :func:`swap_databases` renames it over the live one (``psql < dump`` into a live database
  fails on existing objects or duplicates rows).
- Files: :func:`safe_extract` into a staging directory (refusing anything that would write outside
  it), then :func:`replace_tree` makes the live tree equal to it without replacing its root, which
  may be a mount point.
- Redis: :func:`scratch_redis_from_rdb` loads the RDB into a scratch server, then
  :func:`replay_redis` copies every key to the live server with ``DUMP``/``RESTORE`` and removes
  the others with ``SCAN``/``UNLINK``: production renames ``FLUSHALL``, ``CONFIG`` and ``KEYS``
  away, and with ``appendonly yes`` a server ignores an RDB dropped on its disk.

No Dagster in this module: it is plain library code.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg
import redis
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from twinme_ops.lib.local_servers import LocalServerError
from twinme_ops.lib.pgtools import pg_bin
from twinme_ops.lib.postgres import connection_error_message
from twinme_ops.lib.redact import redact, register_secret
from twinme_ops.lib.redis_server import (
    REDIS_DBFILENAME,
    RedisServer,
    rdb_min_redis_version,
    redis_binary_version,
    redis_server_candidates,
)

COPY_CHUNK = 1 << 20
_STDERR_LINES = 5


class RestoreError(RuntimeError):
    """A restore step failed; the message names the component, the object and the fix.

    Messages are redacted: no password, URL userinfo or query ever appears in them.
    """


def _error(message: str) -> RestoreError:
    return RestoreError(redact(message))


def _close_iterator(chunks: Iterable[bytes]) -> None:
    """Close a generator we stop reading early, so its ``finally`` (open readers) runs now."""
    close = getattr(chunks, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):
            close()


# ============================================================================================
# PostgreSQL


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
    (:func:`create_database`); ``--exit-on-error`` stops at the first error.

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
                _close_iterator(chunks)
            proc = subprocess.run(
                [*argv, f"--jobs={jobs}", f.name],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=tool_env,
                check=False,
            )
            if proc.returncode != 0:
                raise _error(_pg_restore_message(dsn, proc.returncode, stderr))


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
        _close_iterator(chunks)
    code = proc.wait()
    if code != 0:
        raise _error(_pg_restore_message(dsn, code, stderr))


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
    elif "password authentication failed" in low or "no password supplied" in low:
        fix = "check the user and password (PGPASSWORD) for the target server"
    elif "unsupported version" in low or "input file does not appear" in low:
        fix = "the artifact is not a pg_dump custom-format archive this pg_restore can read"
    else:
        fix = "drop the partially restored database, check the error above and re-run"
    return (
        f"PostgreSQL restore into {redact(dsn)} failed: pg_restore exited {code}: {detail}. "
        f"Fix: {fix}."
    )


def _connect_admin(admin_url: str, env: Mapping[str, str] | None) -> psycopg.Connection[Any]:
    env = env or {}
    password = env.get("PGPASSWORD")
    register_secret(password)
    kwargs: dict[str, Any] = {"password": password} if password else {}
    try:
        return psycopg.connect(
            admin_url,
            autocommit=True,
            connect_timeout=int(env.get("PGCONNECT_TIMEOUT", "10")),
            application_name="twinme_ops restore",
            **kwargs,
        )
    except psycopg.OperationalError as exc:
        raise _error(connection_error_message(redact(admin_url), exc)) from None


def _check_not_current(conn: psycopg.Connection[Any], *names: str) -> None:
    row = conn.execute("SELECT current_database()").fetchone()
    current = row[0] if row else ""
    if current in names:
        raise _error(
            f"PostgreSQL: admin_url points at database {current!r}, one of those being "
            "created, dropped or renamed. Fix: point admin_url at the maintenance database "
            "(postgres) of the same server."
        )


def _database_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
    )


def create_database(
    admin_url: str,
    name: str,
    env: Mapping[str, str] | None = None,
    *,
    owner: str | None = None,
    like: str | None = None,
) -> None:
    """``CREATE DATABASE name TEMPLATE template0``: an empty database to restore into.

    template0, because objects someone added to template1 would make the restore fail or leave
    extra objects. ``like`` copies the encoding and locale of an existing database (the live one)
    so that text sorts and indexes behave the same after the swap. Refuses an existing name.
    """
    with _connect_admin(admin_url, env) as conn:
        _check_not_current(conn, name)
        if _database_exists(conn, name):
            raise _error(
                f"PostgreSQL: database {name!r} already exists, a restore needs a fresh one. "
                f"Fix: drop it first (drop_database) or choose another name."
            )
        parts: list[sql.Composable] = [
            sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
        ]
        if owner:
            parts.append(sql.SQL("OWNER {}").format(sql.Identifier(owner)))
        if like:
            parts.extend(_locale_options(conn, like))
        try:
            conn.execute(sql.SQL(" ").join(parts))
        except psycopg.Error as exc:
            raise _error(
                f"PostgreSQL: CREATE DATABASE {name!r} failed: {exc}. Fix: the admin user needs "
                "CREATEDB (or superuser) on the target server."
            ) from None


def _locale_options(conn: psycopg.Connection[Any], like: str) -> list[sql.Composable]:
    row = conn.execute(
        "SELECT pg_encoding_to_char(encoding), datcollate, datctype, datlocprovider, datlocale "
        "FROM pg_database WHERE datname = %s",
        (like,),
    ).fetchone()
    if row is None:
        raise _error(f"PostgreSQL: database {like!r} (create_database like=) does not exist.")
    encoding, collate, ctype, provider, locale = row
    opts: list[sql.Composable] = [
        sql.SQL("ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            sql.Literal(encoding), sql.Literal(collate), sql.Literal(ctype)
        )
    ]
    if provider == "i":
        opts.append(
            sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(locale or "und"))
        )
    elif provider == "b":
        opts.append(
            sql.SQL("LOCALE_PROVIDER builtin BUILTIN_LOCALE {}").format(sql.Literal(locale))
        )
    else:
        opts.append(sql.SQL("LOCALE_PROVIDER libc"))
    return opts


def drop_database(admin_url: str, name: str, env: Mapping[str, str] | None = None) -> None:
    """``DROP DATABASE IF EXISTS name WITH (FORCE)``: its sessions are terminated first.

    Used to discard a failed or superseded restore (and old copies kept by
    :func:`swap_databases`). A no-op when the database does not exist.
    """
    with _connect_admin(admin_url, env) as conn:
        _check_not_current(conn, name)
        try:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        except psycopg.Error as exc:
            raise _error(
                f"PostgreSQL: DROP DATABASE {name!r} failed: {exc}. Fix: the admin user must own "
                "the database (or be superuser); prepared transactions, logical replication "
                "slots or subscriptions in it must be removed first."
            ) from None


def swap_databases(
    admin_url: str,
    live: str,
    restored: str,
    keep_old_as: str,
    env: Mapping[str, str] | None = None,
    *,
    copy_properties: bool = True,
    timeout: float = 60.0,
) -> None:
    """Put the restored database in place of the live one; keep the live one as ``keep_old_as``.

    Steps: copy the live database's owner, grants and ``ALTER DATABASE ... SET`` settings to the
    restored one (they are not in a pg_dump archive); refuse new connections to both databases
    (``ALLOW_CONNECTIONS false``); terminate their sessions; then, in one transaction, rename
    ``live`` -> ``keep_old_as`` and ``restored`` -> ``live`` and let connections in again. The
    renames are atomic: clients see the old database or the new one, never neither nor a mix.

    If anything fails before the renames commit, connections to ``live`` are allowed again and
    nothing is renamed. If the process dies between blocking and renaming, ``live`` refuses
    connections until someone re-runs the swap or runs ``ALTER DATABASE live ALLOW_CONNECTIONS
    true``. Logical replication slots of ``live`` stay with ``keep_old_as`` (they are per
    database oid): recreate subscriptions after a recovery.
    """
    names = {live, restored, keep_old_as}
    if len(names) != 3:
        raise ValueError("live, restored and keep_old_as must be three different names")
    with _connect_admin(admin_url, env) as conn:
        _check_not_current(conn, *names)
        allow = dict(
            conn.execute(
                "SELECT datname, datallowconn FROM pg_database WHERE datname = ANY(%s)",
                (list(names),),
            ).fetchall()
        )
        if restored not in allow:
            raise _error(f"PostgreSQL swap: restored database {restored!r} does not exist.")
        if live not in allow:
            raise _error(
                f"PostgreSQL swap: live database {live!r} does not exist. Fix: check the name; "
                f"if it is really gone, rename {restored!r} to it yourself."
            )
        if keep_old_as in allow:
            raise _error(
                f"PostgreSQL swap: {keep_old_as!r} already exists. Fix: drop it (drop_database) "
                "or choose another keep_old_as; the swap never overwrites a database."
            )
        if copy_properties:
            _copy_database_properties(conn, live, restored)
        blocked: list[str] = []
        try:
            for name in (live, restored):
                _allow_connections(conn, name, False)
                blocked.append(name)
            _rename_when_idle(conn, live, restored, keep_old_as, bool(allow[live]), timeout)
        except BaseException:
            # Nothing was renamed: give both databases back their own connection setting.
            for name in blocked:
                with contextlib.suppress(psycopg.Error):
                    _allow_connections(conn, name, bool(allow[name]))
            raise


def _allow_connections(conn: psycopg.Connection[Any], name: str, allowed: bool) -> None:
    conn.execute(
        sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
            sql.Identifier(name), sql.SQL("true" if allowed else "false")
        )
    )


def _rename_when_idle(
    conn: psycopg.Connection[Any],
    live: str,
    restored: str,
    keep_old_as: str,
    live_allowed: bool,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        # Sessions (autovacuum workers included) that were already in keep coming until the
        # block is committed; terminating is asynchronous, so retry the renames until it worked.
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
            ([live, restored],),
        )
        try:
            with conn.transaction():
                conn.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(live), sql.Identifier(keep_old_as)
                    )
                )
                conn.execute(
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                        sql.Identifier(restored), sql.Identifier(live)
                    )
                )
                _allow_connections(conn, live, live_allowed)
                # The old copy is kept for inspection (and a swap back), so it may be opened.
                _allow_connections(conn, keep_old_as, True)
            return
        except psycopg.errors.ObjectInUse as exc:
            last = str(exc)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise _error(
                f"PostgreSQL swap of {live!r}: {exc}. Fix: the admin user must own both "
                "databases (or be superuser) and be allowed to terminate their sessions "
                "(pg_signal_backend)."
            ) from None
        if time.monotonic() > deadline:
            raise _error(
                f"PostgreSQL swap: sessions on {live!r}/{restored!r} did not end within "
                f"{timeout:.0f} s ({last.strip()}). Fix: stop the clients (scale the API to 0), "
                "check for prepared transactions, and re-run."
            )
        time.sleep(0.1)


def _copy_database_properties(conn: psycopg.Connection[Any], live: str, restored: str) -> None:
    """Owner, grants and ``ALTER DATABASE SET`` settings: database state pg_dump does not save."""
    row = conn.execute(
        "SELECT pg_get_userbyid(datdba), datacl IS NULL FROM pg_database WHERE datname = %s",
        (live,),
    ).fetchone()
    assert row is not None
    owner, default_acl = row
    target = sql.Identifier(restored)
    conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(target, sql.Identifier(owner)))
    if not default_acl:
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(target))
        grants = conn.execute(
            "SELECT CASE WHEN a.grantee = 0 THEN NULL ELSE pg_get_userbyid(a.grantee) END, "
            "a.privilege_type, a.is_grantable "
            "FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s",
            (live,),
        ).fetchall()
        for grantee, privilege, grantable in grants:
            conn.execute(
                sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                    sql.SQL(privilege),  # from aclexplode: CREATE, TEMPORARY or CONNECT
                    target,
                    sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee),
                    sql.SQL(" WITH GRANT OPTION" if grantable else ""),
                )
            )
    settings = conn.execute(
        "SELECT unnest(s.setconfig) FROM pg_db_role_setting s "
        "JOIN pg_database d ON d.oid = s.setdatabase WHERE d.datname = %s AND s.setrole = 0",
        (live,),
    ).fetchall()
    for (entry,) in settings:
        name, _, value = str(entry).partition("=")
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET {} = {}").format(
                target, sql.Identifier(name), _setting_value(name, value)
            )
        )


def _setting_value(name: str, value: str) -> sql.Composable:
    """A stored setting as SQL: list settings (search_path...) are one literal per element."""
    if name.lower() not in _LIST_SETTINGS:
        return sql.Literal(value)
    return sql.SQL(", ").join(sql.Literal(item) for item in _split_setting_list(value))


# GUC_LIST_QUOTE settings: stored as a comma-separated list of (maybe double-quoted) items
_LIST_SETTINGS = {
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "local_preload_libraries",
    "shared_preload_libraries",
    "unix_socket_directories",
}


def _split_setting_list(value: str) -> list[str]:
    items: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t":
            i += 1
        if i < n and value[i] == '"':
            i += 1
            item = []
            while i < n:
                if value[i] == '"':
                    if i + 1 < n and value[i + 1] == '"':
                        item.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                item.append(value[i])
                i += 1
            items.append("".join(item))
            while i < n and value[i] != ",":
                i += 1
        else:
            start = i
            while i < n and value[i] != ",":
                i += 1
            items.append(value[start:i].strip())
        i += 1  # the comma
    return items


# ============================================================================================
# Files


class _ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (what tarfile's stream mode reads)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._it: Iterator[bytes] = iter(chunks)
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = memoryview(next(self._it))
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n

    def drain(self) -> None:
        """Read to the end: the source checks its checksum only when it is exhausted."""
        self._buf = memoryview(b"")
        for _ in self._it:
            pass


@dataclass
class _Extracted:
    """What is still needed about extracted directories and symlinks once the stream moved on."""

    dirs: list[tuple[str, int, int, int, float]] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  # (path, member name)
    counts: dict[str, int] = field(
        default_factory=lambda: {"files": 0, "bytes": 0, "dirs": 0, "symlinks": 0}
    )


def safe_extract(
    chunks: Iterable[bytes], dest: Path, *, artifact: str = "files archive"
) -> dict[str, int]:
    """Extract a streamed tar into ``dest`` (created, must be empty); nothing lands outside it.

    Refused, with a :class:`RestoreError` naming the member and why, before anything of that
    member is written: absolute names, ``..`` components, device files and fifos, hard links
    and symlinks whose target is absolute or resolves outside ``dest``, and writes through an
    extracted symlink that leads outside. Files are created with ``O_NOFOLLOW|O_EXCL``, so a
    write never follows a link. Modes (setuid/setgid/sticky bits dropped), mtimes and, when
    running as root, numeric owners are restored; directories get theirs once their content is
    written (a read-only directory still receives its files). Memory stays flat whatever the
    number of members.

    The stream is read to its end even after the tar's end marker, so a verifying source
    (:func:`read_artifact`) checks its sha256; if it raises, ``dest`` holds a partial tree that
    must be discarded. Returns ``{"files", "bytes", "dirs", "symlinks"}`` (hard links count as
    files of 0 bytes, as in the backup's facts).
    """
    dest = Path(dest).absolute()
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise _error(f"files restore: {dest} is not empty. Fix: extract into a new directory.")
    root = os.path.realpath(dest)
    done = _Extracted()
    reader = _ChunkReader(chunks)
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for member in tar:
                tar.members = []  # type: ignore[attr-defined]  # stream mode keeps them all
                path = _checked_path(member, root, artifact)
                if path is None:
                    continue  # the archive's own "." entry
                try:
                    _extract_member(tar, member, path, root, done, artifact)
                except OSError as exc:
                    raise _error(
                        f"files restore: cannot extract member {member.name!r} of {artifact} "
                        f"into {dest}: {exc.strerror or exc}. Fix: check the free space and "
                        "permissions of the destination."
                    ) from None
            reader.drain()
    except tarfile.TarError as exc:
        raise _error(f"files restore: {artifact} is not a readable tar: {exc}.") from None
    finally:
        _close_iterator(chunks)
    # A link that was inside when made can lead outside once a later member replaced a link on
    # its path: refuse the tree (nothing was written through it, writes check their parents).
    for path, name in done.links:
        if not _inside(os.path.realpath(path), root):
            raise _error(
                f"files restore: unsafe member {name!r} in {artifact}: it resolves outside the "
                "destination after extraction. Fix: restore another backup set."
            )
    # Deepest first, so a read-only directory is closed only after its children are written.
    for path, mode, uid, gid, mtime in sorted(done.dirs, reverse=True):
        if _inside(os.path.realpath(path), root):
            if os.geteuid() == 0:
                os.chown(path, uid, gid)
            os.chmod(path, mode)
            os.utime(path, (mtime, mtime))
    return done.counts


def _refuse(member: tarfile.TarInfo, artifact: str, why: str) -> RestoreError:
    return _error(
        f"files restore: unsafe member {member.name!r} in {artifact}: {why}; nothing was written "
        "outside the destination. Fix: the archive was not made by twinme_ops or was tampered "
        "with: restore another backup set."
    )


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _checked_path(member: tarfile.TarInfo, root: str, artifact: str) -> str | None:
    name = member.name
    if name.startswith("/") or os.path.isabs(name):
        raise _refuse(member, artifact, "absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _refuse(member, artifact, "'..' in its path")
    if "\x00" in name:
        raise _refuse(member, artifact, "NUL byte in its path")
    if not parts:
        return None
    if member.ischr() or member.isblk():
        raise _refuse(member, artifact, "device file")
    if member.isfifo():
        raise _refuse(member, artifact, "fifo")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise _refuse(member, artifact, f"unsupported member type {member.type!r}")
    path = os.path.join(root, *parts)
    # The parent, resolved through the symlinks already extracted, must stay inside.
    parent = os.path.realpath(os.path.dirname(path))
    if not _inside(parent, root):
        raise _refuse(member, artifact, f"its parent resolves to {parent}, outside the destination")
    if member.issym() or member.islnk():
        link = member.linkname
        if not link or os.path.isabs(link):
            raise _refuse(member, artifact, f"link to absolute path {link!r}")
        if member.issym():
            lexical = os.path.normpath(os.path.join(os.path.dirname(path), link))
        else:  # hard link names are relative to the archive root
            lexical = os.path.normpath(os.path.join(root, link))
        resolved = os.path.realpath(lexical)
        if not (_inside(lexical, root) and _inside(resolved, root)):
            raise _refuse(member, artifact, f"link to {link!r}, outside the destination")
        if member.islnk() and not os.path.lexists(lexical):
            raise _refuse(member, artifact, f"hard link to {link!r}, not extracted before it")
    return path


def _extract_member(
    tar: tarfile.TarFile,
    member: tarfile.TarInfo,
    path: str,
    root: str,
    done: _Extracted,
    artifact: str,
) -> None:
    mode = stat.S_IMODE(member.mode) & 0o777  # no setuid/setgid/sticky from an archive
    as_root = os.geteuid() == 0  # numeric ids: user names differ between hosts
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            if member.isdir():  # a repeated directory entry: the last one's attributes win
                done.dirs.append((path, mode, member.uid, member.gid, member.mtime))
                return
            raise _refuse(member, artifact, "it would replace a directory extracted before")
        os.unlink(path)  # a later member of the same name wins, as with tar
    if member.isdir():
        os.mkdir(path, 0o700)  # its own mode once the children are in
        done.dirs.append((path, mode, member.uid, member.gid, member.mtime))
        done.counts["dirs"] += 1
    elif member.issym():
        os.symlink(member.linkname, path)
        if as_root:
            os.chown(path, member.uid, member.gid, follow_symlinks=False)
        os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)
        done.links.append((path, member.name))
        done.counts["symlinks"] += 1
    elif member.islnk():
        os.link(os.path.join(root, member.linkname), path, follow_symlinks=False)
        done.counts["files"] += 1
    else:
        src = tar.extractfile(member)
        assert src is not None
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with os.fdopen(os.open(path, flags, 0o600), "wb") as out:
            shutil.copyfileobj(src, out, COPY_CHUNK)
            out.flush()
            fd = out.fileno()
            if as_root:
                os.fchown(fd, member.uid, member.gid)
            os.fchmod(fd, mode)
            os.utime(fd, (member.mtime, member.mtime))
        done.counts["files"] += 1
        done.counts["bytes"] += member.size


TRASH_PREFIX = ".twinme-restore-trash-"
STAGING_PREFIX = ".twinme-restore-new-"


def staging_dir_for(target: Path) -> Path:
    """A fresh, empty directory on the same filesystem as ``target`` to extract into.

    A sibling when the parent is on the same filesystem; inside ``target`` when ``target`` is a
    mount point (:func:`replace_tree` skips it), so that replacing the tree is renames only.
    """
    target = Path(target).absolute()
    parent = target.parent
    name = f"{STAGING_PREFIX}{target.name}-{uuid.uuid4().hex[:12]}"
    base = parent if parent.stat().st_dev == target.stat().st_dev else target
    path = base / name
    path.mkdir(mode=0o700)
    return path


def replace_tree(extracted: Path, target: Path) -> None:
    """Make ``target``'s content exactly ``extracted``'s, keeping ``target`` itself (a mount point).

    1. every child of ``target`` is renamed into ``target/.twinme-restore-trash-<id>`` (same
       filesystem as the children, so renames, even when ``target`` is a mount point);
    2. every child of ``extracted`` is renamed into ``target`` (copied, when ``extracted`` is on
       another filesystem: use :func:`staging_dir_for` to avoid it);
    3. the trash and the emptied ``extracted`` are removed.

    Crash safety: each step is a series of atomic renames, so at any moment every old entry is
    either in ``target`` or in the trash, and every new one in ``extracted`` or in ``target``;
    nothing is deleted before step 3. After a crash in 1 or 2, move the trash's children back (or
    delete the trash and restore again from the backup, which is still intact); a later call
    refuses to run while a trash exists, so it cannot throw an interrupted state away. The API
    must not write to ``target`` meanwhile (the recovery scales it to 0 first).
    """
    extracted = Path(extracted).absolute()
    target = Path(target).absolute()
    if not target.is_dir() or not extracted.is_dir():
        raise _error(
            f"files restore: {target if not target.is_dir() else extracted} is not a directory."
        )
    nested = target in extracted.parents and extracted.parent != target
    if target == extracted or nested or extracted in target.parents:
        raise _error(
            f"files restore: {extracted} must be a sibling of {target} or a direct child of it."
        )
    leftovers = sorted(p.name for p in target.iterdir() if p.name.startswith(TRASH_PREFIX))
    if leftovers:
        raise _error(
            f"files restore: {target} holds {leftovers[0]} from an interrupted replace_tree: "
            "it has the previous files. Fix: move its children back into the target or delete "
            "it once you know you do not need them, then re-run."
        )
    trash = target / f"{TRASH_PREFIX}{uuid.uuid4().hex[:12]}"
    trash.mkdir(mode=0o700)
    try:
        for child in list(target.iterdir()):
            if child in (trash, extracted):
                continue
            os.rename(child, trash / child.name)
        same_fs = extracted.stat().st_dev == target.stat().st_dev
        for child in list(extracted.iterdir()):
            if same_fs:
                os.rename(child, target / child.name)
            else:
                _copy_entry(child, target / child.name)
    except OSError as exc:
        raise _error(
            f"files restore: replacing the content of {target} failed: {exc}. The previous "
            f"files are in {trash}, the rest of the new ones in {extracted}. Fix: correct the "
            "cause, move the trash's children back (or delete it) and re-run."
        ) from None
    shutil.rmtree(trash)
    if extracted.parent == target or not same_fs:
        shutil.rmtree(extracted)
    else:
        extracted.rmdir()


def _copy_entry(src: Path, dst: Path) -> None:
    if src.is_symlink():
        os.symlink(os.readlink(src), dst)
    elif src.is_dir():
        shutil.copytree(src, dst, symlinks=True, copy_function=shutil.copy2)
        shutil.copystat(src, dst)
    else:
        shutil.copy2(src, dst, follow_symlinks=False)
    if os.geteuid() == 0:
        st = src.lstat()
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)


# ============================================================================================
# Redis

# Redis (major, minor) -> newest RDB format it reads; a DUMP payload carries its RDB version
# and RESTORE refuses a newer one ("DUMP payload version or checksum are wrong").
_REDIS_RDB = [((7, 4), 12), ((7, 2), 11), ((7, 0), 10), ((5, 0), 9), ((4, 0), 8)]


def _rdb_version_of(version: str) -> int:
    parts = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
    for since, rdb in _REDIS_RDB:
        if parts >= since:
            return rdb
    return 7


def _db_client(client: redis.Redis, db: int) -> redis.Redis:
    """A client of the same server on logical database ``db``, returning bytes."""
    pool = client.connection_pool
    kwargs = dict(pool.connection_kwargs)
    kwargs["db"] = db
    kwargs["decode_responses"] = False  # DUMP payloads are binary
    return redis.Redis(connection_pool=redis.ConnectionPool(pool.connection_class, **kwargs))


def _keyspace_dbs(client: redis.Redis) -> set[int]:
    info: dict[str, Any] = client.info("keyspace")  # type: ignore[assignment]
    return {int(name[2:]) for name in info if name.startswith("db") and name[2:].isdigit()}


def replay_redis(
    source: redis.Redis, target: redis.Redis, *, batch: int = 500, delete_extra: bool = True
) -> dict[str, Any]:
    """Make ``target`` hold exactly ``source``'s keys, in every logical database.

    For each database of ``source`` (``INFO keyspace``): ``SCAN``, then pipelined ``PTTL`` +
    ``DUMP`` on the source and ``RESTORE key ttl payload REPLACE`` on the target (ttl 0: no
    expiry; keys that expired in between are skipped). Then, with ``delete_extra``, the target's
    keys absent from the source are removed with ``SCAN`` + ``UNLINK``, also in databases the
    source does not use. Only SCAN, DUMP, PTTL, EXISTS, RESTORE, UNLINK and INFO are used, so it
    works where FLUSHALL, FLUSHDB, KEYS and CONFIG are renamed away, with a password and with
    ``appendonly yes`` (every RESTORE goes to the AOF). Clients writing to the target meanwhile
    may add keys: stop them first (the recovery scales the API to 0).

    Returns ``{"restored", "deleted", "expired", "dbs": {db: {"restored", "deleted",
    "expired"}}}``. Raises :class:`RestoreError` when the target cannot read the source's DUMP
    payloads (its Redis is older than the source's RDB format) or a command fails.
    """
    where = _describe(target)
    try:
        src_version = str(source.info("server").get("redis_version", "0"))
        dst_version = str(target.info("server").get("redis_version", "0"))
        if _rdb_version_of(src_version) > _rdb_version_of(dst_version):
            raise _error(
                f"Redis restore into {where}: the scratch server is Redis {src_version} (RDB "
                f"format {_rdb_version_of(src_version)}) but the target is Redis {dst_version}, "
                "which cannot RESTORE its payloads. Fix: load the backup into a scratch "
                f"redis-server no newer than {dst_version} (scratch_redis_from_rdb picks the "
                "oldest that can read the RDB), or upgrade the target."
            )
        src_dbs = _keyspace_dbs(source)
        dbs = src_dbs | (_keyspace_dbs(target) if delete_extra else set())
        result: dict[str, Any] = {"restored": 0, "deleted": 0, "expired": 0, "dbs": {}}
        for db in sorted(dbs):
            src = _db_client(source, db)
            dst = _db_client(target, db)
            try:
                counts = {"restored": 0, "deleted": 0, "expired": 0}
                if db in src_dbs:
                    _copy_db(src, dst, batch, counts, db, where)
                if delete_extra:
                    _delete_extra(src, dst, batch, counts)
            finally:
                src.close()
                dst.close()
            result["dbs"][db] = counts
            for k in ("restored", "deleted", "expired"):
                result[k] += counts[k]
        return result
    except redis.RedisError as exc:
        raise _error(
            f"Redis restore into {where} failed: {exc}. Fix: check that both servers are "
            "reachable and the target's user may run SCAN, RESTORE and UNLINK."
        ) from None


def _describe(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    if "path" in kw:
        return f"unix:{kw['path']}"
    return f"redis://{kw.get('host', '?')}:{kw.get('port', '?')}"


def _batches(client: redis.Redis, batch: int) -> Iterator[list[bytes]]:
    keys: list[bytes] = []
    for key in client.scan_iter(count=batch):
        keys.append(key)
        if len(keys) >= batch:
            yield keys
            keys = []
    if keys:
        yield keys


def _copy_db(
    src: redis.Redis,
    dst: redis.Redis,
    batch: int,
    counts: dict[str, int],
    db: int,
    where: str,
) -> None:
    for keys in _batches(src, batch):
        read = src.pipeline(transaction=False)
        for key in keys:
            read.pttl(key)
            read.dump(key)
        replies = read.execute()
        write = dst.pipeline(transaction=False)
        written: list[bytes] = []
        for i, key in enumerate(keys):
            pttl, payload = int(replies[2 * i]), replies[2 * i + 1]
            # -1: no expiry (RESTORE's ttl 0). -2 or 0: expired (or deleted) since SCAN; 0 must
            # not become RESTORE's 0, which would make a dying key immortal.
            if payload is None or pttl == 0 or pttl < -1:
                counts["expired"] += 1
                continue
            write.restore(key, pttl if pttl > 0 else 0, payload, replace=True)
            written.append(key)
        for key, reply in zip(written, write.execute(raise_on_error=False), strict=True):
            if isinstance(reply, Exception):
                text = str(reply)
                fix = (
                    "the target Redis is older than the scratch server: use a scratch "
                    "redis-server no newer than the target"
                    if "payload version" in text
                    else "check the target's memory (maxmemory) and its user's permissions"
                )
                raise _error(
                    f"Redis restore into {where}: RESTORE of key {key[:200]!r} in db {db} "
                    f"failed: {text}. Fix: {fix}."
                )
            counts["restored"] += 1


def _delete_extra(src: redis.Redis, dst: redis.Redis, batch: int, counts: dict[str, int]) -> None:
    for keys in _batches(dst, batch):
        check = src.pipeline(transaction=False)
        for key in keys:
            check.exists(key)
        extra = [k for k, n in zip(keys, check.execute(), strict=True) if not n]
        if extra:
            counts["deleted"] += int(dst.unlink(*extra))  # type: ignore[arg-type]


def scratch_redis_from_rdb(
    rdb_chunks: Iterable[bytes],
    workdir: Path,
    *,
    extra_config: list[str] | None = None,
    binary: str | None = None,
) -> RedisServer:
    """Write the RDB to ``workdir/dump.rdb`` and start a scratch redis-server that loads it.

    The server runs from ``workdir/server`` on 127.0.0.1 without password nor persistence
    (``appendonly no``, so it loads the RDB and never rewrites it). Its binary is the *oldest*
    available redis-server that can read the RDB's format: a Redis 7 RDB needs Redis >= 7 (a
    Redis 6.2 refuses it), and the oldest keeps its DUMP payloads readable by as many targets as
    possible for :func:`replay_redis`. The file is complete (and a verifying stream checked)
    before the server starts. The caller stops the server.
    """
    workdir = Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    rdb = workdir / REDIS_DBFILENAME
    part = workdir / f".{REDIS_DBFILENAME}.part"
    try:
        with open(part, "wb") as fh:
            for chunk in rdb_chunks:
                fh.write(chunk)
        os.replace(part, rdb)
    finally:
        _close_iterator(rdb_chunks)
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    try:
        need = rdb_min_redis_version(rdb)
        if binary is None:
            binary = _oldest_redis_for(need)
        return RedisServer.start(
            workdir / "server", rdb_file=rdb, extra_config=extra_config, binary=binary
        )
    except LocalServerError as exc:
        raise _error(f"Redis restore: scratch server on {rdb} did not start: {exc}") from None


def _oldest_redis_for(need: tuple[int, int] | None) -> str:
    usable: list[tuple[tuple[int, ...], str]] = []
    seen: list[str] = []
    for candidate in redis_server_candidates():
        try:
            version = redis_binary_version(candidate)
        except (OSError, subprocess.CalledProcessError, LocalServerError):
            continue
        seen.append(f"{candidate} ({version})")
        parsed = tuple(int(p) for p in version.split("."))
        if need is None or parsed[:2] >= need:
            usable.append((parsed, candidate))
    if not usable:
        wanted = f" >= {need[0]}.{need[1]}" if need else ""
        raise _error(
            f"Redis restore: no redis-server{wanted} to load the backup (have: "
            f"{', '.join(seen) or 'none'}). Fix: install Redis 7 (apt-get install redis-server)."
        )
    return min(usable)[1]
