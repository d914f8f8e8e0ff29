"""The local-directory backend of :class:`~twinme_ops.backups.store.base.BackupStore` (``file://``).

An artifact is written to ``<name>.tmp-<random>`` next to its final path, fsynced and renamed
into place (and the directory fsynced), so it appears complete or not at all; listings skip the
temporary names. The writer holds an exclusive ``flock`` on its temporary file until the rename,
so a temporary file whose lock another process can take was left by a killed writer and may be
removed (:meth:`LocalBackend.remove_partial`). A create-only write (the manifest) links its
complete temporary file to the final name: ``link`` fails on an existing name, where ``rename``
would silently replace it. ``OSError`` becomes a redacted
:class:`~twinme_ops.backups.store.base.StoreError` that says what to fix.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path

from twinme_ops.backups.store.backend import (
    Backend,
    BackendReader,
    BackendWriter,
    not_found,
    taken,
)
from twinme_ops.backups.store.base import StoredEntry, StoreError
from twinme_ops.common.redact import redact

logger = logging.getLogger(__name__)

_TMP_RE = re.compile(r"^(?P<name>.+)\.tmp-[0-9a-f]{16}$")
# a writer creates its temporary file, then locks it: a file younger than this may be in between
_PARTIAL_MIN_AGE_S = 2.0


def _fsync_dir(path: Path) -> None:
    dir_fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _os_error(exc: OSError, action: str, path: Path | str) -> StoreError:
    reason = exc.strerror or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        fix = "free disk space or point TWINME_BACKUP_URL at a larger volume"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "fix the directory's permissions or point TWINME_BACKUP_URL at a writable location"
    elif exc.errno == errno.ENOTDIR:
        fix = "a component of the path is a regular file: correct TWINME_BACKUP_URL"
    else:
        fix = "check TWINME_BACKUP_URL and the file system"
    return StoreError(redact(f"cannot {action} {path}: {reason}. Fix: {fix}."))


class _LocalWriter:
    """Writes ``<name>.tmp-<random>`` next to the target, then fsyncs and renames it into place."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._tmp = path.with_name(f"{path.name}.tmp-{secrets.token_hex(8)}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._tmp, "xb")  # noqa: SIM115 - closed by commit() / discard()
            # held until the rename: tells a live writer's temporary file from a killed one's
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        except OSError as exc:
            raise _os_error(exc, "create", self._tmp) from None

    def write(self, data: bytes | bytearray | memoryview, /) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise _os_error(exc, "write", self._tmp) from None

    def commit(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            # renamed while still locked: the temporary name never exists unlocked
            os.replace(self._tmp, self._path)
            self._file.close()
            # the rename itself must survive a crash, not only the data
            _fsync_dir(self._path.parent)
        except OSError as exc:
            self.discard()
            raise _os_error(exc, "write", self._path) from None

    def discard(self) -> None:
        with suppress(OSError):
            self._file.close()
        try:
            self._tmp.unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("could not remove %s: %s", self._tmp, exc.strerror)


class LocalBackend(Backend):
    """``<root>/<set_id>/<name>`` files; the listings and their rules come from :class:`Backend`."""

    def __init__(self, root: Path) -> None:
        super().__init__(f"file://{root}")
        self.root = root

    def _set_dir(self, set_id: str) -> Path:
        return self.root / set_id

    def check_writable(self) -> None:
        probe = self.root / f".twinme-probe-{secrets.token_hex(8)}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(probe, "xb") as f:
                f.write(b"probe")
                f.flush()
                os.fsync(f.fileno())
            probe.unlink()
        except OSError as exc:
            raise _os_error(exc, "write to the backup directory", self.root) from None

    def writer(self, set_id: str, name: str, size_hint: int | None) -> BackendWriter:
        return _LocalWriter(self._set_dir(set_id) / name)

    def create(self, set_id: str, name: str, data: bytes) -> None:
        path = self._set_dir(set_id) / name
        tmp = path.with_name(f"{name}.tmp-{secrets.token_hex(8)}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise taken(path) from None
            _fsync_dir(path.parent)
        except OSError as exc:
            raise _os_error(exc, "write", path) from None
        finally:
            with suppress(OSError):
                tmp.unlink()

    def _scan(self, path: Path) -> list[os.DirEntry[str]]:
        """The entries of a directory, none when it does not exist."""
        try:
            return list(os.scandir(path))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _os_error(exc, "list", path) from None

    def _set_ids(self) -> list[str]:
        return [e.name for e in self._scan(self.root) if e.is_dir()]

    def _entries(self, set_id: str, partial: bool) -> Iterator[StoredEntry]:
        path = self._set_dir(set_id)
        for e in self._scan(path):
            tmp = _TMP_RE.match(e.name)
            if tmp and not partial:
                continue
            try:
                if not e.is_file():
                    continue
                st = e.stat()
            except FileNotFoundError:
                continue  # renamed or removed since the listing
            except OSError as exc:
                raise _os_error(exc, "list", path) from None
            modified = datetime.fromtimestamp(st.st_mtime, UTC)
            if tmp:
                yield StoredEntry(tmp["name"], st.st_size, modified, True, e.name)
            else:
                yield StoredEntry(e.name, st.st_size, modified)

    def _remove_partial(self, set_id: str, entry: StoredEntry, min_age_s: float) -> bool:
        # the lock, not the age, tells a live writer: min_age_s (for S3) does not apply here
        path = self._set_dir(set_id) / entry.ref
        if not _TMP_RE.match(entry.ref):
            return False
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _os_error(exc, "inspect", path) from None
        try:
            st = os.fstat(fd)
            if time.time() - st.st_mtime < _PARTIAL_MIN_AGE_S:
                return False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # its writer is alive
            try:
                same = os.stat(path).st_ino == st.st_ino
            except FileNotFoundError:
                return False
            if same:
                os.unlink(path)
            return same
        except OSError as exc:
            raise _os_error(exc, "delete", path) from None
        finally:
            os.close(fd)

    def open_reader(self, set_id: str, name: str) -> BackendReader:
        path = self._set_dir(set_id) / name
        try:
            return open(path, "rb")  # noqa: SIM115 - closed by BackupStore.open_reader
        except FileNotFoundError:
            raise not_found(path) from None
        except OSError as exc:
            raise _os_error(exc, "read", path) from None

    def exists(self, set_id: str, name: str) -> bool:
        return (self._set_dir(set_id) / name).is_file()

    def delete(self, set_id: str, name: str) -> None:
        path = self._set_dir(set_id) / name
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise _os_error(exc, "delete", path) from None

    def delete_set(self, set_id: str, first: tuple[str, ...]) -> None:
        path = self._set_dir(set_id)
        try:
            if first and path.is_dir():
                for name in first:
                    (path / name).unlink(missing_ok=True)
                _fsync_dir(path)  # the set is incomplete on disk before its artifacts go
            shutil.rmtree(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _os_error(exc, "delete", path) from None
