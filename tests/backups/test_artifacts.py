"""The artifact pipeline (zstd -> AES-GCM stream -> sha256 -> store) on both store backends."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from bench.dump_rows import dump_like
from tests.support.backup_helpers import damage_object
from twinme_ops.backups.artifacts import (
    ArtifactResult,
    _ZstdFrameSplitter,
    read_artifact,
    verify_artifact,
    write_artifact,
)
from twinme_ops.backups.crypto import KEY_ENV, encryption_info
from twinme_ops.backups.store.base import MIB, BackupStore

SET = "2024-06-01"


@pytest.fixture
def local_store(tmp_path: Path) -> BackupStore:
    return BackupStore(url=f"file://{tmp_path}/backups")


def collect(chunks: Iterator[bytes]) -> tuple[list[bytes], bytes]:
    pieces = list(chunks)
    return pieces, b"".join(pieces)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_round_trip(store: BackupStore, encrypted: bool) -> None:
    key = os.urandom(32) if encrypted else None
    source, raw = collect(dump_like(7 * MIB))
    result = write_artifact(store, SET, "postgres.dump.zst", iter(source), key=key, level=3)
    stored = store.get_bytes(SET, "postgres.dump.zst")

    assert result.name == "postgres.dump.zst"
    assert result.bytes_in == len(raw)
    assert result.bytes_out == len(stored) == store.list_artifacts(SET)["postgres.dump.zst"]
    assert result.sha256 == hashlib.sha256(stored).hexdigest()
    assert result.compression == {"codec": "zstd", "level": 3}
    assert result.ratio == pytest.approx(len(raw) / len(stored))
    assert result.ratio > 1.5
    if key is None:
        assert result.encryption is None
    else:
        assert result.encryption == encryption_info(key)
        assert raw[:100] not in stored

    out = read_artifact(
        store,
        SET,
        "postgres.dump.zst",
        expected_sha256=result.sha256,
        key=key,
        encrypted=encrypted,
    )
    assert b"".join(out) == raw
    assert verify_artifact(store, SET, "postgres.dump.zst", result.sha256) == len(stored)


def test_result_serializes_for_the_manifest(local_store: BackupStore) -> None:
    result = write_artifact(local_store, SET, "redis.rdb.zst", [b"x" * 1000], key=os.urandom(32))
    data = json.loads(json.dumps(result.to_dict()))
    assert set(data) == {
        "name",
        "bytes_in",
        "bytes_out",
        "sha256",
        "compression",
        "encryption",
        "duration_s",
    }
    assert ArtifactResult.from_dict(data) == result


def test_empty_source(store: BackupStore) -> None:
    result = write_artifact(store, SET, "empty.zst", [])
    assert result.bytes_in == 0 and result.bytes_out > 0
    out = read_artifact(
        store, SET, "empty.zst", expected_sha256=result.sha256, key=None, encrypted=False
    )
    assert b"".join(out) == b""


def test_plain_artifact_is_a_standard_zstd_file(local_store: BackupStore, tmp_path: Path) -> None:
    _, raw = collect(dump_like(3 * MIB))
    write_artifact(local_store, SET, "files.tar.zst", [raw])
    path = tmp_path / "backups" / SET / "files.tar.zst"
    restored = subprocess.run(["zstd", "-d", "-c", str(path)], capture_output=True, check=True)
    assert restored.stdout == raw


@pytest.mark.parametrize("threads", [0, 1, -1])
def test_thread_settings_produce_the_same_data(local_store: BackupStore, threads: int) -> None:
    _, raw = collect(dump_like(5 * MIB))
    # a single chunk larger than the per-call compression input is sliced, not buffered whole
    result = write_artifact(local_store, SET, "a.zst", [raw], threads=threads)
    out = read_artifact(
        local_store, SET, "a.zst", expected_sha256=result.sha256, key=None, encrypted=False
    )
    assert b"".join(out) == raw


def test_progress_is_throttled_and_final(local_store: BackupStore) -> None:
    calls: list[tuple[int, int, float]] = []
    source, raw = collect(dump_like(2 * MIB))
    result = write_artifact(
        local_store,
        SET,
        "a.zst",
        source,
        progress=lambda *a: calls.append(a),
        progress_interval_s=3600,
    )
    assert len(calls) == 1
    assert calls[0][:2] == (len(raw), result.bytes_out)
    assert calls[0][2] >= 0

    calls.clear()
    write_artifact(
        local_store,
        SET,
        "b.zst",
        source,
        progress=lambda *a: calls.append(a),
        progress_interval_s=0,
    )
    assert len(calls) == len(source) + 1
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)
    assert calls[-1][0] == len(raw)


def test_failing_source_commits_nothing(store: BackupStore) -> None:
    def source() -> Iterator[bytes]:
        yield from dump_like(12 * MIB)  # S3: several parts are already uploaded
        raise RuntimeError("pg_dump: error: connection to server lost")

    with pytest.raises(RuntimeError, match="connection to server lost"):
        write_artifact(store, SET, "postgres.dump.zst", source(), key=os.urandom(32))
    assert store.list_artifacts(SET) == {}
    assert not store.exists(SET, "postgres.dump.zst")


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
@pytest.mark.parametrize("damage", ["flip", "truncate", "append"])
def test_tampered_artifact_is_detected(store: BackupStore, encrypted: bool, damage: str) -> None:
    key = os.urandom(32) if encrypted else None
    source, raw = collect(dump_like(3 * MIB))
    result = write_artifact(store, SET, "db.zst", source, key=key)
    damage_object(store, SET, "db.zst", damage)

    out = read_artifact(
        store, SET, "db.zst", expected_sha256=result.sha256, key=key, encrypted=encrypted
    )
    with pytest.raises(ValueError, match=f"checksum mismatch for {SET}/db.zst"):
        b"".join(out)
    with pytest.raises(ValueError, match="checksum mismatch"):
        verify_artifact(store, SET, "db.zst", result.sha256)


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "encrypted"])
def test_damage_is_detected_without_a_checksum(local_store: BackupStore, encrypted: bool) -> None:
    """Even with no expected sha256, truncation at any point and trailing data are errors."""
    key = os.urandom(32) if encrypted else None
    source, _ = collect(dump_like(2 * MIB))
    write_artifact(local_store, SET, "db.zst", source, key=key)
    stored = local_store.get_bytes(SET, "db.zst")
    for damaged in (stored[:-4], stored[: len(stored) // 2], stored + b"\x01"):
        local_store.put_bytes(SET, "db.zst", damaged)
        with pytest.raises(ValueError, match="cannot read|cannot decompress"):
            b"".join(
                read_artifact(
                    local_store, SET, "db.zst", expected_sha256=None, key=key, encrypted=encrypted
                )
            )


def test_wrong_or_missing_key(local_store: BackupStore) -> None:
    result = write_artifact(local_store, SET, "db.zst", [b"data" * 1000], key=os.urandom(32))
    out = read_artifact(
        local_store,
        SET,
        "db.zst",
        expected_sha256=result.sha256,
        key=os.urandom(32),
        encrypted=True,
    )
    # the checksum matches, so the message blames the key, not the artifact
    with pytest.raises(ValueError, match=f"decryption failed: wrong {KEY_ENV}"):
        b"".join(out)
    with pytest.raises(ValueError, match=KEY_ENV):
        read_artifact(local_store, SET, "db.zst", expected_sha256=None, key=None, encrypted=True)
    with pytest.raises(ValueError, match="not a zstd stream"):
        b"".join(
            read_artifact(
                local_store, SET, "db.zst", expected_sha256=None, key=None, encrypted=False
            )
        )


def test_decompressed_output_stays_bounded(local_store: BackupStore) -> None:
    # 256 MiB of zeros compress to a few KiB; reading must not inflate them in one piece
    zeros = b"\x00" * (4 * MIB)
    result = write_artifact(local_store, SET, "zeros.zst", (zeros for _ in range(64)))
    assert result.bytes_out < 64 * 1024
    total = 0
    largest = 0
    for piece in read_artifact(
        local_store, SET, "zeros.zst", expected_sha256=result.sha256, key=None, encrypted=False
    ):
        total += len(piece)
        largest = max(largest, len(piece))
    assert total == 256 * MIB
    assert largest <= 2 * MIB


@pytest.mark.parametrize("size", [0, 10, 300_000])
@pytest.mark.parametrize("checksum", [True, False])
def test_frame_splitter_handles_every_frame_header(size: int, checksum: bool) -> None:
    """One-shot frames carry a content size (and small ones are single-segment)."""
    data = (b"twinme " * (size // 7 + 1))[:size]
    frame = zstandard.ZstdCompressor(write_checksum=checksum).compress(data)
    splitter = _ZstdFrameSplitter()
    dobj = zstandard.ZstdDecompressor().decompressobj()
    out = bytearray()
    for pos in range(0, len(frame), 3):
        for piece in splitter.feed(frame[pos : pos + 3]):
            out += dobj.decompress(piece)
    splitter.finish()
    assert dobj.eof
    assert bytes(out) == data
    with pytest.raises(ValueError, match="after the end"):
        splitter.feed(b"x")
    partial = _ZstdFrameSplitter()
    partial.feed(frame[:-1])
    with pytest.raises(ValueError, match="truncated"):
        partial.finish()
