"""BackupStore against a real directory and a real S3 protocol endpoint (moto server)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import boto3
import pytest

from twinme_ops.backups.store.base import MIB, ArtifactNotFoundError, BackupStore, StoreError
from twinme_ops.backups.store.s3_upload import MAX_PART_SIZE, MAX_PARTS, SPOOL_MAX_SIZE, part_size

TIB = 1 << 40


def stream(total: int, piece: int = 700_001, seed: int = 0) -> Iterator[bytes]:
    """Deterministic pseudo-random data in uneven pieces that straddle part boundaries."""
    block = hashlib.sha256(str(seed).encode()).digest() * 4096  # 128 KiB
    produced = 0
    counter = 0
    while produced < total:
        n = min(piece, total - produced)
        prefix = counter.to_bytes(8, "big")
        data = (prefix + block * (n // len(block) + 1))[:n]
        yield data
        produced += n
        counter += 1


def test_multipart_round_trip(store: BackupStore) -> None:
    total = 12 * MIB + 12345
    expected = hashlib.sha256()
    store.check_writable()
    with store.open_writer("2024-06-01", "postgres.dump.zst", size_hint=None) as writer:
        for piece in stream(total):
            expected.update(piece)
            writer.write(piece)
    assert store.list_artifacts("2024-06-01") == {"postgres.dump.zst": total}
    got = hashlib.sha256()
    size = 0
    with store.open_reader("2024-06-01", "postgres.dump.zst") as reader:
        while block := reader.read(1 << 20):
            got.update(block)
            size += len(block)
    assert size == total
    assert got.hexdigest() == expected.hexdigest()


def test_s3_multipart_is_used_and_encrypted(s3_bucket: str) -> None:
    store = BackupStore(url=f"s3://{s3_bucket}/p", multipart_part_size_mb=5)
    with store.open_writer("s1", "big.bin") as writer:
        for piece in stream(12 * MIB):
            writer.write(piece)
    store.put_bytes("s1", "manifest.json", b"{}")
    client = boto3.client("s3")
    big = client.head_object(Bucket=s3_bucket, Key="p/s1/big.bin")
    small = client.head_object(Bucket=s3_bucket, Key="p/s1/manifest.json")
    # a multipart ETag ends with "-<number of parts>": 5 + 5 + 2 MiB
    assert big["ETag"].strip('"').endswith("-3")
    assert "-" not in small["ETag"]
    assert big["ServerSideEncryption"] == "AES256"
    assert small["ServerSideEncryption"] == "AES256"


def test_s3_without_sse(s3_bucket: str) -> None:
    store = BackupStore(url=f"s3://{s3_bucket}", server_side_encryption="")
    store.put_bytes("s1", "a", b"x")
    head = boto3.client("s3").head_object(Bucket=s3_bucket, Key="s1/a")
    # moto, unlike AWS (which encrypts everything by default), records exactly what was asked
    assert "ServerSideEncryption" not in head
    assert store.list_sets() == ["s1"]


def test_small_put_get_and_exists(store: BackupStore) -> None:
    manifest = b'{"set_id": "2024-06-01", "artifacts": []}\n'
    assert not store.exists("2024-06-01", "manifest.json")
    store.put_bytes("2024-06-01", "manifest.json", manifest)
    assert store.exists("2024-06-01", "manifest.json")
    assert store.get_bytes("2024-06-01", "manifest.json") == manifest
    # overwrite is atomic and complete
    store.put_bytes("2024-06-01", "manifest.json", b"{}")
    assert store.get_bytes("2024-06-01", "manifest.json") == b"{}"
    store.put_bytes("2024-06-01", "empty", b"")
    assert store.get_bytes("2024-06-01", "empty") == b""
    store.delete("2024-06-01", "manifest.json")
    store.delete("2024-06-01", "manifest.json")  # absent: no error
    assert not store.exists("2024-06-01", "manifest.json")
    with pytest.raises(ArtifactNotFoundError, match="not found"):
        store.get_bytes("2024-06-01", "manifest.json")


def test_exactly_one_part_is_a_single_put(store: BackupStore) -> None:
    data = os.urandom(5 * MIB)
    store.put_bytes("s", "five", data)
    assert store.get_bytes("s", "five") == data


def test_listing_and_delete_set(store: BackupStore) -> None:
    assert store.list_sets() == []
    assert store.list_artifacts("nope") == {}
    for set_id in ("2024-06-02", "2024-06-01", "2024-06-03"):
        store.put_bytes(set_id, "redis.rdb.zst", b"r" * 10)
        store.put_bytes(set_id, "manifest.json", b"{}")
    store.put_bytes("2024-06-01", "files.tar.zst", b"f" * 1234)
    assert store.list_sets() == ["2024-06-01", "2024-06-02", "2024-06-03"]
    assert store.list_artifacts("2024-06-01") == {
        "files.tar.zst": 1234,
        "manifest.json": 2,
        "redis.rdb.zst": 10,
    }
    store.delete_set("2024-06-01")
    store.delete_set("2024-06-01")  # absent: no error
    assert store.list_sets() == ["2024-06-02", "2024-06-03"]
    assert store.list_artifacts("2024-06-01") == {}
    assert store.list_artifacts("2024-06-02") == {"manifest.json": 2, "redis.rdb.zst": 10}


def test_s3_delete_set_paginates(s3_bucket: str) -> None:
    store = BackupStore(url=f"s3://{s3_bucket}/deep/prefix")
    client = boto3.client("s3")
    # more than one ListObjectsV2 page and one DeleteObjects batch (1,000 keys each)
    for i in range(1105):
        client.put_object(Bucket=s3_bucket, Key=f"deep/prefix/old/a{i:05d}", Body=b"x")
    store.put_bytes("keep", "manifest.json", b"{}")
    assert len(store.list_artifacts("old")) == 1105
    store.delete_set("old")
    assert store.list_sets() == ["keep"]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket).get("Contents", [])]
    assert keys == ["deep/prefix/keep/manifest.json"]


def test_failed_writer_leaves_nothing(store: BackupStore, tmp_path: Path) -> None:
    def source() -> Iterator[bytes]:
        yield from stream(11 * MIB)  # two full 5 MiB parts are uploaded before the failure
        raise RuntimeError("pg_dump exited with status 1")

    with (
        pytest.raises(RuntimeError, match="pg_dump exited"),
        store.open_writer("2024-06-01", "postgres.dump.zst") as writer,
    ):
        for piece in source():
            writer.write(piece)
    assert store.list_artifacts("2024-06-01") == {}
    assert not store.exists("2024-06-01", "postgres.dump.zst")
    if store.url.startswith("file://"):
        assert os.listdir(tmp_path / "backups" / "2024-06-01") == []
    else:
        bucket = store.url.removeprefix("s3://").split("/")[0]
        client = boto3.client("s3")
        assert client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
        assert client.list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_failed_small_writer_leaves_nothing(store: BackupStore) -> None:
    with pytest.raises(KeyError), store.open_writer("s", "manifest.json") as writer:
        writer.write(b"{")
        raise KeyError("boom")
    assert store.list_artifacts("s") == {}


def test_s3_failure_during_upload_aborts(s3_bucket: str) -> None:
    store = BackupStore(url=f"s3://{s3_bucket}/p", multipart_part_size_mb=5)
    client = boto3.client("s3")
    with pytest.raises(StoreError), store.open_writer("s", "big") as writer:
        for piece in stream(6 * MIB):
            writer.write(piece)
        # the upload's target disappears under the writer: the real S3 error path
        uploads = client.list_multipart_uploads(Bucket=s3_bucket)["Uploads"]
        assert len(uploads) == 1
        client.abort_multipart_upload(
            Bucket=s3_bucket, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"]
        )
        for piece in stream(6 * MIB):
            writer.write(piece)
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    assert not store.exists("s", "big")


def test_s3_missing_bucket_is_actionable(s3_server: str) -> None:
    store = BackupStore(url="s3://twinme-no-such-bucket/prefix")
    with pytest.raises(StoreError) as info:
        store.check_writable()
    assert str(info.value) == (
        "S3 bucket 'twinme-no-such-bucket' does not exist or is not reachable "
        "(TWINME_BACKUP_URL=s3://twinme-no-such-bucket/prefix). Fix: create the bucket or "
        "correct TWINME_BACKUP_URL."
    )
    with pytest.raises(StoreError, match="does not exist"):
        store.put_bytes("s", "manifest.json", b"{}")
    with pytest.raises(StoreError, match="does not exist"):
        store.list_sets()


def test_s3_error_messages_do_not_leak_credentials(s3_server: str) -> None:
    store = BackupStore(url="s3://twinme-no-such-bucket/prefix")
    with pytest.raises(StoreError) as info:
        store.put_bytes("s", "x", b"1")
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in str(info.value)
    assert os.environ["AWS_ACCESS_KEY_ID"] not in str(info.value)


def test_local_unwritable_root_is_actionable(tmp_path: Path) -> None:
    # chmod does not stop root; a path below a regular file fails for everyone
    (tmp_path / "afile").write_text("not a directory")
    store = BackupStore(url=f"file://{tmp_path}/afile/backups")
    with pytest.raises(StoreError) as info:
        store.check_writable()
    message = str(info.value)
    assert str(tmp_path / "afile" / "backups") in message
    assert "TWINME_BACKUP_URL" in message
    with pytest.raises(StoreError, match="TWINME_BACKUP_URL"):
        store.put_bytes("s", "manifest.json", b"{}")


def test_local_layout_and_temp_files_hidden(tmp_path: Path) -> None:
    store = BackupStore(url=f"file://{tmp_path}/b")
    store.check_writable()
    assert os.listdir(tmp_path / "b") == []  # the probe is gone
    with store.open_writer("s1", "a.zst") as writer:
        writer.write(b"abc")
        temp = os.listdir(tmp_path / "b" / "s1")
        assert len(temp) == 1 and temp[0].startswith("a.zst.tmp-")
        assert store.list_artifacts("s1") == {}
    assert (tmp_path / "b" / "s1" / "a.zst").read_bytes() == b"abc"
    assert store.describe() == f"file://{tmp_path}/b"
    assert store.set_location("s1") == f"file://{tmp_path}/b/s1"


def test_relative_file_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = BackupStore(url="file://.twinme/backups")
    store.put_bytes("s", "a", b"1")
    assert (tmp_path / ".twinme" / "backups" / "s" / "a").read_bytes() == b"1"


def test_s3_describe(s3_bucket: str) -> None:
    store = BackupStore(url=f"s3://{s3_bucket}/nightly/")
    assert store.describe() == f"s3://{s3_bucket}/nightly"
    assert store.set_location("2024-06-01") == f"s3://{s3_bucket}/nightly/2024-06-01"
    store.check_writable()


@pytest.mark.parametrize(
    "url", ["/var/backups", "gs://bucket/x", "s3://", "s3://user:pw@bucket/x", "file://", "x"]
)
def test_bad_url(url: str) -> None:
    with pytest.raises(ValueError) as info:
        BackupStore(url=url).describe()
    assert "TWINME_BACKUP_URL" in str(info.value)
    assert "file:///" in str(info.value) and "s3://bucket/prefix" in str(info.value)
    assert "pw" not in str(info.value)


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "a..b", "x.tmp-0123456789abcdef"])
def test_bad_names(store: BackupStore, name: str) -> None:
    with pytest.raises(ValueError):
        store.put_bytes("s", name, b"")
    with pytest.raises(ValueError):
        store.list_artifacts(name)


def test_part_size_covers_a_terabyte_with_bounded_parts() -> None:
    for base in (5 * MIB, 16 * MIB):
        sizes = [part_size(n, base) for n in range(1, MAX_PARTS + 1)]
        assert sum(sizes) >= TIB
        assert sizes[0] == base
        assert max(sizes) <= MAX_PART_SIZE
        assert sizes == sorted(sizes)
        # a 1 TiB stream needs parts of at most 1 GiB (on disk, not in RAM)
        covered = 0
        for n, size in enumerate(sizes, start=1):
            covered += size
            if covered >= TIB:
                assert size <= 1 << 30
                assert n < MAX_PARTS
                break
    # below the S3 minimum the base is raised to 5 MiB
    assert part_size(1, 1) == 5 * MIB
    # a known size selects larger parts so that it fits in the first 1,000 parts
    hint = 200 << 30
    assert sum(part_size(n, 16 * MIB, hint) for n in range(1, 1001)) >= hint
    assert part_size(1, 16 * MIB, 1000) == 16 * MIB
    with pytest.raises(ValueError):
        part_size(MAX_PARTS + 1, 5 * MIB)
    with pytest.raises(ValueError):
        part_size(0, 5 * MIB)


def test_s3_large_parts_are_spooled_to_disk(s3_bucket: str) -> None:
    """Parts above 16 MiB live in a temporary file, so RAM stays bounded by SPOOL_MAX_SIZE."""
    store = BackupStore(url=f"s3://{s3_bucket}/p", multipart_part_size_mb=20)
    expected = hashlib.sha256()
    with store.open_writer("s", "big") as writer:
        for piece in stream(SPOOL_MAX_SIZE - MIB):
            expected.update(piece)
            writer.write(piece)
        assert not getattr(writer, "spooled_to_disk")  # noqa: B009
        for piece in stream(2 * MIB, seed=1):
            expected.update(piece)
            writer.write(piece)
        assert getattr(writer, "spooled_to_disk")  # noqa: B009
    with store.open_reader("s", "big") as reader:
        assert hashlib.sha256(reader.read()).hexdigest() == expected.hexdigest()


def test_create_bytes_refuses_an_existing_name(store: BackupStore) -> None:
    from twinme_ops.backups.store.base import ArtifactExistsError

    store.create_bytes("2026-01-05", "manifest.json", b"first")
    with pytest.raises(ArtifactExistsError, match="already exists"):
        store.create_bytes("2026-01-05", "manifest.json", b"second")
    assert store.get_bytes("2026-01-05", "manifest.json") == b"first"
    # a refused create leaves no temporary file or upload behind
    assert [e.name for e in store.list_entries("2026-01-05")] == ["manifest.json"]


def test_create_bytes_race_has_exactly_one_winner(store: BackupStore) -> None:
    """Eight threads create the same name at once: one wins, seven are refused, none overwrites."""
    import threading

    from twinme_ops.backups.store.base import ArtifactExistsError

    barrier = threading.Barrier(8)
    outcome: dict[int, str] = {}

    def writer(i: int) -> None:
        barrier.wait()
        try:
            store.create_bytes("2026-01-05", "manifest.json", f"writer {i}".encode())
            outcome[i] = "won"
        except ArtifactExistsError:
            outcome[i] = "refused"

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, o in outcome.items() if o == "won"]
    assert len(winners) == 1 and len(outcome) == 8
    assert store.get_bytes("2026-01-05", "manifest.json") == f"writer {winners[0]}".encode()


_KILLED_WRITER = """
import sys, time
from twinme_ops.backups.store.base import BackupStore
store = BackupStore(url=sys.argv[1])
with store.open_writer("2026-01-05", "postgres.run1.dump.zst") as w:
    w.write(b"x" * 1000)
    print("writing", flush=True)
    time.sleep(600)
"""


def test_local_partial_write_of_a_killed_writer_is_told_from_a_live_one(tmp_path: Path) -> None:
    """A live writer's temporary file is never removed; a SIGKILLed writer's is."""
    import signal
    import subprocess
    import sys
    import time

    store = BackupStore(url=f"file://{tmp_path}/backups")
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_WRITER, store.url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout and proc.stdout.readline().strip() == "writing"
        time.sleep(2.2)  # older than the lock-then-write window
        (partial,) = store.list_entries("2026-01-05")
        assert partial.partial and partial.name == "postgres.run1.dump.zst"
        assert store.list_artifacts("2026-01-05") == {}
        assert not store.remove_partial("2026-01-05", partial, min_age_s=0)  # alive: kept
        assert store.list_entries("2026-01-05") == [partial]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    (partial,) = store.list_entries("2026-01-05")
    assert store.remove_partial("2026-01-05", partial, min_age_s=0)
    assert store.list_entries("2026-01-05") == []


def test_s3_unfinished_upload_is_listed_and_aborted_only_when_old(s3_bucket: str) -> None:
    store = BackupStore(url=f"s3://{s3_bucket}/nightly", multipart_part_size_mb=5)
    client = boto3.client("s3")
    upload = client.create_multipart_upload(
        Bucket=s3_bucket, Key="nightly/2026-01-05/postgres.run1.dump.zst"
    )
    (partial,) = store.list_entries("2026-01-05")
    assert partial.partial and partial.name == "postgres.run1.dump.zst"
    # moto dates every upload in 2010: an age limit beyond that stands for "younger than it"
    age_s = (datetime.now(UTC) - partial.modified).total_seconds()
    assert not store.remove_partial("2026-01-05", partial, min_age_s=age_s + 3600)
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    assert store.remove_partial("2026-01-05", partial, min_age_s=0)
    assert not client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    assert upload["UploadId"] == partial.ref
