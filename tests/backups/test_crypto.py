"""Client-side encryption: round trips, and every way a stream can be damaged must fail."""

from __future__ import annotations

import base64
import json
import os
import random

import pytest

from twinme_ops.backups.crypto import (
    ENCRYPTION_INFO,
    HEADER_SIZE,
    KEY_ENV,
    MAGIC,
    TAG_SIZE,
    Decryptor,
    Encryptor,
    encryption_info,
    key_id,
    parse_key,
)
from twinme_ops.common.redact import redact

CHUNK = 64


def encrypt(key: bytes, data: bytes, chunk_size: int = CHUNK, pieces: int = 7) -> bytes:
    """Encrypt ``data`` fed to update() in uneven pieces, as a real stream would arrive."""
    enc = Encryptor(key, chunk_size=chunk_size)
    rng = random.Random(len(data))
    out = bytearray()
    pos = 0
    while pos < len(data):
        step = rng.randint(1, max(1, len(data) // pieces))
        out += enc.update(data[pos : pos + step])
        pos += step
    out += enc.finalize()
    return bytes(out)


def decrypt(key: bytes, blob: bytes, step: int = 13) -> bytes:
    dec = Decryptor(key)
    out = bytearray()
    for pos in range(0, len(blob), step):
        out += dec.update(blob[pos : pos + step])
    out += dec.finalize()
    return bytes(out)


def split_chunks(blob: bytes, chunk_size: int = CHUNK) -> tuple[bytes, list[bytes]]:
    size = chunk_size + TAG_SIZE
    body = blob[HEADER_SIZE:]
    return blob[:HEADER_SIZE], [body[i : i + size] for i in range(0, len(body), size)]


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


@pytest.mark.parametrize(
    "size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 5, 10_000]
)
def test_round_trip(key: bytes, size: int) -> None:
    data = os.urandom(size)
    blob = encrypt(key, data)
    # header + one tag per chunk; a final chunk always exists, full or not
    chunks = max(1, -(-size // CHUNK))
    assert len(blob) == HEADER_SIZE + size + chunks * TAG_SIZE
    assert blob.startswith(MAGIC)
    assert decrypt(key, blob) == data


def test_empty_plaintext_is_one_final_chunk(key: bytes) -> None:
    enc = Encryptor(key)
    blob = enc.finalize()
    assert len(blob) == HEADER_SIZE + TAG_SIZE
    assert decrypt(key, blob) == b""


def test_default_chunk_size_streams_with_bounded_output(key: bytes) -> None:
    enc = Encryptor(key)
    data = os.urandom(3 * (1 << 20) + 123)
    first = enc.update(data[: 1 << 20])
    # the first chunk is held back until it is known not to be the last one
    assert first == enc._header  # noqa: SLF001
    second = enc.update(data[1 << 20 :])
    assert len(second) == 3 * ((1 << 20) + TAG_SIZE)
    blob = first + second + enc.finalize()
    assert decrypt(key, blob, step=1 << 19) == data


def test_same_plaintext_encrypts_differently(key: bytes) -> None:
    assert encrypt(key, b"x" * 100) != encrypt(key, b"x" * 100)


def test_wrong_key_fails(key: bytes) -> None:
    blob = encrypt(key, os.urandom(500))
    with pytest.raises(ValueError, match=f"decryption failed: wrong {KEY_ENV} or corrupted"):
        decrypt(os.urandom(32), blob)


def test_truncation_fails(key: bytes) -> None:
    blob = encrypt(key, os.urandom(5 * CHUNK + 10))
    header, chunks = split_chunks(blob)
    # dropping the final chunk leaves a stream of complete chunks: it must still be rejected
    for damaged in (
        header + b"".join(chunks[:-1]),
        blob[:-1],
        blob[:-TAG_SIZE],
        header,
        blob[: HEADER_SIZE - 1],
        b"",
    ):
        with pytest.raises(ValueError, match="decryption failed"):
            decrypt(key, damaged)


def test_exact_multiple_truncated_at_chunk_boundary_fails(key: bytes) -> None:
    blob = encrypt(key, os.urandom(4 * CHUNK))
    header, chunks = split_chunks(blob)
    assert len(chunks) == 4
    with pytest.raises(ValueError, match="decryption failed"):
        decrypt(key, header + b"".join(chunks[:3]))


def test_reordering_dropping_and_extending_fail(key: bytes) -> None:
    blob = encrypt(key, os.urandom(5 * CHUNK + 10))
    header, chunks = split_chunks(blob)
    other_header, other_chunks = split_chunks(encrypt(key, os.urandom(5 * CHUNK + 10)))
    swapped = [chunks[1], chunks[0], *chunks[2:]]
    for damaged in (
        header + b"".join(swapped),
        header + b"".join(chunks[:2] + chunks[3:]),  # a middle chunk dropped
        header + b"".join(chunks + [chunks[-1]]),  # a chunk replayed at the end
        blob + b"\x00",  # trailing garbage
        header + b"".join(chunks[:2] + other_chunks[2:]),  # spliced from another stream
        other_header + b"".join(chunks),
    ):
        with pytest.raises(ValueError, match="decryption failed"):
            decrypt(key, damaged)


@pytest.mark.parametrize("position", [0, 8, 11, 12, HEADER_SIZE - 1, HEADER_SIZE, 100, -1])
def test_bit_flip_fails(key: bytes, position: int) -> None:
    blob = bytearray(encrypt(key, os.urandom(3 * CHUNK)))
    blob[position] ^= 0x01
    with pytest.raises(ValueError, match="decryption failed"):
        decrypt(key, bytes(blob))


def test_plaintext_is_only_released_after_its_tag_is_checked(key: bytes) -> None:
    blob = bytearray(encrypt(key, os.urandom(3 * CHUNK)))
    blob[HEADER_SIZE + 5] ^= 0x80
    dec = Decryptor(key)
    with pytest.raises(ValueError, match="decryption failed"):
        dec.update(bytes(blob))


def test_parse_key_accepts_standard_and_urlsafe_base64() -> None:
    raw = bytes(range(250, 256)) + os.urandom(26)  # high bytes force '+'/'/' or '-'/'_'
    assert parse_key(base64.b64encode(raw).decode()) == raw
    assert parse_key(base64.urlsafe_b64encode(raw).decode()) == raw
    assert parse_key(base64.urlsafe_b64encode(raw).decode().rstrip("=")) == raw
    assert parse_key("  " + base64.b64encode(raw).decode() + "\n") == raw


PROBLEMS = {
    "is empty",
    "is not valid base64",
    "decodes to 20 bytes",
    "decodes to 48 bytes",
    "looks like a hex string",
}


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "is empty"),
        ("not base64 at all: secret-value-123!", "is not valid base64"),
        (base64.b64encode(b"short-secret-key-16b").decode(), "decodes to 20 bytes"),
        (base64.b64encode(os.urandom(48)).decode(), "decodes to 48 bytes"),
        (os.urandom(32).hex(), "looks like a hex string"),
    ],
    ids=lambda v: v if v in PROBLEMS else "",  # by problem: the random keys are not test names
)
def test_malformed_keys_explain_and_do_not_echo(value: str, problem: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_key(value)
    message = str(info.value)
    assert KEY_ENV in message
    assert problem in message
    assert "openssl rand -base64 32" in message
    if value:
        assert value not in message
    # the value is also masked anywhere else it might be printed
    if len(value) >= 4:
        assert value not in redact(f"loaded {value}")


def test_key_id_and_info_are_stable_and_not_the_key(key: bytes) -> None:
    kid = key_id(key)
    assert kid == key_id(key)
    assert len(kid) == 8
    assert int(kid, 16) >= 0
    assert kid != key_id(os.urandom(32))
    assert kid not in key.hex()
    info = encryption_info(key)
    assert info == {**ENCRYPTION_INFO, "key_id": kid}
    assert json.loads(json.dumps(info)) == info
    assert info["algorithm"] == "AES-256-GCM"


def test_bad_key_length_rejected() -> None:
    with pytest.raises(ValueError):
        Encryptor(os.urandom(16))
    with pytest.raises(ValueError):
        Decryptor(b"")
