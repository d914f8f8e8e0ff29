"""File storage: a streamed tar of ``TWINME_FILES_DIR`` with relative paths, symlinks and modes.

``tarfile`` wants a file to write into while the store wants chunks to read; a producer thread
writes the tar into a bounded queue so memory stays flat whatever the size of the tree.
"""

from __future__ import annotations

import os
import queue
import stat
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
from pydantic import Field

CHUNK = 1 << 20
_DONE = object()


class FilesBackupError(RuntimeError):
    """The files directory cannot be archived; the message names the path and the fix."""


@dataclass
class FilesFacts:
    """What the archive holds; complete once its chunks are exhausted."""

    root: str
    files: int = 0
    bytes: int = 0
    dirs: int = 0
    symlinks: int = 0
    skipped: list[str] = field(default_factory=list)


class FileStorageResource(dg.ConfigurableResource):
    """The directory where the TwinMe API keeps uploaded files (``path``). Locally,
    ``defs/resources.py`` gives a subclass whose empty ``path`` means the sandbox's files."""

    path: str = Field(default="", description="TWINME_FILES_DIR. Empty, locally: the sandbox's.")

    def resolved_path(self) -> Path:
        if not self.path.strip():
            raise FilesBackupError(
                "no file storage to operate on. Fix: set TWINME_FILES_DIR to the API's storage "
                "directory"
            )
        return Path(self.path)


def check_files_dir(root: Path) -> None:
    """Fail early, with the fix, when the directory is missing or unreadable."""
    if not root.exists():
        raise FilesBackupError(
            f"files directory {root} does not exist. Fix: set TWINME_FILES_DIR to the API's "
            "storage directory (or create it)."
        )
    if not root.is_dir():
        raise FilesBackupError(f"TWINME_FILES_DIR={root} is not a directory. Fix: point it at one.")
    if not os.access(root, os.R_OK | os.X_OK):
        raise FilesBackupError(
            f"files directory {root} is not readable by this process (uid {os.geteuid()}). "
            "Fix: grant read access or run the backup as the storage owner."
        )


class _QueueWriter:
    """File-like sink that hands fixed-size chunks to a bounded queue."""

    def __init__(self, q: queue.Queue[object], cancelled: threading.Event) -> None:
        self.q = q
        self.cancelled = cancelled
        self.buf = bytearray()

    def write(self, data: bytes) -> int:
        if self.cancelled.is_set():
            raise FilesBackupError("archive cancelled by the consumer")
        self.buf += data
        while len(self.buf) >= CHUNK:
            self._put(bytes(self.buf[:CHUNK]))
            del self.buf[:CHUNK]
        return len(data)

    def _put(self, item: object) -> None:
        while not self.cancelled.is_set():
            try:
                self.q.put(item, timeout=0.5)
                return
            except queue.Full:
                continue
        raise FilesBackupError("archive cancelled by the consumer")

    def flush(self) -> None:
        if self.buf:
            self._put(bytes(self.buf))
            self.buf.clear()


def chunks_from_writer(produce: Callable[[_QueueWriter], None]) -> Iterator[bytes]:
    """Run ``produce(writer)`` in a thread and yield what it writes, re-raising its errors."""
    q: queue.Queue[object] = queue.Queue(maxsize=8)
    cancelled = threading.Event()
    writer = _QueueWriter(q, cancelled)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            produce(writer)
            writer.flush()
        except BaseException as exc:
            errors.append(exc)
        finally:
            while True:
                try:
                    q.put(_DONE, timeout=0.5)
                    break
                except queue.Full:
                    if cancelled.is_set():
                        break

    thread = threading.Thread(target=run, name="tar-producer", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                break
            assert isinstance(item, bytes)
            yield item
        thread.join()
        if errors:
            raise errors[0]
    finally:
        cancelled.set()
        thread.join(timeout=10)


def tar_stream(root: Path, facts: FilesFacts) -> Iterator[bytes]:
    """Chunks of an uncompressed PAX tar of ``root``; fills ``facts`` while streaming.

    Members are stored with paths relative to ``root``, in sorted order (stable archives),
    symlinks as links, and modes, owners and mtimes as on disk. Sockets and devices are skipped
    and listed in ``facts.skipped``.
    """
    check_files_dir(root)

    def produce(out: _QueueWriter) -> None:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            for dirpath, dirnames, filenames in os.walk(root, onerror=_raise):
                dirnames.sort()
                base = Path(dirpath)
                for name in sorted(filenames) + [d for d in dirnames if (base / d).is_symlink()]:
                    _add(tar, root, base / name, facts)
                # os.walk does not descend into symlinked dirs; they were archived as links above
                dirnames[:] = [d for d in dirnames if not (base / d).is_symlink()]
                for d in dirnames:
                    _add(tar, root, base / d, facts)
                # TarFile keeps every member's TarInfo (~1 KiB each), which a stream never
                # reads back: drop them, so that memory stays flat whatever the file count
                tar.members.clear()

    return chunks_from_writer(produce)


def _raise(exc: OSError) -> None:
    raise FilesBackupError(
        f"cannot list {exc.filename}: {exc.strerror}. Fix: grant read access to the backup user."
    )


def _add(tar: tarfile.TarFile, root: Path, path: Path, facts: FilesFacts) -> None:
    rel = path.relative_to(root).as_posix()
    try:
        st = path.lstat()
        if stat.S_ISREG(st.st_mode):
            info = tar.gettarinfo(str(path), arcname=rel)
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
            facts.files += 1
            facts.bytes += info.size
        elif stat.S_ISLNK(st.st_mode):
            tar.addfile(tar.gettarinfo(str(path), arcname=rel))
            facts.symlinks += 1
        elif stat.S_ISDIR(st.st_mode):
            tar.addfile(tar.gettarinfo(str(path), arcname=rel))
            facts.dirs += 1
        else:
            facts.skipped.append(rel)
    except PermissionError as exc:
        raise FilesBackupError(
            f"cannot read {path}: {exc.strerror}. Fix: grant read access to the backup user "
            "or exclude the file from TWINME_FILES_DIR."
        ) from None
    except FileNotFoundError:
        # deleted while we walked: a live tree changes; the archive reflects what was readable
        facts.skipped.append(rel)
