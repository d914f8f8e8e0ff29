"""The point-in-time drill: prove every night that the WAL archive restores to any second.

Either engine (``pitr/engine.py``: the local archive root, or barman-cloud's bucket written by
CloudNativePG's Barman Cloud plugin), on scratch servers, never on the source:

1. commit a heartbeat on the source, read every heartbeat, and wait until the archive holds them
   (the receiver's flush, or the segment in the bucket): from then on each of them must come
   back;
2. pick a random target inside the recovery window, between the oldest base backup's end and the
   newest heartbeat (``seed`` makes it repeatable), restore the newest chain before it plus the
   WAL to that second, and check the heartbeats: every one at or before the target present, none
   after. The nightly logical set nearest the target inside the window (if any) lends its row
   counts: every table it lists must exist, and the counts are reported beside the set's;
3. commit one more heartbeat and restore to the latest point at once: every flushed heartbeat
   must be there, and the achieved RPO is the newest heartbeat written minus the newest present.

Restored servers run with archiving off (``pitr/replay.py``). Each scratch server is stopped
and its directory removed, whatever happens.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twinme_ops.backups.manifest import MANIFEST, parse_manifest
from twinme_ops.backups.pitr.drill_record import DrillRecord, write_drill_record
from twinme_ops.backups.pitr.engine import LocalEngine, PitrEngine
from twinme_ops.backups.pitr.heartbeat import (
    Heartbeat,
    ensure_heartbeat_table,
    read_heartbeats,
    verify_heartbeats,
    write_heartbeat,
)
from twinme_ops.backups.pitr.layout import ArchiveLayout, PitrError
from twinme_ops.backups.pitr.lock import archive_lock
from twinme_ops.backups.pitr.receiver import DEFAULT_SLOT
from twinme_ops.backups.pitr.replay import PitrRestore
from twinme_ops.backups.store.base import BackupStore
from twinme_ops.common.log import DEFAULT_LOG, Log
from twinme_ops.common.redact import redact
from twinme_ops.servers.postgres import PostgresResource


class PitrDrillError(RuntimeError):
    """A check of the drill failed: the message names what and the fix."""


@dataclass
class PitrDrillResult:
    """What one point-in-time drill found; ``to_metadata()`` is what the run records."""

    passed: bool = False
    reason: str = ""
    checked_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    seed: int | None = None
    engine: str = ""
    window_start: str | None = None
    window_end: str | None = None
    target: str | None = None
    restores: dict[str, dict[str, Any]] = field(default_factory=dict)
    heartbeats: dict[str, dict[str, Any]] = field(default_factory=dict)
    rpo_s: float | None = None
    logical_set: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def rto_s(self) -> float | None:
        """The latest restore's total time (what a recovery to now would take)."""
        latest = self.restores.get("latest")
        return float(latest["total_s"]) if latest else None

    def to_metadata(self) -> dict[str, Any]:
        return {**asdict(self), "rto_s": self.rto_s}


def _figures(restore: PitrRestore) -> dict[str, Any]:
    keys = ("engine", "backup", "chain", "target", "restore_s", "replay_s", "total_s")
    facts = {k: getattr(restore, k) for k in keys}
    return {
        **facts,
        "wal_bytes": restore.wal_bytes,
        "replay_mb_s": restore.replay_mb_s,
        "reached_lsn": restore.reached_lsn,
        "reached_time": restore.reached_time,
        "archive_mode": _show(restore, "archive_mode"),
    }


def _show(restore: PitrRestore, name: str) -> str:
    from psycopg import sql

    with restore.server.connect() as conn:
        return str(conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()[0])


def random_target(start: datetime, end: datetime, seed: int | None) -> datetime:
    """A uniformly random instant in [start, end] (repeatable for a given seed)."""
    return start + (end - start) * random.Random(seed).random()


def nearest_logical_set(
    store: BackupStore | None, start: datetime, end: datetime, target: datetime
) -> tuple[str, dict[str, Any]] | None:
    """The complete set created inside [start, end] nearest to ``target``, with its manifest."""
    if store is None:
        return None
    found: list[tuple[float, str, dict[str, Any]]] = []
    for set_id in store.list_sets():
        try:
            manifest = parse_manifest(store.get_bytes(set_id, MANIFEST))
            created = datetime.fromisoformat(str(manifest["created_at"]))
        except Exception:  # no manifest: not a backup
            continue
        if start <= created <= end and "postgres" in manifest.get("artifacts", {}):
            found.append((abs((created - target).total_seconds()), set_id, manifest))
    if not found:
        return None
    _, set_id, manifest = min(found, key=lambda f: f[0])
    return set_id, manifest


def compare_row_counts(
    restore: PitrRestore, dbname: str, set_id: str, manifest: dict[str, Any], target: datetime
) -> dict[str, Any]:
    """Every table the set's manifest lists exists on the restored server; counts side by side.

    The set was dumped at another moment than the target, so counts may differ by the writes in
    between: they are reported, and only a missing table fails the drill."""
    from psycopg import sql

    source = manifest["artifacts"]["postgres"]["source"]
    created = datetime.fromisoformat(str(manifest["created_at"]))
    facts: dict[str, Any] = {
        "set_id": set_id,
        "set_created_at": created.isoformat(),
        "seconds_from_target": round((target - created).total_seconds(), 3),
    }
    if source.get("database") != dbname:
        facts["note"] = f"the set dumped database {source.get('database')!r}, not {dbname!r}"
        return facts
    tables: dict[str, dict[str, int | None]] = {}
    with restore.server.connect(dbname) as conn:
        for table, expected in sorted(source["tables"].items()):
            exists = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0]
            got: int | None = None
            if exists is not None:
                schema, name = table.split(".", 1)
                query = sql.SQL("SELECT count(*) FROM {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(name)
                )
                got = int(conn.execute(query).fetchone()[0])
            tables[table] = {"set": int(expected), "restored": got}
    missing = [t for t, c in tables.items() if c["restored"] is None]
    facts.update(
        tables=len(tables),
        equal=sum(c["set"] == c["restored"] for c in tables.values()),
        missing=missing,
        counts=tables,
    )
    if missing:
        raise PitrDrillError(
            f"tables listed by set {set_id} are missing from the restore to {target.isoformat()}:"
            f" {', '.join(missing[:5])}. Fix: check the WAL archive covers the set's time"
        )
    return facts


def _record(layout: ArchiveLayout, result: PitrDrillResult, log: Log) -> None:
    """Note in the archive what this passing drill restored from: retention keeps it."""
    target, latest = result.restores["target"], result.restores["latest"]
    record = DrillRecord(
        passed_at=result.checked_at,
        target=result.target or "",
        backup=str(target["backup"]),
        chain=list(target["chain"]),
        reached_lsn=str(target["reached_lsn"]),
        latest_backup=str(latest["backup"]),
        latest_chain=list(latest["chain"]),
        seed=result.seed,
    )
    try:
        write_drill_record(layout, record)
    except OSError as exc:  # the drill passed; only retention's extra protection is missing
        log.warning(f"could not record the passing drill in {layout.root}: {redact(exc)}")


class _Scratch:
    """One restore onto a scratch server under ``root``, always stopped and removed."""

    def __init__(self, root: Path, name: str) -> None:
        self.where = root / name
        self.restore: PitrRestore | None = None

    def close(self) -> None:
        if self.restore is not None:
            self.restore.server.stop(mode="immediate")
        shutil.rmtree(self.where, ignore_errors=True)


def _heartbeat_now(pg: PostgresResource) -> list[Heartbeat]:
    with pg.get_connection(autocommit=True) as conn:
        ensure_heartbeat_table(conn)
        write_heartbeat(conn)
        return read_heartbeats(conn)


def run_pitr_drill(
    archive: ArchiveLayout | PitrEngine,
    pg: PostgresResource,
    *,
    seed: int | None = None,
    store: BackupStore | None = None,
    slot: str = DEFAULT_SLOT,
    rpo_alert_s: float = 120.0,
    workdir: Path | None = None,
    flush_timeout_s: float = 60.0,
    timeout_s: float = 600.0,
    log: Log = DEFAULT_LOG,
) -> PitrDrillResult:
    """Run the drill against the source ``pg`` archived by ``archive`` (an engine, or the local
    archive root, whose receiver uses ``slot``); never raises for a failed check (the result
    says why), only for a bug."""
    engine = LocalEngine(archive, slot) if isinstance(archive, ArchiveLayout) else archive
    result = PitrDrillResult(seed=seed, engine=engine.name)
    root = Path(tempfile.mkdtemp(prefix="twinme-pitr-drill-", dir=workdir))
    root.chmod(0o755)  # the restored server may run as another user
    # the local archive: retention deletes nothing while the drill lists and restores backups
    layout = engine.layout if isinstance(engine, LocalEngine) else None
    try:
        with (
            archive_lock(layout, exclusive=False, timeout_s=timeout_s, purpose="PITR drill")
            if layout
            else contextlib.nullcontext()
        ):
            _drill(engine, pg, result, root, store, rpo_alert_s, flush_timeout_s, timeout_s, log)
    except (PitrError, PitrDrillError, OSError) as exc:
        result.failures.append(redact(exc))
    except Exception as exc:  # a server that would not answer: the drill failed, say so
        result.failures.append(f"{type(exc).__name__}: {redact(exc)}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    result.passed = not result.failures
    if result.passed:
        latest = result.restores["latest"]
        result.reason = (
            f"restored to {result.target} and to latest ({latest['total_s']} s, "
            f"{latest['replay_mb_s']} MB/s replay); heartbeats exact; achieved RPO "
            f"{result.rpo_s} s"
        )
        if layout:
            _record(layout, result, log)
    else:
        result.reason = result.failures[0]
    return result


def _drill(
    engine: PitrEngine,
    pg: PostgresResource,
    result: PitrDrillResult,
    root: Path,
    store: BackupStore | None,
    rpo_alert_s: float,
    flush_timeout_s: float,
    timeout_s: float,
    log: Log,
) -> None:
    dbname = pg.database_name
    known = _heartbeat_now(pg)
    with pg.get_connection(autocommit=True) as conn:
        engine.wait_archived(conn, timeout_s=flush_timeout_s)
    backups = engine.restore_points()
    if not backups:
        raise PitrDrillError(
            f"no complete base backup in {engine.where}: nothing to drill. Fix: {engine.backup_fix}"
        )
    start, end = backups[0].finished, known[-1].at
    result.window_start, result.window_end = start.isoformat(), end.isoformat()
    if end <= start:
        raise PitrDrillError(
            f"no heartbeat after the oldest base backup ended ({start.isoformat()}): the recovery "
            "window is empty. Fix: check the clocks, then re-run once a heartbeat is archived"
        )
    target = random_target(start, end, result.seed)
    result.target = target.isoformat()
    log.info(f"point-in-time drill: window {start.isoformat()} .. {end.isoformat()}")

    scratch = _Scratch(root, "target")
    try:
        scratch.restore = engine.restore(
            scratch.where / "data", target_time=target, timeout_s=timeout_s
        )
        result.restores["target"] = _figures(scratch.restore)
        with scratch.restore.server.connect(dbname) as conn:
            check = verify_heartbeats(conn, known, target)
        result.heartbeats["target"] = check.to_metadata()
        if not check.ok:
            result.failures.append(
                f"the restore to {target.isoformat()} is not exact: {check.present}/"
                f"{check.expected} heartbeats at or before it present (first missing "
                f"{check.first_missing}), {check.unexpected} after it came back (first "
                f"{check.first_unexpected}). Fix: check the archive's WAL and the clocks"
            )
        nearest = nearest_logical_set(store, start, end, target)
        if nearest is None:
            result.logical_set = {
                "note": "no nightly logical set was created inside the recovery window: row "
                "counts not compared"
            }
        else:
            result.logical_set = compare_row_counts(scratch.restore, dbname, *nearest, target)
        log.info(f"restore to {target.isoformat()}: {result.restores['target']}")
    finally:
        scratch.close()

    written = _heartbeat_now(pg)  # no wait: what the archive holds right now is the RPO
    scratch = _Scratch(root, "latest")
    try:
        scratch.restore = engine.restore(scratch.where / "data", timeout_s=timeout_s)
        result.restores["latest"] = _figures(scratch.restore)
        with scratch.restore.server.connect(dbname) as conn:
            check = verify_heartbeats(conn, known, None)
        result.heartbeats["latest"] = check.to_metadata()
        present = check.newest_present
        lost = written[-1].at - datetime.fromisoformat(present) if present else None
        result.rpo_s = round(max(0.0, lost.total_seconds()), 3) if lost is not None else None
        result.heartbeats["latest"]["newest_written"] = written[-1].at.isoformat()
        if not check.ok:
            result.failures.append(
                f"the restore to latest lacks {check.expected - check.present} of "
                f"{check.expected} archived heartbeats (first missing {check.first_missing}). "
                f"Fix: {engine.archiving_fix}, and the WAL in {engine.where}"
            )
        if result.rpo_s is None or result.rpo_s > rpo_alert_s:
            result.failures.append(
                f"achieved RPO {result.rpo_s} s is above {rpo_alert_s:.0f} s: the newest "
                f"heartbeat written ({written[-1].at.isoformat()}) is not in the archive. Fix: "
                f"{engine.archiving_fix}"
            )
        log.info(f"restore to latest: {result.restores['latest']}, RPO {result.rpo_s} s")
    finally:
        scratch.close()
