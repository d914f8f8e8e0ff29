"""The archive's pure parts, without a server: LSNs and segment names, the password kept out of
argv, the restore_command's .partial fallback (run by a real shell), the WAL gap check and the
choice of a base-backup chain over real folders and labels."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from twinme_ops.backups.pitr.basebackup import LABEL, TMP_PREFIX, BaseBackup, list_backups
from twinme_ops.backups.pitr.layout import (
    ArchiveLayout,
    PitrError,
    format_lsn,
    parse_lsn,
    segment_name,
    segment_start,
    split_password,
)
from twinme_ops.backups.pitr.restore import choose_backup, restore_command
from twinme_ops.backups.pitr.walcheck import wal_gap
from twinme_ops.common.redact import redact

SEG = 16 << 20
T0 = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)


def test_lsns_and_segment_names() -> None:
    assert parse_lsn("0/16B3748") == 0x16B3748
    assert parse_lsn("1/0") == 1 << 32
    for value in (0, 0x16B3748, (3 << 32) | 0xFF000028):
        assert parse_lsn(format_lsn(value)) == value
    assert segment_name(1, parse_lsn("0/7000580")) == "000000010000000000000007"
    assert segment_name(2, parse_lsn("1/FF000028")) == "0000000200000001000000FF"
    assert segment_start("0000000200000001000000FF.partial") == (2, parse_lsn("1/FF000000"))
    with pytest.raises(ValueError):
        segment_start("00000002.history")


def test_the_password_goes_to_the_environment_never_to_argv() -> None:
    url, env = split_password("postgresql://archiver:s3cr%2Ft@db.internal:5432/app?sslmode=require")
    assert url == "postgresql://archiver@db.internal:5432/app?sslmode=require"
    assert env == {"PGPASSWORD": "s3cr/t"}
    assert "s3cr/t" not in redact("pg_receivewal: could not connect with s3cr/t")
    assert split_password("postgresql://postgres@127.0.0.1:5432/postgres")[1] == {}


def test_restore_command_falls_back_to_the_partial_segment(tmp_path: Path) -> None:
    layout = ArchiveLayout(tmp_path / "an archive", None)  # a space: the path must be quoted
    layout.wal_dir.mkdir(parents=True)
    segment = "000000010000000000000007"
    (layout.wal_dir / f"{segment}.partial").write_bytes(b"partial")
    out = tmp_path / "pg_wal"
    out.mkdir()

    def restore(name: str) -> int:
        command = restore_command(layout).replace("%f", name).replace("%p", f"{out}/RECOVERYXLOG")
        return subprocess.run(["sh", "-c", command], capture_output=True).returncode

    assert restore(segment) == 0
    assert (out / "RECOVERYXLOG").read_bytes() == b"partial"
    (layout.wal_dir / segment).write_bytes(b"complete")
    assert restore(segment) == 0
    assert (out / "RECOVERYXLOG").read_bytes() == b"complete"  # the complete one wins
    assert restore("000000010000000000000008") != 0  # the end of the archive
    assert restore("00000002.history") != 0


def _label(root: Path, stamp: str, finished: datetime, end_lsn: str, chain: list[str]) -> None:
    backup = BaseBackup(
        id=stamp,
        kind="full" if len(chain) == 1 else "incremental",
        parent=chain[-2] if len(chain) > 1 else None,
        chain=chain,
        start_lsn=end_lsn,
        end_lsn=end_lsn,
        timeline=1,
        started_at=(finished - timedelta(seconds=5)).isoformat(),
        finished_at=finished.isoformat(),
        system_identifier="7",
        bytes=1,
        seconds=1.0,
        verified=True,
    )
    (root / stamp / "data").mkdir(parents=True)
    (root / stamp / "data" / "backup_manifest").write_text("{}")
    (root / stamp / LABEL).write_text(json.dumps(backup.to_label()))


def _segments(layout: ArchiveLayout, *names: str) -> None:
    layout.wal_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        with open(layout.wal_dir / name, "wb") as fh:
            fh.truncate(SEG)  # sparse: the size tells the segment size


def test_a_gap_in_the_archive_after_the_backup_is_named(tmp_path: Path) -> None:
    layout = ArchiveLayout(tmp_path, None)
    _label(layout.base_dir, "b1", T0, "0/3000100", ["b1"])
    (backup,) = list_backups(layout)
    _segments(layout, "000000010000000000000002", "000000010000000000000003")
    _segments(layout, "000000010000000000000004.partial")
    assert wal_gap(layout, backup) is None
    (layout.wal_dir / "000000010000000000000003").unlink()
    assert wal_gap(layout, backup) == ("0/3000000", "segment 000000010000000000000003 is missing")
    (layout.wal_dir / "000000010000000000000004.partial").unlink()
    lsn, why = wal_gap(layout, backup) or ("", "")
    assert lsn == "0/3000000" and "archived nothing since the backup" in why


def test_the_chain_is_the_newest_complete_before_the_target(tmp_path: Path) -> None:
    layout = ArchiveLayout(tmp_path, None)
    _label(layout.base_dir, "a-full", T0, "0/3000100", ["a-full"])
    _label(layout.base_dir, "b-inc", T0 + timedelta(hours=1), "0/5000100", ["a-full", "b-inc"])
    _label(layout.base_dir, "c-full", T0 + timedelta(hours=2), "0/9000100", ["c-full"])
    (layout.base_dir / f"{TMP_PREFIX}d").mkdir()  # a killed backup: never chosen
    (layout.base_dir / "e-nolabel" / "data").mkdir(parents=True)

    def ids(**target: object) -> list[str]:
        return [b.id for b in choose_backup(layout, **target)]  # type: ignore[arg-type]

    assert ids() == ["c-full"]
    assert ids(target_time=T0 + timedelta(minutes=90)) == ["a-full", "b-inc"]
    assert ids(target_time=T0) == ["a-full"]
    assert ids(target_lsn="0/8FFFFFF") == ["a-full", "b-inc"]
    with pytest.raises(PitrError, match="before the first base backup was complete"):
        choose_backup(layout, target_time=T0 - timedelta(seconds=1))
    with pytest.raises(PitrError, match="has no time zone"):
        choose_backup(layout, target_time=datetime(2026, 12, 1, 3))
    # a chain whose full backup is gone falls back to an older complete one
    for path in (layout.base_dir / "a-full").rglob("*"):
        if path.is_file():
            path.unlink()
    assert ids(target_time=T0 + timedelta(minutes=150)) == ["c-full"]
    with pytest.raises(PitrError, match="depends on a-full, which is gone"):
        choose_backup(layout, target_time=T0 + timedelta(minutes=90))
