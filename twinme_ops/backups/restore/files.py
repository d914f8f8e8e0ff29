"""Files restore: extract a streamed tar safely, then make the live tree equal to it.

:func:`safe_extract` extracts into a staging directory (:func:`staging_dir_for`), refusing
anything that would write outside it, then :func:`replace_tree` makes the live tree equal to it
without replacing its root, which may be a mount point. Shared parts (:class:`RestoreError`) are
in :mod:`twinme_ops.backups.restore.common`.

No Dagster in this module: it is plain library code.
"""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twinme_ops.backups.restore.common import RestoreError, close_iterator, restore_error

COPY_CHUNK = 1 << 20


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
        raise restore_error(
            f"files restore: {dest} is not empty. Fix: extract into a new directory."
        )
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
                    raise restore_error(
                        f"files restore: cannot extract member {member.name!r} of {artifact} "
                        f"into {dest}: {exc.strerror or exc}. Fix: check the free space and "
                        "permissions of the destination."
                    ) from None
            reader.drain()
    except tarfile.TarError as exc:
        raise restore_error(f"files restore: {artifact} is not a readable tar: {exc}.") from None
    finally:
        close_iterator(chunks)
    # A link that was inside when made can lead outside once a later member replaced a link on
    # its path: refuse the tree (nothing was written through it, writes check their parents).
    for path, name in done.links:
        if not _inside(os.path.realpath(path), root):
            raise restore_error(
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
    return restore_error(
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
        raise restore_error(
            f"files restore: {target if not target.is_dir() else extracted} is not a directory."
        )
    nested = target in extracted.parents and extracted.parent != target
    if target == extracted or nested or extracted in target.parents:
        raise restore_error(
            f"files restore: {extracted} must be a sibling of {target} or a direct child of it."
        )
    leftovers = sorted(p.name for p in target.iterdir() if p.name.startswith(TRASH_PREFIX))
    if leftovers:
        raise restore_error(
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
        raise restore_error(
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
