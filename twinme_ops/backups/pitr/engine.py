"""The restore side of each WAL archive engine, behind one interface.

The point-in-time drill and ``recover_job``'s ``target_time`` read an archive through
:class:`PitrEngine` and never ask which engine wrote it:

- :class:`LocalEngine` (``TWINME_WAL_ARCHIVE=local``): PostgreSQL's own tools into the local
  archive root (``pg_receivewal`` + ``pg_basebackup``; restored by ``pg_combinebackup``);
- :class:`BarmanEngine` (``cloudnative-pg``, production): CloudNativePG's Barman Cloud plugin into
  the bucket (``barman-cloud-wal-archive`` + ``barman-cloud-backup``; restored by
  ``barman-cloud-restore`` + ``barman-cloud-wal-restore``).

Both return the same :class:`~.replay.PitrRestore`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from twinme_ops.backups.pitr.archive import WalArchive
from twinme_ops.backups.pitr.barman_cloud import BarmanBucket, is_segment
from twinme_ops.backups.pitr.barman_restore import restorable_backup, restore_from_bucket
from twinme_ops.backups.pitr.basebackup import list_backups
from twinme_ops.backups.pitr.layout import ArchiveLayout, pitr_error
from twinme_ops.backups.pitr.receiver import DEFAULT_SLOT, wait_for_flush
from twinme_ops.backups.pitr.replay import PitrRestore
from twinme_ops.backups.pitr.restore import restorable_chain, restore_to_point


@dataclass(frozen=True)
class RestorePoint:
    """A base backup a point-in-time restore can start from."""

    id: str
    finished: datetime  # every target time from this one on is past its consistent point
    system_identifier: str


class PitrEngine(Protocol):
    """What the drill and the recovery need of a WAL archive."""

    @property
    def name(self) -> str: ...  # the WalArchive engine: local or cloudnative-pg

    @property
    def where(self) -> str: ...  # the archive, for messages

    @property
    def setting(self) -> str: ...  # the variable that points at the archive

    @property
    def backup_fix(self) -> str: ...  # how to get a base backup taken

    @property
    def archiving_fix(self) -> str: ...  # what to check when commits are not archived

    def restore_points(self) -> list[RestorePoint]:
        """The completed base backups, oldest first."""
        ...

    def check_restorable(self, target_time: datetime | None) -> None:
        """Raise :class:`~.layout.PitrError` (with the fix) when a restore to ``target_time``
        (None: latest) cannot succeed: no backup before it, or a hole in the WAL after it."""
        ...

    def wait_archived(self, conn: Any, timeout_s: float) -> None:
        """Wait until every commit made on the source (``conn``) so far is archived."""
        ...

    def restore(
        self, data_dir: Path, *, target_time: datetime | None = None, timeout_s: float = 600.0
    ) -> PitrRestore:
        """Restore onto a scratch server in the fresh ``data_dir``, promoted."""
        ...


@dataclass(frozen=True)
class LocalEngine:
    """The local archive root: ``pg_receivewal`` on a slot, ``pg_basebackup`` copies."""

    layout: ArchiveLayout
    slot: str = DEFAULT_SLOT
    name: str = "local"
    setting: str = "TWINME_WAL_ARCHIVE_ROOT"
    backup_fix: str = "take one (take_base_backup) while the WAL receiver runs"
    archiving_fix: str = (
        "check the receiver (archive status, its log in receiver/) and that it is --synchronous"
    )

    @property
    def where(self) -> str:
        return str(self.layout.root)

    def restore_points(self) -> list[RestorePoint]:
        return [
            RestorePoint(b.id, b.finished, b.system_identifier) for b in list_backups(self.layout)
        ]

    def check_restorable(self, target_time: datetime | None) -> None:
        restorable_chain(self.layout, target_time)

    def wait_archived(self, conn: Any, timeout_s: float) -> None:
        wait_for_flush(conn, slot=self.slot, timeout_s=timeout_s)

    def restore(
        self, data_dir: Path, *, target_time: datetime | None = None, timeout_s: float = 600.0
    ) -> PitrRestore:
        return restore_to_point(self.layout, data_dir, target_time=target_time, timeout_s=timeout_s)


@dataclass(frozen=True)
class BarmanEngine:
    """barman-cloud's bucket, written by CloudNativePG's Barman Cloud plugin."""

    bucket: BarmanBucket
    parallel: int = 8  # WAL segments barman-cloud-wal-restore fetches at once
    poll_s: float = 1.0
    name: str = "cloudnative-pg"
    setting: str = "TWINME_WAL_ARCHIVE_DESTINATION"
    backup_fix: str = "take one (base_backup_job: a CloudNativePG Backup through the plugin)"
    archiving_fix: str = (
        "check the Cluster's WAL archiving (kubectl cnpg status twinme-db: its "
        "ContinuousArchiving condition; the cnpg_pg_stat_archiver metrics) and the plugin's "
        "sidecar log"
    )

    @property
    def where(self) -> str:
        return self.bucket.where

    def restore_points(self) -> list[RestorePoint]:
        return [
            RestorePoint(b.id, b.finished, b.system_identifier) for b in self.bucket.list_backups()
        ]

    def check_restorable(self, target_time: datetime | None) -> None:
        restorable_backup(self.bucket, target_time)

    def wait_archived(self, conn: Any, timeout_s: float) -> None:
        """Wait until the segment holding the source's current position is in the bucket
        (``archive_timeout`` switches to the next segment at the latest)."""
        segment = str(conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0])
        deadline = time.monotonic() + timeout_s
        while not any(is_segment(n) and n >= segment for n in self.bucket.wal_names()):
            if time.monotonic() >= deadline:
                raise pitr_error(
                    f"segment {segment} (the newest commits) is not in {self.where}/wals/ after "
                    f"{timeout_s:.0f} s: WAL archiving is behind or stopped. Fix: "
                    f"{self.archiving_fix}"
                )
            time.sleep(self.poll_s)

    def restore(
        self, data_dir: Path, *, target_time: datetime | None = None, timeout_s: float = 600.0
    ) -> PitrRestore:
        return restore_from_bucket(
            self.bucket,
            data_dir,
            target_time=target_time,
            timeout_s=timeout_s,
            parallel=self.parallel,
        )


def pitr_engine(wal_archive: WalArchive) -> PitrEngine:
    """The engine that restores what ``wal_archive`` archives; an error naming the fix when it
    archives nothing (``off``) or does not say where."""
    engine = wal_archive.check_engine()
    if engine == "off":
        raise pitr_error(
            "the WAL archive is off (TWINME_WAL_ARCHIVE=off): there is nothing to restore to a "
            "point in time. Fix: TWINME_WAL_ARCHIVE=local, or cloudnative-pg in production"
        )
    if engine == "local":
        return LocalEngine(wal_archive.layout(), wal_archive.slot)
    if not wal_archive.destination_path:
        raise pitr_error(
            "the cloudnative-pg WAL archive has no destination: nothing says which bucket the "
            "Barman Cloud plugin writes. Fix: set TWINME_WAL_ARCHIVE_DESTINATION to the "
            "ObjectStore's destinationPath (s3://twinme-backups/cloudnative-pg, "
            "deploy/postgres/20-objectstore.yaml)"
        )
    bucket = BarmanBucket.at(
        wal_archive.destination_path,
        wal_archive.server_name or wal_archive.cluster,
        wal_archive.barman_bin,
    )
    return BarmanEngine(bucket)
