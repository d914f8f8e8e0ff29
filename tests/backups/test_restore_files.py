"""Files restore: safe tar extraction (malicious archives refused) and replace_tree."""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.compare import tree_of
from twinme_ops.backups.restore.common import RestoreError
from twinme_ops.backups.restore.files import (
    TRASH_PREFIX,
    replace_tree,
    safe_extract,
    staging_dir_for,
)
from twinme_ops.servers.files import FilesFacts, tar_stream


def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> list[bytes]:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    return [raw[i : i + 4096] for i in range(0, len(raw), 4096)]


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> Any:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = mode
    return info


def _file(name: str, data: bytes = b"pwned\n") -> tuple[tarfile.TarInfo, bytes]:
    return _member(name), data


MALICIOUS = {
    "dotdot": ([_file("ok.txt"), _file("../evil")], "../evil", "'..'"),
    "absolute": ([_file("/abs/evil")], "/abs/evil", "absolute path"),
    "symlink-absolute": (
        [(_member("passwd", tarfile.SYMTYPE, "/etc/passwd"), None), _file("passwd")],
        "passwd",
        "link to absolute path",
    ),
    "symlink-relative-outside": (
        [(_member("up", tarfile.SYMTYPE, ".."), None), _file("up/evil")],
        "up",
        "outside the destination",
    ),
    # each link is inside when made; the second retargets the first one's path outside
    "symlink-retargeted": (
        [
            (_member("z", tarfile.DIRTYPE, mode=0o755), None),
            (_member("x", tarfile.SYMTYPE, "z/y/.."), None),
            (_member("z/y", tarfile.SYMTYPE, ".."), None),
            _file("x/evil"),
        ],
        "x/evil",
        "outside the destination",
    ),
    "hardlink-outside": (
        [(_member("hl", tarfile.LNKTYPE, "../outside.txt"), None)],
        "hl",
        "outside the destination",
    ),
    "hardlink-absolute": (
        [(_member("hl", tarfile.LNKTYPE, "/etc/passwd"), None)],
        "hl",
        "link to absolute path",
    ),
    "device": ([(_member("null", tarfile.CHRTYPE), None)], "null", "device file"),
    "fifo": ([(_member("pipe", tarfile.FIFOTYPE), None)], "pipe", "fifo"),
}


@pytest.mark.parametrize("case", sorted(MALICIOUS))
def test_malicious_tar_is_refused_and_nothing_lands_outside(server_tmp: Path, case: str) -> None:
    members, culprit, why = MALICIOUS[case]
    (server_tmp / "outside.txt").write_text("outside\n")
    passwd = Path("/etc/passwd").read_bytes()
    dest = server_tmp / "dest"
    with pytest.raises(RestoreError) as info:
        safe_extract(_tar(*members), dest)
    message = str(info.value)
    assert f"unsafe member {culprit!r}" in message and why in message
    assert sorted(os.listdir(server_tmp)) == ["dest", "outside.txt"]
    assert (server_tmp / "outside.txt").read_text() == "outside\n"
    assert not Path("/abs").exists()
    assert Path("/etc/passwd").read_bytes() == passwd


def _make_tree(root: Path) -> None:
    (root / "uploads" / "avatars").mkdir(parents=True)
    (root / "exports").mkdir()
    (root / "private").mkdir(mode=0o750)
    (root / "uploads" / "avatars" / "a.png").write_bytes(os.urandom(3 << 20))
    (root / "uploads" / "empty").write_bytes(b"")
    for name, mode in (("secret.key", 0o600), ("run.sh", 0o755), ("readme.txt", 0o644)):
        path = root / "private" / name
        path.write_text(name)
        path.chmod(mode)
    (root / "exports" / "2026.csv").write_text("a,b\n")
    (root / "exports" / "latest.csv").symlink_to("2026.csv")
    (root / "avatars").symlink_to("uploads/avatars")
    os.link(root / "exports" / "2026.csv", root / "exports" / "hardlink.csv")
    for d in (root, root / "uploads", root / "uploads" / "avatars", root / "exports"):
        d.chmod(0o755)
    (root / "private").chmod(0o750)


def test_good_tar_round_trips_and_replace_tree_makes_target_equal(server_tmp: Path) -> None:
    src = server_tmp / "src"
    src.mkdir()
    _make_tree(src)
    facts = FilesFacts(root=str(src))
    staged = server_tmp / "staged"
    counts = safe_extract(tar_stream(src, facts), staged)
    assert counts == {
        "files": facts.files,
        "bytes": facts.bytes,
        "dirs": facts.dirs,
        "symlinks": facts.symlinks,
    }
    assert tree_of(staged) == tree_of(src)
    assert tree_of(staged)["private/secret.key"][1] == 0o600
    assert tree_of(staged)["private/run.sh"][1] == 0o755

    target = server_tmp / "target"
    (target / "uploads").mkdir(parents=True)
    (target / "uploads" / "stale.bin").write_bytes(b"left over")
    (target / "private").write_text("a file where the backup has a directory")
    (target / "exports").mkdir()
    (target / "exports" / "2026.csv").write_text("changed since the backup")
    (target / "exports" / "2026.csv").chmod(0o666)
    target_ino = target.stat().st_ino

    staging = staging_dir_for(target)
    assert staging.parent == target.parent and staging.stat().st_mode & 0o777 == 0o700
    staging.rmdir()
    counts = safe_extract(tar_stream(src, FilesFacts(root=str(src))), staging)
    replace_tree(staging, target)
    assert tree_of(target) == tree_of(src)
    assert target.stat().st_ino == target_ino  # the same directory (it may be a mount point)
    assert not staging.exists()
    assert sorted(os.listdir(server_tmp)) == ["src", "staged", "target"]


def test_replace_tree_stops_on_a_previous_interrupted_run(server_tmp: Path) -> None:
    target = server_tmp / "target"
    (target / f"{TRASH_PREFIX}abc").mkdir(parents=True)
    (target / "keep.txt").write_text("live")
    new = server_tmp / "new"
    new.mkdir()
    with pytest.raises(RestoreError, match="interrupted replace_tree"):
        replace_tree(new, target)
    assert (target / "keep.txt").read_text() == "live"


def test_extract_reads_the_stream_to_its_end_and_refuses_a_non_empty_dest(
    server_tmp: Path,
) -> None:
    chunks = _tar(_file("a.txt", b"a" * 100))

    def verified_at_the_end() -> Iterator[bytes]:
        yield from chunks
        raise ValueError("checksum mismatch for 2026-11-24/files.tar.zst")

    with pytest.raises(ValueError, match="checksum mismatch"):
        safe_extract(verified_at_the_end(), server_tmp / "dest")
    with pytest.raises(RestoreError, match="is not empty"):
        safe_extract(iter(chunks), server_tmp / "dest")
