"""File storage archive: what cannot be read fails loudly, with the path and the fix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.unprivileged import run_unprivileged
from twinme_ops.servers.files import FilesBackupError, FilesFacts, tar_stream


def _archive(root: Path) -> Callable[[], str]:
    def archive() -> str:
        b"".join(tar_stream(root, FilesFacts(root=str(root))))
        return "no error"

    return archive


def test_unreadable_file_names_the_file_and_the_fix(server_tmp: Path) -> None:
    root = server_tmp / "files"
    (root / "docs").mkdir(parents=True)
    (root / "docs" / "ok.txt").write_text("readable")
    locked = root / "docs" / "locked.bin"
    locked.write_bytes(b"secret upload")
    locked.chmod(0o000)
    for d in (root, root / "docs"):
        d.chmod(0o755)
    message = run_unprivileged(_archive(root))
    assert message.startswith("FilesBackupError: cannot read") and str(locked) in message
    assert "Fix: grant read access" in message


def test_unlistable_directory_names_the_directory_and_the_fix(server_tmp: Path) -> None:
    root = server_tmp / "files"
    hidden = root / "private"
    hidden.mkdir(parents=True)
    (hidden / "a.txt").write_text("a")
    root.chmod(0o755)
    hidden.chmod(0o700)
    message = run_unprivileged(_archive(root))
    assert message.startswith("FilesBackupError: cannot list") and str(hidden) in message
    assert "Fix:" in message


@pytest.mark.parametrize("kind", ["missing", "plain-file"])
def test_missing_or_not_a_directory_is_refused_before_archiving(tmp_path: Path, kind: str) -> None:
    bad = tmp_path / kind
    if kind == "plain-file":
        bad.write_text("x")
    expected = "does not exist" if kind == "missing" else "is not a directory"
    with pytest.raises(FilesBackupError, match=expected) as info:
        tar_stream(bad, FilesFacts(root=str(bad)))
    assert "Fix" in str(info.value)
