"""Base backups: ``pg_basebackup -Fp``, full or incremental, verified, labelled, never half-seen.

A backup is taken into ``base/.tmp-<stamp>/data`` while its writer holds a lock on
``base/.tmp-<stamp>/writer.lock``; ``pg_verifybackup`` checks it, ``label.json`` is written, and
only then is the folder renamed to ``base/<stamp>/``. A folder counts as a backup only under its
final name with a readable label: a killed run leaves a ``.tmp-`` folder whose lock nobody holds,
which :func:`sweep_partial_backups` removes. An incremental backup
(``--incremental=<parent>/data/backup_manifest``, the server summarizes WAL) names its parent and
its whole chain back to a full backup; ``pg_combinebackup`` needs every one of them.

Times in the label are the *server's* clock (commit timestamps, which recovery targets are
compared with, come from it): ``finished_at`` is read after the backup ended, so every target at
or after it is past the backup's consistent point.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from twinme_ops.backups.pitr.layout import (
    ArchiveLayout,
    parse_lsn,
    pitr_error,
    run_tool,
    split_password,
    tool_failure,
    user_ids,
)
from twinme_ops.backups.pitr.receiver import connect
from twinme_ops.common.log import Log
from twinme_ops.scratch.local import read_json_file, write_json_atomic

Kind = Literal["full", "incremental"]
LABEL = "label.json"
DATA = "data"
TMP_PREFIX = ".tmp-"
WRITER_LOCK = "writer.lock"
# a .tmp- folder without a lock file younger than this may be a writer that just created it
_TMP_GRACE_S = 60.0


@dataclass
class BaseBackup:
    """One complete base backup, as its ``label.json`` describes it."""

    id: str
    kind: Kind
    parent: str | None
    chain: list[str]  # from the full backup to this one
    start_lsn: str
    end_lsn: str
    timeline: int
    started_at: str  # server clock
    finished_at: str  # server clock, read after the backup ended
    system_identifier: str
    bytes: int
    seconds: float
    verified: bool
    path: Path = field(default=Path(), compare=False)

    @property
    def data_dir(self) -> Path:
        return self.path / DATA

    @property
    def manifest(self) -> Path:
        return self.data_dir / "backup_manifest"

    @property
    def finished(self) -> datetime:
        return datetime.fromisoformat(self.finished_at)

    def to_label(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "path"}


def _stamp() -> str:
    now = datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z"


def list_backups(layout: ArchiveLayout) -> list[BaseBackup]:
    """Every complete backup (final name, readable label, manifest present), oldest first."""
    out: list[BaseBackup] = []
    if not layout.base_dir.is_dir():
        return out
    for path in sorted(layout.base_dir.iterdir()):
        if path.name.startswith(".") or not path.is_dir():
            continue
        data = read_json_file(path / LABEL)
        if not data or not (path / DATA / "backup_manifest").exists():
            continue
        with contextlib.suppress(TypeError, ValueError):
            out.append(BaseBackup(**data, path=path))
    return out


def chain_of(layout: ArchiveLayout, backup: BaseBackup) -> list[BaseBackup]:
    """The backups ``pg_combinebackup`` needs for ``backup``: its full one first."""
    by_id = {b.id: b for b in list_backups(layout)}
    missing = [i for i in backup.chain if i not in by_id]
    if missing:
        raise pitr_error(
            f"base backup {backup.id} depends on {', '.join(missing)}, which is gone from "
            f"{layout.base_dir}: it cannot be restored. Fix: take a new full base backup"
        )
    return [by_id[i] for i in backup.chain]


def choose_kind(
    layout: ArchiveLayout, full_every_days: float, now: datetime | None = None
) -> tuple[Kind, BaseBackup | None, str]:
    """The next backup: full when there is none or the newest full one is older than
    ``full_every_days``, else incremental on the newest backup. (kind, parent, why)."""
    backups = list_backups(layout)
    fulls = [b for b in backups if b.kind == "full"]
    if not fulls:
        return "full", None, f"no full base backup in {layout.base_dir}"
    age = (now or datetime.now(UTC)) - fulls[-1].finished
    if age >= timedelta(days=full_every_days):
        days = age.total_seconds() / 86400
        return "full", None, f"the newest full one ({fulls[-1].id}) is {days:.1f} days old"
    newest = backups[-1]
    return "incremental", newest, f"the newest full one ({fulls[-1].id}) is recent"


def _size(path: Path) -> int:
    total = 0
    for f in path.rglob("*"):
        with contextlib.suppress(OSError):
            if f.is_file():
                total += f.stat().st_size
    return total


@contextlib.contextmanager
def _progress(log: Log | None, data: Path, interval_s: float) -> Iterator[None]:
    """Log how much ``data`` holds every ``interval_s`` while the body runs."""
    if log is None:
        yield
        return
    stop = threading.Event()
    began = time.monotonic()

    def report() -> None:
        while not stop.wait(interval_s):
            size = _size(data)
            rate = size / max(time.monotonic() - began, 1e-3) / 2**20
            log.info(f"base backup: {size / 2**20:.1f} MiB copied ({rate:.1f} MiB/s)")

    thread = threading.Thread(target=report, name="basebackup-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)


def sweep_partial_backups(layout: ArchiveLayout) -> list[str]:
    """Remove the ``.tmp-`` folders of killed backups (their lock is free); their names."""
    removed: list[str] = []
    if not layout.base_dir.is_dir():
        return removed
    for path in layout.base_dir.iterdir():
        if not path.name.startswith(TMP_PREFIX) or not path.is_dir():
            continue
        lock = path / WRITER_LOCK
        if not lock.exists():
            if time.time() - path.stat().st_mtime < _TMP_GRACE_S:
                continue
        else:
            with open(lock, "a") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed


def _server_facts(url: str) -> tuple[datetime, str]:
    with connect(url) as conn:
        row = conn.execute(
            "SELECT clock_timestamp(), system_identifier::text FROM pg_control_system()"
        ).fetchone()
    return row[0].astimezone(UTC), row[1]


def _fix_for(stderr: str, kind: Kind) -> str:
    text = stderr.lower()
    if "summar" in text:
        return (
            "the server has no WAL summaries back to the parent backup: set summarize_wal = on "
            "(prepare the source) and take a full backup first"
        )
    if "pg_hba.conf" in text and "replication" in text:
        return "allow replication connections for this role in pg_hba.conf (check_source)"
    if "max_wal_senders" in text or "too many clients" in text:
        return "raise max_wal_senders (a restart), or wait for the other backup to finish"
    if "permission denied" in text and "replication" in text:
        return "give the role REPLICATION (ensure_replication_role)"
    if kind == "incremental":
        return "check the parent backup (pg_verifybackup) or take a full backup"
    return "check that the server is reachable and accepts replication connections"


def take_base_backup(
    layout: ArchiveLayout,
    url: str,
    *,
    kind: Kind = "full",
    parent: str | None = None,
    max_rate: str | None = None,
    timeout_s: float | None = None,
    log: Log | None = None,
    progress_interval_s: float = 10.0,
) -> BaseBackup:
    """Take, verify and label one base backup of the server at ``url``; the backup.

    ``kind="incremental"`` builds on ``parent`` (default: the newest complete backup) and needs
    ``summarize_wal = on`` since that parent was taken. ``max_rate`` is pg_basebackup's ``-r``
    (e.g. ``"32M"``) to spare the server's disks. ``log`` receives the progress (the size copied
    so far, every ``progress_interval_s``) and each stage.
    """
    layout.create()
    swept = sweep_partial_backups(layout)
    if swept and log is not None:
        log.warning(f"removed the unfinished base backups of killed runs: {', '.join(swept)}")
    parent_backup: BaseBackup | None = None
    if kind == "incremental":
        backups = list_backups(layout)
        if parent is not None:
            backups = [b for b in backups if b.id == parent]
        if not backups:
            raise pitr_error(
                f"no {'base backup ' + parent if parent else 'complete base backup'} in "
                f"{layout.base_dir} to build an incremental backup on. Fix: take a full one first"
            )
        parent_backup = backups[-1]
    stamp = _stamp()
    tmp = layout.base_dir / f"{TMP_PREFIX}{stamp}"
    tmp.mkdir()
    if layout.run_as:
        os.chown(tmp, *user_ids(layout.run_as))
    with open(tmp / WRITER_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until the rename: a killed writer releases it
        try:
            with _progress(log, tmp / DATA, progress_interval_s):
                backup = _take(
                    layout, url, kind, parent_backup, stamp, tmp, max_rate, timeout_s, log
                )
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (tmp / WRITER_LOCK).unlink()
        final = layout.base_dir / stamp
        os.rename(tmp, final)
    backup.path = final
    return backup


def _take(
    layout: ArchiveLayout,
    url: str,
    kind: Kind,
    parent: BaseBackup | None,
    stamp: str,
    tmp: Path,
    max_rate: str | None,
    timeout_s: float | None,
    log: Log | None = None,
) -> BaseBackup:
    started, system_id = _server_facts(url)
    if parent is not None and parent.system_identifier != system_id:
        raise pitr_error(
            f"base backup {parent.id} comes from another cluster (system identifier "
            f"{parent.system_identifier}, the server's is {system_id}). Fix: take a full backup"
        )
    plain_url, env = split_password(url)
    args = ["-D", str(tmp / DATA), "-Fp", "-X", "stream", "-c", "fast", "--no-password"]
    args += ["-d", plain_url, f"--label=twinme_ops {stamp}"]
    if parent is not None:
        args.append(f"--incremental={parent.manifest}")
    if max_rate:
        args += ["-r", max_rate]
    if log is not None:
        on = f" on {parent.id}" if parent is not None else ""
        log.info(f"base backup {stamp}: pg_basebackup ({kind}{on}) started")
    began = time.monotonic()
    proc = run_tool("pg_basebackup", args, run_as=layout.run_as, env=env, timeout=timeout_s)
    if proc.returncode != 0:
        raise tool_failure("pg_basebackup", proc, _fix_for(proc.stderr, kind))
    seconds = time.monotonic() - began
    finished, _ = _server_facts(url)
    if log is not None:
        log.info(f"base backup {stamp}: copied in {seconds:.1f} s, pg_verifybackup started")
    verify = run_tool("pg_verifybackup", [str(tmp / DATA)], run_as=layout.run_as)
    if verify.returncode != 0:
        raise tool_failure(
            "pg_verifybackup", verify, "the copy is damaged: take the backup again (disk, network)"
        )
    manifest = json.loads((tmp / DATA / "backup_manifest").read_text())
    wal = manifest["WAL-Ranges"][-1]
    size = sum(f.stat().st_size for f in (tmp / DATA).rglob("*") if f.is_file())
    backup = BaseBackup(
        id=stamp,
        kind=kind,
        parent=parent.id if parent else None,
        chain=[*(parent.chain if parent else []), stamp],
        start_lsn=manifest["WAL-Ranges"][0]["Start-LSN"],
        end_lsn=wal["End-LSN"],
        timeline=int(wal["Timeline"]),
        started_at=started.isoformat(),
        finished_at=finished.isoformat(),
        system_identifier=system_id,
        bytes=size,
        seconds=round(seconds, 3),
        verified=True,
    )
    parse_lsn(backup.end_lsn)  # a malformed manifest fails here, not at restore time
    write_json_atomic(tmp / LABEL, backup.to_label())
    return backup
