"""PostgreSQL: the resource the operations act on, and a consistent streaming dump.

``pg_dump`` reads an exported snapshot, and the per-table row counts are taken in the very
transaction that exported it, so the counts a restore drill checks are exactly what the dump holds.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import dagster as dg
from pydantic import Field

from twinme_ops.common.libpq import libpq_fix
from twinme_ops.common.pgtools import pg_bin, pg_tool_version
from twinme_ops.common.redact import redact, register_secret, register_secrets_in

if TYPE_CHECKING:
    import psycopg

READ_CHUNK = 1 << 20
# how long a dump waits for a table that another session holds exclusively (ALTER TABLE, VACUUM
# FULL, a long migration) before it fails naming the table, instead of waiting for the job's
# max runtime
DEFAULT_LOCK_WAIT_TIMEOUT_S = 1800


class PostgresError(RuntimeError):
    """A PostgreSQL operation failed; the message names the server (redacted) and the fix."""


@dataclass
class DumpFacts:
    """What the dump contains, read from the same snapshot as the dump itself."""

    database: str
    server_version: str
    snapshot: str
    tables: dict[str, int] = field(default_factory=dict)
    database_size: int = 0
    # roles that row-level-security policies name: a restore elsewhere must create them first
    policy_roles: list[str] = field(default_factory=list)
    # grants on tables, views and sequences to roles other than their owner, per grantee
    table_grants: dict[str, int] = field(default_factory=dict)

    @property
    def total_rows(self) -> int:
        return sum(self.tables.values())


class PostgresResource(dg.ConfigurableResource):
    """The PostgreSQL server that TwinMe runs on (``url``). Locally, ``defs/resources.py`` gives
    a subclass whose empty ``url`` means the embedded sandbox, started on first use."""

    url: str = Field(
        default="",
        description="libpq URL (postgresql://user:pass@host:port/db), from DATABASE_URL. "
        "Empty, locally: the embedded sandbox.",
    )
    connect_timeout_s: int = Field(default=10, description="Connection timeout in seconds.")

    def resolved_url(self) -> str:
        """The URL to use."""
        if not self.url.strip():
            raise PostgresError(
                "no PostgreSQL to operate on. Fix: set DATABASE_URL "
                "(postgresql://user:password@host:5432/db)"
            )
        return self.url

    def running_url(self) -> str | None:
        """The URL to watch without starting anything (monitoring): the configured URL here; a
        local subclass returns None when its embedded server is not running."""
        return self.resolved_url()

    def _split(self) -> tuple[str, str | None]:
        """The URL without its password, and the password (registered as a secret).

        The raw value's secrets are registered before anything parses it, and a value that is not
        a PostgreSQL URL is refused with its password masked (issue 11: a missing colon printed
        it in the run's error and in Slack).
        """
        url = self.resolved_url()
        register_secrets_in(url)
        try:
            parts = urlsplit(url.strip())
        except ValueError:  # "Invalid IPv6 URL"
            raise PostgresError(malformed_url_message(url)) from None
        # "postgresql:/u:p@h" parse with the user info in the path, "u:p#s@h" in the fragment
        misplaced = "@" in parts.path + parts.query + parts.fragment
        if parts.scheme not in ("postgresql", "postgres") or misplaced:
            raise PostgresError(malformed_url_message(url))
        password = unquote(parts.password) if parts.password else None
        register_secret(password)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        if parts.username:
            netloc = f"{parts.username}@{netloc}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), password

    def describe(self) -> str:
        """Redacted URL, for logs and messages."""
        return redact(self._split()[0])

    @property
    def database_name(self) -> str:
        return urlsplit(self._split()[0]).path.lstrip("/") or "postgres"

    def tool_env(self) -> dict[str, str]:
        """Environment for libpq tools: the password travels in PGPASSWORD, never in argv."""
        _, password = self._split()
        env = dict(os.environ)
        env["PGCONNECT_TIMEOUT"] = str(self.connect_timeout_s)
        env.pop("PGPASSWORD", None)
        if password:
            env["PGPASSWORD"] = password
        return env

    def tool_dsn(self) -> str:
        """The URL to pass to libpq tools (no password in it)."""
        return self._split()[0]

    @contextmanager
    def get_connection(self, autocommit: bool = False) -> Iterator[psycopg.Connection[Any]]:
        """A psycopg connection; connection errors become a :class:`PostgresError` with a fix."""
        import psycopg

        dsn, password = self._split()
        try:
            conn = psycopg.connect(
                dsn,
                password=password,
                connect_timeout=self.connect_timeout_s,
                autocommit=autocommit,
                application_name="twinme_ops",
            )
        except psycopg.OperationalError as exc:
            raise PostgresError(connection_error_message(self.describe(), exc)) from None
        except psycopg.Error as exc:  # a conninfo libpq rejects: its message quotes the value
            raise PostgresError(
                f"PostgreSQL at {self.describe()} refused the connection settings: "
                f"{redact(exc)}. Fix: check DATABASE_URL"
            ) from None
        try:
            yield conn
        finally:
            conn.close()


def malformed_url_message(url: str) -> str:
    """Why ``DATABASE_URL`` was refused and how to write it; the password is masked."""
    return (
        f"DATABASE_URL is not a PostgreSQL URL: got {redact(url.strip())!r}. Fix: write it as "
        "postgresql://user:password@host:5432/dbname (percent-encode @ : / # ? and spaces in the "
        "password, e.g. @ as %40)"
    )


def connection_error_message(where: str, exc: BaseException) -> str:
    """An actionable, secret-free message for a failed connection."""
    detail = redact(str(exc)).strip().splitlines()
    first = detail[-1] if detail else type(exc).__name__
    text = " ".join(detail).lower()
    fix = libpq_fix(text, credentials="in DATABASE_URL", database="in DATABASE_URL") or (
        "check that the server is running and reachable (host, port, firewall)"
    )
    return f"cannot connect to PostgreSQL at {where}: {first}. Fix: {fix}."


def user_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str]]:
    """Every table holding rows (plain tables and partitions), outside the system schemas."""
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
        ORDER BY 1, 2
        """
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def table_grants(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Privileges granted on user relations to roles other than their owner, per grantee
    (``PUBLIC`` for grants to everyone): what a restore with its roles must bring back."""
    rows = conn.execute(
        """
        SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
               count(*)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
             LATERAL aclexplode(c.relacl) a
        WHERE c.relacl IS NOT NULL AND a.grantee <> c.relowner
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
        GROUP BY 1 ORDER BY 1
        """
    ).fetchall()
    return {str(r[0]): int(r[1]) for r in rows}


def count_rows(conn: psycopg.Connection[Any]) -> dict[str, int]:
    """Exact row count of every user table, keyed ``schema.table``."""
    from psycopg import sql

    counts: dict[str, int] = {}
    for schema, table in user_tables(conn):
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        row = conn.execute(query).fetchone()
        counts[f"{schema}.{table}"] = int(row[0]) if row else 0
    return counts


@contextmanager
def snapshot_dump(
    pg: PostgresResource,
    extra_args: list[str] | None = None,
    lock_wait_timeout_s: int = DEFAULT_LOCK_WAIT_TIMEOUT_S,
) -> Iterator[tuple[Iterator[bytes], DumpFacts]]:
    """Stream ``pg_dump --format=custom --compress=0`` of an exported snapshot.

    ``lock_wait_timeout_s``: a table locked by another session for longer than this fails the
    dump (and the row counts) with the table's name; 0 waits as long as it takes.
    Yields ``(chunks, facts)``. ``facts.tables`` is filled in a background thread from the same
    snapshot while the dump streams; it is complete once ``chunks`` is exhausted. The iterator
    raises :class:`PostgresError` if pg_dump fails, so a consumer never commits a truncated dump.
    """
    # autocommit, so that our explicit BEGIN sets the isolation level of the snapshot transaction
    import psycopg

    with pg.get_connection(autocommit=True) as conn:
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        if lock_wait_timeout_s > 0:  # the row counts read every table too
            conn.execute(
                "SELECT set_config('lock_timeout', %s, true)", (f"{lock_wait_timeout_s * 1000}",)
            )
        row = conn.execute(
            "SELECT pg_export_snapshot(), current_database(), "
            "current_setting('server_version'), pg_database_size(current_database())"
        ).fetchone()
        assert row is not None
        facts = DumpFacts(
            database=row[1], server_version=row[2], snapshot=row[0], database_size=int(row[3])
        )
        facts.policy_roles = [
            r[0]
            for r in conn.execute(
                "SELECT DISTINCT rolname FROM pg_policy p "
                "JOIN pg_roles r ON r.oid = ANY(p.polroles) ORDER BY 1"
            ).fetchall()
        ]
        facts.table_grants = table_grants(conn)
        count_error: list[BaseException] = []

        def count() -> None:
            try:
                facts.tables = count_rows(conn)
            except BaseException as exc:  # surfaced after the dump, with the dump's own error first
                count_error.append(exc)

        counter = threading.Thread(target=count, name="pg-row-counts", daemon=True)
        counter.start()
        cmd = [
            pg_bin("pg_dump"),
            "--format=custom",
            "--compress=0",
            f"--snapshot={facts.snapshot}",
            "--no-password",
            f"--dbname={pg.tool_dsn()}",
            *([f"--lock-wait-timeout={lock_wait_timeout_s * 1000}"] if lock_wait_timeout_s else []),
            *(extra_args or []),
        ]
        # a name of its own, so that an aborted dump's server session can be found and ended
        app_name = f"twinme_ops pg_dump {secrets.token_hex(4)}"
        env = {**pg.tool_env(), "PGAPPNAME": app_name}
        with tempfile.TemporaryFile() as stderr:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=env, bufsize=0)

            def chunks() -> Iterator[bytes]:
                assert proc.stdout is not None
                while True:
                    data = proc.stdout.read(READ_CHUNK)
                    if not data:
                        break
                    yield data
                code = proc.wait()
                counter.join()
                if code != 0:
                    stderr.seek(0)
                    raise PostgresError(
                        dump_error_message(pg, code, stderr.read(), lock_wait_timeout_s)
                    )
                if count_error:
                    raise PostgresError(
                        f"row counts from snapshot failed on {pg.describe()}: "
                        f"{redact(count_error[0])}"
                    )

            try:
                yield chunks(), facts
            except BaseException:
                # failed, or interrupted (a run terminated at its max runtime): stop the work on
                # the server too, or it waits on (and later takes) locks for nobody
                _abort_dump(pg, conn, counter, app_name)
                raise
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                counter.join(timeout=30)
                if not conn.closed and not counter.is_alive():
                    with suppress(psycopg.Error):
                        conn.execute("ROLLBACK")


def _abort_dump(
    pg: PostgresResource, conn: psycopg.Connection[Any], counter: threading.Thread, app_name: str
) -> None:
    """End an unfinished dump's work on the server: pg_dump's session and the row counts.

    Killing pg_dump (the caller's ``finally``) is not enough: a killed client's server session
    lives on while it waits (on a lock, say), as the server only notices the client is gone when
    it next writes to it. So the session is terminated by its application name (a role may end
    its own sessions), and the row-count query is cancelled.
    """
    import psycopg

    with suppress(psycopg.Error, PostgresError), pg.get_connection(autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (app_name,),
        )
    if counter.is_alive():
        with suppress(psycopg.Error):
            conn.cancel_safe(timeout=10)


def _exclusively_locked(pg: PostgresResource, tables: list[str]) -> list[str]:
    """Which of ``tables`` another session holds with a lock a dump must wait for (best effort:
    ``[]`` when that cannot be read)."""
    import psycopg

    try:
        with pg.get_connection(autocommit=True) as conn:
            rows = conn.execute(
                "SELECT DISTINCT format('%%I.%%I', n.nspname, c.relname) FROM pg_locks l "
                "JOIN pg_class c ON c.oid = l.relation "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE l.locktype = 'relation' AND l.granted AND l.mode = 'AccessExclusiveLock' "
                "AND l.relation = ANY(%s::regclass[]) ORDER BY 1",
                (tables,),
            ).fetchall()
    except (psycopg.Error, PostgresError):
        return []
    return [r[0] for r in rows]


def dump_error_message(
    pg: PostgresResource, code: int, stderr: bytes, lock_wait_timeout_s: int = 0
) -> str:
    """pg_dump's own words (redacted), with the fix an operator needs."""
    lines = [ln for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    detail = redact(" | ".join(lines[-3:])) or "no error output"
    text = detail.lower()
    went_away = ("server closed the connection", "terminat", "connection to server")
    locking = re.search(r"LOCK TABLE (.+?) IN ACCESS SHARE MODE", detail)
    # pg_dump implements --lock-wait-timeout with statement_timeout on its LOCK TABLE statement
    if locking and ("statement timeout" in text or "lock timeout" in text):
        tables = [t.strip() for t in locking.group(1).split(",")]
        held = _exclusively_locked(pg, tables)
        table = ", ".join(held or tables[:5]) + ("" if held or len(tables) <= 5 else ", ...")
        return (
            f"pg_dump of {pg.describe()} waited {lock_wait_timeout_s} s for a lock on {table} "
            "that another session holds (ALTER TABLE, VACUUM FULL, a long migration). Fix: find "
            "it with SELECT pid, state, query FROM pg_stat_activity WHERE pid IN (SELECT pid FROM "
            f"pg_locks WHERE relation = '{(held or tables)[0]}'::regclass AND granted), let it "
            "finish, then re-run the partition (lock_wait_timeout_s in the run config waits "
            "longer)."
        )
    if any(marker in text for marker in went_away):
        fix = "the server went away during the dump: check its logs and availability, then re-run"
    elif known := libpq_fix(text, credentials="in DATABASE_URL"):
        fix = known
    elif "server version mismatch" in text:
        fix = "use a pg_dump at least as new as the server (reinstall twinme_ops)"
    else:
        fix = "check the server and the error above, then re-run the partition"
    return f"pg_dump of {pg.describe()} failed (exit {code}): {detail}. Fix: {fix}."


def pg_dump_version() -> str:
    """Version string of the pg_dump used for backups."""
    return pg_tool_version("pg_dump")
