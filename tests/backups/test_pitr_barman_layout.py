"""barman-cloud's bucket layout without a server: which WAL a restore needs, which segment stopped
it, and what the restore_command and the errors show (never a credential)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.cnpg_operator import BARMAN_BIN
from twinme_ops.backups.pitr.archive import WalArchive
from twinme_ops.backups.pitr.barman_cloud import BarmanBackup, BarmanBucket, wal_gap
from twinme_ops.backups.pitr.barman_restore import damaged_segment
from twinme_ops.backups.pitr.engine import BarmanEngine, pitr_engine
from twinme_ops.backups.pitr.layout import PitrError

WHERE = "s3://twinme-backups/cloudnative-pg/twinme-db"
SECRET = "wJalrXUtnFEMI-barman-test-secret"


def _backup(
    begin: str = "000000010000000000000004", end: str = "000000010000000000000005"
) -> BarmanBackup:
    at = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
    return BarmanBackup(
        id="20261205T090000",
        begin_lsn="0/4000028",
        end_lsn="0/5000050",
        begin_wal=begin,
        end_wal=end,
        timeline=1,
        begin_time=at,
        end_time=at,
        system_identifier="7715853723914303304",
        segment_size=16 << 20,
    )


def _segments(tli: int, first: int, last: int) -> set[str]:
    return {f"{tli:08X}00000000{n:08X}" for n in range(first, last + 1)}


def test_a_complete_archive_across_a_failover_has_no_gap() -> None:
    # timeline 1 up to segment 9, whose end went to the archive as .partial at the switchover;
    # timeline 2 from segment 9 on, with its history file; WAL from before the backup is ignored
    names = _segments(1, 1, 8) | {"000000010000000000000009.partial", "00000002.history"}
    names |= _segments(2, 9, 12) | {"000000010000000000000004.00000028.backup"}
    assert wal_gap(names, _backup(), WHERE) is None


def test_a_hole_is_named_on_its_timeline() -> None:
    names = (_segments(1, 1, 8) | _segments(2, 9, 12)) - {"00000002000000000000000B"}
    lsn, text = wal_gap(names, _backup(), WHERE) or ("", "")
    assert lsn == "0/B000000"
    assert text == f"segment 00000002000000000000000B is missing from {WHERE}/wals/"
    names = _segments(1, 1, 12) - {"000000010000000000000004"}  # the backup's own first one
    assert (
        "segment 000000010000000000000004 is missing" in (wal_gap(names, _backup(), WHERE) or "")[1]
    )


def test_a_backup_whose_end_is_not_archived_yet_is_named() -> None:
    gap = wal_gap(_segments(1, 1, 4), _backup(), WHERE)
    assert gap is not None and "segment 000000010000000000000005 (base backup" in gap[1]


def test_the_segment_that_stopped_the_replay_is_named(tmp_path: Path) -> None:
    names = _segments(1, 4, 9)
    requests = tmp_path / "requests.log"
    # the normal end of a restore to latest: the segment after the newest does not exist
    requests.write_text(
        "00000002.history 1\n"
        + "".join(f"{n} 0\n" for n in sorted(_segments(1, 4, 9)))
        + "00000001000000000000000A 1\n00000002.history 1\n"
    )
    assert damaged_segment(requests, names, WHERE, "redo done at 0/9FFFFD8") is None
    # barman could not restore one the listing has (a corrupt object: exit 4)
    requests.write_text("000000010000000000000004 0\n000000010000000000000005 4\n")
    found = damaged_segment(requests, names, WHERE, "")
    assert found and "segment 000000010000000000000005 is in" in found and "exit 4" in found
    # one missing while later ones are there
    requests.write_text("000000010000000000000004 0\n000000010000000000000005 1\n")
    found = damaged_segment(requests, names - {"000000010000000000000005"}, WHERE, "")
    assert (
        found
        == f"segment 000000010000000000000005 is missing from {WHERE}/wals/ (later ones are there)"
    )
    # restored, but PostgreSQL could not replay it
    requests.write_text("000000010000000000000004 0\n000000010000000000000005 0\n")
    log = 'FATAL:  archive file "000000010000000000000005" has wrong size: 0 instead of 16777216'
    found = damaged_segment(requests, names, WHERE, log)
    assert found and "past segment 000000010000000000000005" in found and "damaged" in found


def test_the_restore_command_carries_no_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9000")
    bucket = BarmanBucket.at("s3://twinme-backups/cloudnative-pg/", "twinme-db", str(BARMAN_BIN))
    assert bucket.destination == "s3://twinme-backups/cloudnative-pg"
    command = bucket.restore_command(tmp_path / "100%" / "spool", tmp_path / "requests.log", 8)
    assert SECRET not in command
    assert "--endpoint-url http://127.0.0.1:9000" in command
    assert "--parallel 8" in command and "%f" in command and '"%p"' in command
    # a literal % in a path is doubled: PostgreSQL expands %-escapes in restore_command
    assert "100%%" in command and "100%/" not in command
    assert command.startswith(f"if [ -f {tmp_path}/100%%/spool/%f ]")


def test_a_failing_listing_names_the_fix_and_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDBARMANTEST")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    bucket = BarmanBucket.at("s3://twinme-backups/cloudnative-pg", "twinme-db", str(BARMAN_BIN))
    with pytest.raises(PitrError) as caught:
        bucket.list_backups()
    message = str(caught.value)
    assert "barman-cloud-backup-list failed" in message and "Fix:" in message
    assert "AWS_ENDPOINT_URL_S3" in message and SECRET not in message


def test_the_engine_follows_the_wal_archive_resource() -> None:
    with pytest.raises(PitrError, match="has no destination.*TWINME_WAL_ARCHIVE_DESTINATION"):
        pitr_engine(WalArchive(engine="cloudnative-pg"))
    with pytest.raises(PitrError, match="is not s3://bucket/prefix"):
        pitr_engine(WalArchive(engine="cloudnative-pg", destination_path="/var/backups"))
    with pytest.raises(PitrError, match="is off"):
        pitr_engine(WalArchive(engine="off"))
    engine = pitr_engine(
        WalArchive(engine="cloudnative-pg", destination_path="s3://b/cloudnative-pg")
    )
    # the server name defaults to the Cluster's, as the plugin's does
    assert isinstance(engine, BarmanEngine) and engine.where == "s3://b/cloudnative-pg/twinme-db"
    named = pitr_engine(
        WalArchive(
            engine="cloudnative-pg", destination_path="s3://b/p", server_name="twinme-db-pitr"
        )
    )
    assert named.where == "s3://b/p/twinme-db-pitr"
