"""age encryption of artifacts: standard age files (the age CLI reads them), streamed both ways,
damage detected, and a missing or wrong identity refused with the recipients it needs."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pyrage
import pytest

from bench.dump_rows import dump_like
from tests.backups.test_artifacts import SET, collect
from tests.support.backup_helpers import damage_object
from twinme_ops.backups.age_crypto import (
    IDENTITY_FILE_ENV,
    RECIPIENTS_ENV,
    decrypt_from,
    encrypt_to,
    load_identities,
    parse_recipients,
)
from twinme_ops.backups.artifacts import read_artifact, verify_artifact, write_artifact
from twinme_ops.backups.crypto import BackupEncryption
from twinme_ops.backups.keys import BackupKeys
from twinme_ops.backups.store.base import MIB, BackupStore
from twinme_ops.common.redact import redact


@pytest.fixture
def local_store(tmp_path: Path) -> BackupStore:
    return BackupStore(url=f"file://{tmp_path}/backups")


@pytest.fixture
def identity() -> pyrage.x25519.Identity:
    return pyrage.x25519.Identity.generate()


def keys_for(*identities: pyrage.x25519.Identity, aes: bytes | None = None) -> BackupKeys:
    return BackupKeys(
        aes_key=aes,
        age_recipients=tuple(str(i.to_public()) for i in identities),
        age_identities=identities,
    )


def backup_side(keys: BackupKeys) -> BackupKeys:
    """What a backup pod holds: the recipients (and the AES key, if any), no identity."""
    return BackupKeys(aes_key=keys.aes_key, age_recipients=keys.age_recipients)


def test_round_trip_is_a_standard_age_file(
    store: BackupStore, identity: pyrage.x25519.Identity, tmp_path: Path
) -> None:
    keys = keys_for(identity)
    source, raw = collect(dump_like(5 * MIB))
    result = write_artifact(
        store, SET, "postgres.dump.zst.age", iter(source), key=backup_side(keys)
    )
    assert result.encryption == {
        "algorithm": "age",
        "format": "age-encryption.org/v1",
        "recipients": [str(identity.to_public())],
    }
    stored = store.get_bytes(SET, "postgres.dump.zst.age")
    assert stored.startswith(b"age-encryption.org/v1\n")
    assert len(stored) == result.bytes_out
    out = read_artifact(
        store,
        SET,
        "postgres.dump.zst.age",
        expected_sha256=result.sha256,
        key=keys,
        encrypted=result.encryption,
    )
    assert b"".join(out) == raw

    # by hand, with the stock tools: age -d -i key.txt | zstd -d
    key_file = tmp_path / "key.txt"
    key_file.write_text(f"# test identity\n{identity}\n")
    artifact = tmp_path / "postgres.dump.zst.age"
    artifact.write_bytes(stored)
    age = subprocess.run(
        ["age", "-d", "-i", str(key_file), str(artifact)], capture_output=True, check=True
    )
    zstd = subprocess.run(["zstd", "-d", "-c"], input=age.stdout, capture_output=True, check=True)
    assert zstd.stdout == raw


def test_several_recipients_each_decrypt(local_store: BackupStore) -> None:
    first, second = pyrage.x25519.Identity.generate(), pyrage.x25519.Identity.generate()
    result = write_artifact(
        local_store, SET, "a.age", [b"rows" * 5000], key=backup_side(keys_for(first, second))
    )
    assert len(result.encryption["recipients"]) == 2  # type: ignore[index]
    for one in (first, second):
        out = read_artifact(
            local_store,
            SET,
            "a.age",
            expected_sha256=result.sha256,
            key=keys_for(one),
            encrypted=result.encryption,
        )
        assert b"".join(out) == b"rows" * 5000


def test_age_wins_over_aes_and_old_aes_sets_stay_readable(
    local_store: BackupStore, identity: pyrage.x25519.Identity
) -> None:
    aes = os.urandom(32)
    old = write_artifact(local_store, SET, "old.enc", [b"before age" * 1000], key=aes)
    assert old.encryption is not None and old.encryption["algorithm"] == "AES-256-GCM"
    both = keys_for(identity, aes=aes)
    new = write_artifact(local_store, SET, "new.age", [b"after age" * 1000], key=both)
    assert new.encryption is not None and new.encryption["algorithm"] == "age"
    for name, result, raw in (("old.enc", old, b"before age"), ("new.age", new, b"after age")):
        out = read_artifact(
            local_store,
            SET,
            name,
            expected_sha256=result.sha256,
            key=both,
            encrypted=result.encryption,
        )
        assert b"".join(out) == raw * 1000


@pytest.mark.parametrize("damage", ["flip", "truncate", "append"])
def test_damaged_age_artifact_is_detected(
    store: BackupStore, identity: pyrage.x25519.Identity, damage: str
) -> None:
    keys = keys_for(identity)
    source, _ = collect(dump_like(3 * MIB))
    result = write_artifact(store, SET, "db.age", source, key=keys)
    damage_object(store, SET, "db.age", damage)
    out = read_artifact(
        store, SET, "db.age", expected_sha256=result.sha256, key=keys, encrypted=result.encryption
    )
    with pytest.raises(ValueError, match=f"checksum mismatch for {SET}/db.age"):
        b"".join(out)
    with pytest.raises(ValueError, match="checksum mismatch"):
        verify_artifact(store, SET, "db.age", result.sha256)
    # without a checksum to compare, age's own authentication still refuses it
    out = read_artifact(
        store, SET, "db.age", expected_sha256=None, key=keys, encrypted=result.encryption
    )
    with pytest.raises(ValueError, match="decryption failed|truncated|unexpected data"):
        b"".join(out)


def test_missing_or_wrong_identity_names_the_recipients_and_the_fix(
    local_store: BackupStore, identity: pyrage.x25519.Identity
) -> None:
    keys = keys_for(identity)
    result = write_artifact(local_store, SET, "db.age", [b"x" * 1000], key=backup_side(keys))
    recipient = str(identity.to_public())
    with pytest.raises(ValueError) as missing:
        read_artifact(
            local_store,
            SET,
            "db.age",
            expected_sha256=result.sha256,
            key=backup_side(keys),
            encrypted=result.encryption,
        )
    text = str(missing.value)
    assert recipient in text and IDENTITY_FILE_ENV in text and "Fix:" in text
    other = pyrage.x25519.Identity.generate()
    with pytest.raises(ValueError) as wrong:
        read_artifact(
            local_store,
            SET,
            "db.age",
            expected_sha256=result.sha256,
            key=keys_for(other),
            encrypted=result.encryption,
        )
    text = str(wrong.value)
    assert recipient in text and str(other.to_public()) in text and "Fix:" in text
    assert str(identity) not in text and str(other) not in text
    # nothing was lost: the artifact is intact and reads with the right identity
    verify_artifact(local_store, SET, "db.age", result.sha256)


def test_encryption_streams_with_bounded_buffers(identity: pyrage.x25519.Identity) -> None:
    """The sink receives ciphertext long before the source ends, and decryption yields
    plaintext long before it has read the whole file."""
    chunk = os.urandom(256 * 1024)
    written: list[int] = []
    seen_before_end: list[int] = []

    def source() -> Iterator[bytes]:
        for _ in range(64):  # 16 MiB
            yield chunk
        seen_before_end.append(sum(written))

    blob = bytearray()

    def sink(data: bytes) -> None:
        written.append(len(data))
        blob.extend(data)

    encrypt_to(source(), sink, [str(identity.to_public())])
    assert seen_before_end[0] > 15 * MIB  # all but the last age chunk had left already
    assert max(written) <= 64 * 1024 + 16

    consumed = 0

    def ciphertext() -> Iterator[bytes]:
        nonlocal consumed
        for offset in range(0, len(blob), 1 << 20):
            consumed += min(1 << 20, len(blob) - offset)
            yield bytes(blob[offset : offset + (1 << 20)])

    plain = decrypt_from(ciphertext(), [identity])
    first = next(plain)
    assert consumed < len(blob) // 2
    rest = b"".join(plain)
    assert first + rest == chunk * 64


def test_source_and_sink_errors_propagate_as_themselves(
    identity: pyrage.x25519.Identity,
) -> None:
    class DumpFailed(RuntimeError):
        pass

    def failing() -> Iterator[bytes]:
        yield b"x" * 100_000
        raise DumpFailed("pg_dump: connection lost")

    with pytest.raises(DumpFailed, match="connection lost"):
        encrypt_to(failing(), lambda data: None, [str(identity.to_public())])

    def full_disk(data: bytes) -> None:
        raise OSError(28, "No space left on device")

    # pyrage ignores an error of its last flush: a small stream fails only there
    with pytest.raises(OSError, match="No space left"):
        encrypt_to(iter([b"tiny"]), full_disk, [str(identity.to_public())])


def test_closing_the_decrypting_iterator_stops_its_thread(
    identity: pyrage.x25519.Identity,
) -> None:
    blob = bytearray()
    encrypt_to(iter([os.urandom(8 * MIB)]), blob.extend, [str(identity.to_public())])
    before = threading.active_count()
    plain = decrypt_from(iter([bytes(blob)]), [identity])
    next(plain)
    plain.close()
    assert threading.active_count() == before
    assert not [t for t in threading.enumerate() if t.name == "age-decrypt"]


def test_configuration_errors_never_echo_a_key(tmp_path: Path) -> None:
    identity = pyrage.x25519.Identity.generate()
    secret = str(identity)
    with pytest.raises(ValueError) as pasted:
        parse_recipients(f"{identity.to_public()}, {secret}")
    assert RECIPIENTS_ENV in str(pasted.value) and "age-keygen -y" in str(pasted.value)
    assert secret not in str(pasted.value)
    assert secret not in redact(f"oops {secret}")  # registered as a secret

    with pytest.raises(ValueError, match="not an age X25519 recipient"):
        parse_recipients("age1notakey")
    broken = secret[:-3] + "QQQ"
    bad_file = tmp_path / "key.txt"
    bad_file.write_text(f"# created: today\n{broken}\n")
    with pytest.raises(ValueError) as bad:
        load_identities("", str(bad_file))
    assert "line 2" in str(bad.value) and broken not in str(bad.value)
    with pytest.raises(ValueError, match="cannot read it"):
        load_identities("", str(tmp_path / "absent.txt"))

    good = tmp_path / "good.txt"
    good.write_text(f"# public key: {identity.to_public()}\n{secret}\n")
    resource = BackupEncryption(
        age_recipients=f"{identity.to_public()}\n# team laptop\n",
        age_identity_file=str(good),
    )
    keys = resource.get_keys()
    assert keys.write_scheme == "age" and keys.identity_keys() == [str(identity.to_public())]
    assert secret not in repr(keys)
