"""Restore barman-cloud's bucket to a point in time onto a scratch server, and measure it.

Production's archive is written by CloudNativePG's Barman Cloud plugin (:mod:`.barman_cloud`):

1. list the completed backups, choose the newest one that ended before the target, and refuse
   a hole in the archived WAL after it (:func:`restorable_backup`), naming the segment;
2. ``barman-cloud-restore`` it into a fresh data directory;
3. give the copy a configuration of its own: the source's ``postgresql.conf``,
   ``postgresql.auto.conf`` and ``pg_hba.conf`` are kept beside as ``*.source`` (CloudNativePG's
   point at its certificates, sockets and ``/controller`` paths, and refuse connections without
   TLS), replaced by a scratch server's (trust on loopback), with the settings a standby must not
   set lower than its primary read from ``pg_control``;
4. recover with ``restore_command = barman-cloud-wal-restore`` (segments prefetched into this
   restore's own spool, each request logged), archiving off, and wait until promoted
   (:mod:`.replay`, as the local engine);
5. a restore to the latest point must have replayed into the newest archived segment: recovery
   ends quietly at a segment it cannot restore, and "latest" would be older than it says.

A segment that is missing or damaged is named, from the restore's own requests and the listing.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Set
from datetime import datetime
from pathlib import Path

from twinme_ops.backups.pitr.barman_cloud import (
    BarmanBackup,
    BarmanBucket,
    is_segment,
    newest_segment,
    wal_gap,
)
from twinme_ops.backups.pitr.layout import (
    format_lsn,
    parse_lsn,
    pitr_error,
    run_tool,
    segment_name,
    segment_start,
    user_ids,
)
from twinme_ops.backups.pitr.replay import (
    PitrRestore,
    backups_before,
    describe_target,
    fix_from_log,
    fresh_data_dir,
    measured,
    start_and_replay,
    write_recovery_settings,
)

ENGINE = "barman-cloud"
BEHIND_FIX = (
    "wait until the next WAL segment is in the bucket (archive_timeout: 60 s in "
    "deploy/postgres/30-cluster.yaml)"
)
# settings a hot standby may not set lower than its primary; pg_controldata's names for them
_PRIMARY_MINIMA = {
    "max_connections": "max_connections setting",
    "max_worker_processes": "max_worker_processes setting",
    "max_wal_senders": "max_wal_senders setting",
    "max_prepared_transactions": "max_prepared_xacts setting",
    "max_locks_per_transaction": "max_locks_per_xact setting",
}
_REPLACED = ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf")
_HBA = (
    "# twinme_ops scratch server: loopback only (the source's rules are in pg_hba.conf.source)\n"
    "local all all trust\nhost all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n"
)
_DAMAGED_LOG = re.compile(
    r"invalid (record|magic|resource manager|contrecord)|incorrect (resource manager|prev-link)"
    r"|unexpected pageaddr|checksum|has wrong size",
    re.IGNORECASE,
)


def choose_backup(
    bucket: BarmanBucket,
    backups: list[BarmanBackup],
    target_time: datetime | None = None,
    target_lsn: str | None = None,
) -> BarmanBackup:
    """The newest backup complete before the target (the newest for latest)."""
    fits = backups_before(
        backups,
        target_time,
        target_lsn,
        where=bucket.where,
        empty_fix="take one (base_backup_job: a CloudNativePG Backup; or the ScheduledBackup)",
    )
    return fits[-1]


def restorable_backup(
    bucket: BarmanBucket,
    target_time: datetime | None = None,
    target_lsn: str | None = None,
    *,
    backups: list[BarmanBackup] | None = None,
) -> tuple[BarmanBackup, set[str]]:
    """The backup to restore and the WAL listing; refused when the WAL after it has a hole."""
    backup = choose_backup(
        bucket, bucket.list_backups() if backups is None else backups, target_time, target_lsn
    )
    names = bucket.wal_names()
    gap = wal_gap(names, backup, bucket.where)
    if gap is not None and (target_lsn is None or parse_lsn(target_lsn) >= parse_lsn(gap[0])):
        raise pitr_error(
            f"the WAL archive has a gap after base backup {backup.id}: {gap[1]}. Nothing after "
            f"{gap[0]} can be restored from this backup. Fix: take a new base backup now "
            "(base_backup_job), then find why the object is missing (the plugin's sidecar log, "
            "the bucket's lifecycle rules)"
        )
    return backup, names


def _scratch_config(data_dir: Path, run_as: str | None) -> None:
    """The restored copy's own configuration (the source's kept as ``*.source``)."""
    proc = run_tool("pg_controldata", ["-D", str(data_dir)], run_as=run_as)
    control = dict(
        (key.strip(), value.strip())
        for key, _, value in (line.partition(":") for line in proc.stdout.splitlines())
    )
    for name in _REPLACED:
        if (data_dir / name).exists():
            (data_dir / name).rename(data_dir / f"{name}.source")
    lines = ["# twinme_ops scratch server restored from barman-cloud (the source's: *.source)"]
    for setting, key in _PRIMARY_MINIMA.items():
        if control.get(key, "").isdigit():
            lines.append(f"{setting} = {control[key]}")
    (data_dir / "postgresql.conf").write_text("\n".join(lines) + "\n")
    (data_dir / "postgresql.auto.conf").write_text("")
    (data_dir / "pg_hba.conf").write_text(_HBA)
    if not (data_dir / "pg_ident.conf").exists():
        (data_dir / "pg_ident.conf").write_text("")
    # CloudNativePG's pg_wal may be a link to its WAL volume: this copy keeps its own
    wal = data_dir / "pg_wal"
    if wal.is_symlink():
        wal.unlink()
    wal.mkdir(mode=0o700, exist_ok=True)
    if run_as:
        uid, gid = user_ids(run_as)
        for name in (*_REPLACED, "pg_ident.conf", "pg_wal"):
            os.chown(data_dir / name, uid, gid)


def _requests(path: Path) -> list[tuple[str, int]]:
    """What the restore_command was asked for, in order, and its exit codes."""
    try:
        text = path.read_text()
    except OSError:
        return []
    asked: list[tuple[str, int]] = []
    for line in text.splitlines():
        name, _, code = line.partition(" ")
        if code.strip().lstrip("-").isdigit():
            asked.append((name, int(code)))
    return asked


def damaged_segment(requests: Path, names: Set[str], where: str, log: str) -> str | None:
    """Which archived segment stopped the replay, and why (None: none did)."""
    newest = newest_segment(names)
    asked = [(name, code) for name, code in _requests(requests) if is_segment(name)]
    listed = {n.removesuffix(".partial") for n in names}
    for name, code in asked:
        if code != 0 and name in listed:
            return (
                f"segment {name} is in {where}/wals/ but barman-cloud-wal-restore could not "
                f"restore it (exit {code}; its error is in the server log): the object is "
                "damaged or unreadable"
            )
        if code != 0 and newest is not None and name < newest:
            return f"segment {name} is missing from {where}/wals/ (later ones are there)"
    restored = [name for name, code in asked if code == 0]
    if restored and _DAMAGED_LOG.search(log):
        return (
            f"PostgreSQL could not replay past segment {max(restored)} (restored from "
            f"{where}/wals/): its content is damaged"
        )
    return None


def _replayed_timeline(data_dir: Path, promoted: int) -> int:
    """The timeline recovery replayed: the parent in the promoted timeline's history file."""
    try:
        history = (data_dir / "pg_wal" / f"{promoted:08X}.history").read_text()
        last = [line for line in history.splitlines() if line.strip()][-1]
        return int(last.split()[0])
    except (OSError, IndexError, ValueError):
        return max(1, promoted - 1)


DAMAGED_FIX = (
    "take a new base backup now (base_backup_job), then find what damaged or removed the object "
    "(the plugin's sidecar log, the bucket's lifecycle rules); a target before it still restores"
)


def _fix(found: str) -> str:
    return f"{found}; nothing after it can be restored from this archive: {DAMAGED_FIX}"


def restore_from_bucket(
    bucket: BarmanBucket,
    data_dir: Path,
    *,
    target_time: datetime | None = None,
    target_lsn: str | None = None,
    inclusive: bool = True,
    timeout_s: float = 600.0,
    parallel: int = 8,
) -> PitrRestore:
    """Restore ``bucket`` into the fresh ``data_dir`` and start it, promoted (no target:
    latest). The caller owns the returned server and the directory's parent (the WAL spool and
    the request log sit beside ``data_dir``)."""
    if target_time is not None and target_lsn is not None:
        raise pitr_error("give target_time or target_lsn, not both")
    target = describe_target(target_time, target_lsn)
    backup, names = restorable_backup(bucket, target_time, target_lsn)
    run_as = bucket.run_as
    data_dir = fresh_data_dir(data_dir, run_as)
    beside = fresh_data_dir(data_dir.parent / f"{data_dir.name}.wal", run_as)
    requests = beside / "requests.log"
    began = time.monotonic()
    proc = bucket.run(
        "barman-cloud-restore",
        [bucket.destination, bucket.server_name, backup.id, str(data_dir)],
        timeout=timeout_s,
    )
    if proc.returncode != 0:
        raise pitr_error(bucket.failure("barman-cloud-restore", proc))
    _scratch_config(data_dir, run_as)
    write_recovery_settings(
        data_dir,
        bucket.restore_command(beside / "spool", requests, parallel),
        target_time=target_time,
        target_lsn=target_lsn,
        inclusive=inclusive,
        settings=None,
        run_as=run_as,
    )

    def diagnose(log: str) -> str:
        found = damaged_segment(requests, names, bucket.where, log)
        return _fix(found) if found else fix_from_log(log, target, behind=BEHIND_FIX)

    left = max(1.0, timeout_s - (time.monotonic() - began))
    replayed = start_and_replay(
        data_dir, run_as=run_as, timeout_s=left, target=target, diagnose=diagnose
    )
    newest = newest_segment(names)
    if target == "latest" and newest and replayed.reached_lsn <= segment_start(newest)[1]:
        log = replayed.server.log_file.read_text(errors="replace")
        replayed.server.stop(mode="immediate")
        tli = _replayed_timeline(data_dir, replayed.timeline)
        at = segment_name(tli, replayed.reached_lsn, backup.segment_size)
        found = damaged_segment(requests, names, bucket.where, log) or f"replay ended in {at}"
        raise pitr_error(
            f"the restore to latest stopped at {format_lsn(replayed.reached_lsn)} (segment {at}) "
            f"although {bucket.where} holds WAL up to segment {newest}: {found}. Nothing after "
            f"it can be restored from this archive. Fix: {DAMAGED_FIX}"
        )
    return measured(
        replayed,
        engine=ENGINE,
        backup=backup.id,
        chain=[backup.id],
        target=target,
        start_lsn=backup.begin_lsn,
        began=began,
    )
