"""Who may change the archive while it is read: restores share it, retention takes it alone.

A restore (the point-in-time drill, ``recover_job``'s ``target_time``) reads a chain of base
backups and then the WAL after it for as long as its replay lasts; retention deletes base backups
and WAL. An ``flock`` on ``<root>/.archive.lock`` keeps them apart: every reader holds it shared,
retention holds it exclusive while it deletes. The kernel drops the lock of a killed process, so a
``kill -9`` never leaves the archive locked. Waiting polls (``LOCK_NB``): a waiting retention never
holds back a restore that starts meanwhile, and both give up after their timeout, naming the fix.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator

from twinme_ops.backups.pitr.layout import ArchiveLayout, pitr_error

LOCK_FILE = ".archive.lock"
_POLL_S = 0.2


@contextlib.contextmanager
def archive_lock(
    layout: ArchiveLayout, *, exclusive: bool, timeout_s: float, purpose: str
) -> Iterator[None]:
    """Hold the archive's lock, shared (readers) or ``exclusive`` (retention), for the body.

    Raises :class:`~.layout.PitrError` when it is not free within ``timeout_s``; ``purpose``
    (e.g. ``"retention"``) names the waiter in that error.
    """
    layout.root.mkdir(parents=True, exist_ok=True)
    try:
        # read-only is enough for flock, and lets any user share the lock file
        fd = os.open(layout.root / LOCK_FILE, os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError as exc:
        raise pitr_error(
            f"{purpose}: cannot open the archive's lock file {layout.root / LOCK_FILE}: "
            f"{exc.strerror}. Fix: run as a user that may write to {layout.root}"
        ) from None
    try:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise pitr_error(
                        f"{purpose}: the WAL archive {layout.root} was busy for {timeout_s:.0f} s "
                        + (
                            "(a restore or the point-in-time drill is reading it). Fix: run "
                            "retention again once it has finished, or raise lock_timeout_s"
                            if exclusive
                            else "(retention is deleting old base backups and WAL). Fix: run "
                            "again once retention_job has finished"
                        )
                    ) from None
                time.sleep(_POLL_S)
        yield
    finally:
        os.close(fd)  # releases the lock
