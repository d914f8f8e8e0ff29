"""Point-in-time recovery of PostgreSQL inside recover_job, from either WAL archive engine.

With a ``target_time``, the PostgreSQL component does not come from a backup set:

1. preflight (:func:`check_point_target`): the archive is configured (``pitr/engine.py``: the
   local root, or with ``cloudnative-pg`` the Barman Cloud plugin's bucket), the target has a
   time zone, is not in the future, not before the oldest base backup ended, the archive is of
   the live server, and its WAL has no hole after the backup the restore would start from;
2. :func:`restore_postgres_to_point`: the engine rebuilds the server at that second on a scratch
   server (archiving off), ``pg_dump`` streams the live database's copy from it into a fresh
   database on the live server, and the same swap as a recovery from a set puts it in place (the
   old database kept as ``<db>__pre_recovery_<stamp>``). With CloudNativePG the live Cluster
   stays (its replicas, its timeline, its archive): only the database is replaced.

Rebuilding the whole Cluster instead (every database and role, or when the Cluster itself is
lost) is a new Cluster bootstrapped from the ObjectStore, by hand: docs/runbooks.md.
Redis and files have no point-in-time archive: they still come from a set (``set_id``).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from twinme_ops.backups.pitr.archive import WalArchive
from twinme_ops.backups.pitr.engine import pitr_engine
from twinme_ops.backups.pitr.layout import PitrError
from twinme_ops.backups.recovery import RecoveryError, RecoveryState, swap_in_dump
from twinme_ops.common.log import Log
from twinme_ops.servers.postgres import PostgresResource, snapshot_dump

LATEST = "latest"
RUNBOOK = "docs/runbooks.md, 'Recover PostgreSQL to a point in time'"


def parse_target_time(value: str) -> datetime | None:
    """``latest`` (None) or an ISO 8601 time with a time zone, else a RecoveryError."""
    if value.strip().lower() == LATEST:
        return None
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise RecoveryError(
            f"target_time {value!r} is not an ISO 8601 time. Nothing was touched. Fix: e.g. "
            "2026-12-05T09:14:00+01:00, or latest"
        ) from None
    if when.tzinfo is None:
        raise RecoveryError(
            f"target_time {value!r} has no time zone. Nothing was touched. Fix: add one (+01:00, Z)"
        )
    return when


def check_point_target(
    wal_archive: WalArchive,
    target_time: str,
    *,
    live_system_id: str | None = None,
    now: datetime | None = None,
) -> datetime | None:
    """Refuse a point-in-time recovery that cannot succeed, or that would swap another
    server's database in (``live_system_id``: the live server's, when it could be read); the
    target (None: latest)."""
    if wal_archive.check_engine() == "off":
        raise RecoveryError(
            "point-in-time recovery needs the WAL archive, and TWINME_WAL_ARCHIVE is off. "
            "Nothing was touched. Fix: recover from a set (leave target_time empty)"
        )
    target = parse_target_time(target_time)
    current = now or datetime.now(UTC)
    if target is not None and target > current:
        raise RecoveryError(
            f"target_time {target.isoformat()} is in the future (now {current.isoformat()}). "
            "Nothing was touched. Fix: choose a past time, or latest"
        )
    try:
        engine = pitr_engine(wal_archive)
        backups = engine.restore_points()
    except PitrError as exc:
        also = f" {WHOLE_CLUSTER}" if wal_archive.engine == "cloudnative-pg" else ""
        raise RecoveryError(f"{_sentence(exc)} Nothing was touched.{also}") from None
    if not backups:
        raise RecoveryError(
            f"the WAL archive at {engine.where} has no complete base backup: nothing to "
            f"recover from. Nothing was touched. Fix: {engine.backup_fix}, or recover from a "
            "set (leave target_time empty)"
        )
    oldest = backups[0]
    archived = {b.system_identifier for b in backups}
    if live_system_id is not None and live_system_id not in archived:
        raise RecoveryError(
            f"the WAL archive at {engine.where} is of another server (system identifier "
            f"{', '.join(sorted(archived))}; the live server's is {live_system_id}): its "
            "database would replace this one. Nothing was touched. Fix: point "
            f"{engine.setting} at this server's archive, or recover from a set"
        )
    if target is not None and target < oldest.finished:
        raise RecoveryError(
            f"target_time {target.isoformat()} is before the oldest base backup ended "
            f"({oldest.finished.isoformat()}): the archive cannot go back that far. Nothing "
            f"was touched. Fix: choose a time after {oldest.finished.isoformat()}, or recover "
            "from a set"
        )
    try:
        engine.check_restorable(target)
    except PitrError as exc:
        raise RecoveryError(f"{_sentence(exc)} Nothing was touched.") from None
    return target


# the other way back with CloudNativePG, named where recover_job cannot reach the archive
WHOLE_CLUSTER = (
    "With CloudNativePG, the whole Cluster can also be recovered as a new Cluster bootstrapped "
    f"from the ObjectStore ({RUNBOOK})."
)


def _sentence(exc: BaseException) -> str:
    text = str(exc).rstrip()
    return text if text.endswith(".") else text + "."


def live_system_identifier(pg: PostgresResource) -> str | None:
    """The live server's system identifier; None when it cannot be read (a role without the
    right, or a server not answering: the preflight's next check names that)."""
    import psycopg

    try:
        with pg.get_connection(autocommit=True) as conn:
            row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    except psycopg.Error:
        return None
    return str(row[0]) if row else None


def restore_postgres_to_point(
    wal_archive: WalArchive,
    state: RecoveryState,
    pg: PostgresResource,
    log: Log,
    *,
    timeout_s: float = 3600.0,
) -> None:
    """Restore the archive to ``state.target_time`` on a scratch server, then swap a copy of the
    live database's state at that point into the live server."""
    target = parse_target_time(state.target_time)
    engine = pitr_engine(wal_archive)
    workdir = Path(tempfile.mkdtemp(prefix="twinme-recover-pitr-"))
    workdir.chmod(0o755)  # the restored server may run as another user
    restored = None
    try:
        log.info(f"postgres: restoring the {engine.name} archive {engine.where} (scratch server)")
        restored = engine.restore(workdir / "data", target_time=target, timeout_s=timeout_s)
        facts = {
            "engine": engine.name,
            "target": state.target_time,
            "reached_time": restored.reached_time,
            "reached_lsn": restored.reached_lsn,
            "base_backup": restored.backup,
            "restore_s": restored.restore_s,
            "replay_s": restored.replay_s,
        }
        state.details["postgres"] = facts
        log.info(f"postgres: the archive restored to {state.target_time}: {facts}")
        scratch = PostgresResource(url=restored.server.url(pg.database_name))

        def dump() -> Iterator[bytes]:
            with snapshot_dump(scratch) as (chunks, _facts):
                yield from chunks

        swap_in_dump(state, pg, dump, log, what=state.source_label())
    finally:
        if restored is not None:
            restored.server.stop(mode="immediate")
        shutil.rmtree(workdir, ignore_errors=True)
