"""Client-side encryption of backup artifacts: AES-256-GCM in authenticated chunks.

A single GCM message cannot be streamed safely (nothing may be released before the tag is
checked, and GCM is limited to ~64 GiB per nonce), so artifacts use the STREAM construction
(Hoang, Reyhanitabar, Rogaway, Vizár 2015), the same idea as Tink's streaming AEAD and age:

    header  = b"TWMENC1\\n" | chunk_size (4 bytes BE) | nonce prefix (7 random bytes)
    chunk i = AESGCM(key).encrypt(prefix | i (4 bytes BE) | last (1 byte), plaintext_i, header)

Every chunk holds ``chunk_size`` plaintext bytes except the last, which holds 0..chunk_size bytes
and is the only one with ``last = 1``. Binding the counter and the last flag into the nonce makes
reordering, dropping, truncating or extending the stream fail authentication; the header as
associated data protects the chunk size and the nonce prefix. A fresh random prefix per stream keeps
nonces unique under one key (2**56 prefixes, 2**32 chunks of 1 MiB each per stream).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import string
from typing import TYPE_CHECKING

import dagster as dg
from pydantic import Field

from twinme_ops.common.redact import register_secret

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from twinme_ops.backups.keys import BackupKeys

KEY_ENV = "TWINME_BACKUP_ENCRYPTION_KEY"
KEY_SIZE = 32
MAGIC = b"TWMENC1\n"
PREFIX_SIZE = 7
HEADER_SIZE = len(MAGIC) + 4 + PREFIX_SIZE
TAG_SIZE = 16
DEFAULT_CHUNK_SIZE = 1 << 20
# A decryptor trusts the chunk size from the header only up to this bound, so a corrupted or
# hostile header cannot make it buffer gigabytes.
MAX_CHUNK_SIZE = 64 << 20
_MAX_CHUNKS = 1 << 32

ENCRYPTION_INFO: dict[str, object] = {
    "algorithm": "AES-256-GCM",
    "format": "twinme-stream-v1",
    "chunk_size": DEFAULT_CHUNK_SIZE,
}

_KEY_HELP = (
    "generate one with `openssl rand -base64 32` or "
    "`python3 -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'`"
)
DECRYPTION_FAILED = f"decryption failed: wrong {KEY_ENV} or corrupted artifact"


def parse_key(value: str) -> bytes:
    """Decode ``TWINME_BACKUP_ENCRYPTION_KEY`` (base64, standard or urlsafe, 32 bytes) into a key.

    The error messages say what is wrong and how to fix it, and never contain the value itself;
    the value is also registered with :func:`~twinme_ops.common.redact.register_secret`.
    """
    register_secret(value.strip())
    text = "".join(value.split())
    register_secret(text)
    if not text:
        raise ValueError(f"{KEY_ENV} is empty: {_KEY_HELP}")
    if len(text) == 64 and all(c in string.hexdigits for c in text):
        raise ValueError(
            f"{KEY_ENV} looks like a hex string; it must be base64 of 32 bytes: {_KEY_HELP}"
        )
    # urlsafe base64 uses "-" and "_" where the standard alphabet has "+" and "/"; a key pasted
    # from a URL-safe tool often also lacks its "=" padding.
    normalized = text.replace("-", "+").replace("_", "/").rstrip("=")
    normalized += "=" * (-len(normalized) % 4)
    try:
        key = base64.b64decode(normalized, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{KEY_ENV} is not valid base64: {_KEY_HELP}") from None
    if len(key) != KEY_SIZE:
        raise ValueError(
            f"{KEY_ENV} decodes to {len(key)} bytes, but AES-256 needs exactly {KEY_SIZE}: "
            f"{_KEY_HELP}"
        )
    return key


def key_id(key: bytes) -> str:
    """A short, non-secret fingerprint of a key, recorded in manifests to tell keys apart."""
    return hashlib.sha256(b"twinme-key-id" + key).hexdigest()[:8]


def encryption_info(key: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> dict[str, object]:
    """The manifest description of an artifact encrypted with ``key``: scheme plus key id."""
    return {**ENCRYPTION_INFO, "chunk_size": chunk_size, "key_id": key_id(key)}


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_SIZE:
        raise ValueError(f"the encryption key must be {KEY_SIZE} bytes (see parse_key)")


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    if counter >= _MAX_CHUNKS:
        raise ValueError("stream too long for twinme-stream-v1 (2**32 chunks)")
    return prefix + counter.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def _aesgcm(key: bytes) -> AESGCM:
    # cryptography is imported by the first encryption, not with the code location
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(bytes(key))


class Encryptor:
    """Streaming encryptor: ``update()`` returns ciphertext as chunks fill, ``finalize()`` the rest.

    At most ``chunk_size`` plaintext bytes are held back (the current chunk cannot be sealed until
    it is known whether it is the last one), so memory stays O(chunk_size) plus the input given.
    """

    def __init__(self, key: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        _check_key(key)
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk_size must be between 1 and {MAX_CHUNK_SIZE}")
        self._aead = _aesgcm(key)
        self._chunk_size = chunk_size
        self._prefix = os.urandom(PREFIX_SIZE)
        self._header = MAGIC + chunk_size.to_bytes(4, "big") + self._prefix
        self._buf = bytearray()
        self._counter = 0
        self._header_sent = False
        self._finalized = False

    def _seal(self, plaintext: bytes | memoryview, last: bool) -> bytes:
        nonce = _nonce(self._prefix, self._counter, last)
        self._counter += 1
        return self._aead.encrypt(nonce, plaintext, self._header)

    def _start(self, out: list[bytes]) -> None:
        if self._finalized:
            raise ValueError("Encryptor already finalized")
        if not self._header_sent:
            out.append(self._header)
            self._header_sent = True

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """Add plaintext; return the ciphertext of every chunk now known not to be the last."""
        out: list[bytes] = []
        self._start(out)
        self._buf += data
        size = self._chunk_size
        # strictly more than one chunk: the held-back chunk might turn out to be the last one
        end = (len(self._buf) - 1) // size * size if self._buf else 0
        if end:
            with memoryview(self._buf) as view:
                for offset in range(0, end, size):
                    out.append(self._seal(view[offset : offset + size], last=False))
            del self._buf[:end]
        return b"".join(out)

    def finalize(self) -> bytes:
        """Seal the final chunk (possibly empty) and return the remaining ciphertext."""
        out: list[bytes] = []
        self._start(out)
        out.append(self._seal(bytes(self._buf), last=True))
        self._buf.clear()
        self._finalized = True
        return b"".join(out)


class Decryptor:
    """Streaming decryptor for :class:`Encryptor` output.

    ``update()`` returns only plaintext whose chunk tag has been verified; ``finalize()`` verifies
    the last chunk, so truncation is only detected there: callers must treat everything they got
    from ``update()`` as untrusted until ``finalize()`` returned.
    """

    def __init__(self, key: bytes) -> None:
        _check_key(key)
        self._aead = _aesgcm(key)
        self._buf = bytearray()
        self._header: bytes | None = None
        self._prefix = b""
        self._chunk_size = 0
        self._counter = 0
        self._finalized = False

    def _read_header(self) -> bool:
        if self._header is not None:
            return True
        if len(self._buf) < HEADER_SIZE:
            return False
        header = bytes(self._buf[:HEADER_SIZE])
        if not header.startswith(MAGIC):
            raise ValueError(
                "decryption failed: not a twinme-stream-v1 artifact (bad header); "
                "was it stored without client-side encryption?"
            )
        chunk_size = int.from_bytes(header[len(MAGIC) : len(MAGIC) + 4], "big")
        if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"{DECRYPTION_FAILED} (invalid chunk size in header)")
        self._header = header
        self._chunk_size = chunk_size
        self._prefix = header[len(MAGIC) + 4 :]
        del self._buf[:HEADER_SIZE]
        return True

    def _open(self, ciphertext: bytes | memoryview, last: bool) -> bytes:
        from cryptography.exceptions import InvalidTag

        nonce = _nonce(self._prefix, self._counter, last)
        try:
            plaintext = self._aead.decrypt(nonce, ciphertext, self._header)
        except InvalidTag:
            raise ValueError(f"{DECRYPTION_FAILED} (chunk {self._counter})") from None
        self._counter += 1
        return plaintext

    def update(self, data: bytes | bytearray | memoryview) -> bytes:
        """Add ciphertext; return the verified plaintext of every complete non-final chunk."""
        if self._finalized:
            raise ValueError("Decryptor already finalized")
        self._buf += data
        if not self._read_header():
            return b""
        size = self._chunk_size + TAG_SIZE
        end = (len(self._buf) - 1) // size * size if self._buf else 0
        if not end:
            return b""
        out: list[bytes] = []
        with memoryview(self._buf) as view:
            for offset in range(0, end, size):
                out.append(self._open(view[offset : offset + size], last=False))
        del self._buf[:end]
        return b"".join(out)

    def finalize(self) -> bytes:
        """Verify and return the final chunk; raise ``ValueError`` if the stream is incomplete."""
        if self._finalized:
            raise ValueError("Decryptor already finalized")
        if not self._read_header():
            raise ValueError("decryption failed: truncated artifact (incomplete header)")
        if len(self._buf) < TAG_SIZE:
            raise ValueError(f"{DECRYPTION_FAILED} (truncated final chunk)")
        plaintext = self._open(bytes(self._buf), last=True)
        self._buf.clear()
        self._finalized = True
        return plaintext


class BackupEncryption(dg.ConfigurableResource):
    """Client-side encryption of backup artifacts: age recipients (``TWINME_BACKUP_AGE_*``) and
    the AES-256-GCM key (``TWINME_BACKUP_ENCRYPTION_KEY``).

    New artifacts are encrypted to the age recipients when any are set (public keys: all a
    backup needs), else with the AES key, else not client-side (S3 server-side encryption still
    applies). Reading needs what wrote each artifact: the age identity, or the AES key, which
    stays configured where restores run for as long as sets written with it are kept
    (:mod:`twinme_ops.backups.keys`). Malformed values fail resource initialization, before any
    backup work starts, without echoing them.
    """

    key: str = Field(
        default="", description="base64 of 32 random bytes (openssl rand -base64 32). Empty: off."
    )
    age_recipients: str = Field(
        default="",
        description="age public keys (age1..., comma or space separated) new artifacts are "
        "encrypted to; they win over the AES key. Empty: age off.",
    )
    age_identity: str = Field(
        default="",
        description="age identity (AGE-SECRET-KEY-1..., secret) that decrypts; only where "
        "restores run.",
    )
    age_identity_file: str = Field(
        default="",
        description="path of an age identity file (age-keygen -o); only where restores run.",
    )

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self.get_keys()

    def get_key(self) -> bytes | None:
        """The raw key, None when encryption is off; ValueError (value not echoed) if malformed."""
        return parse_key(self.key) if self.key else None

    def get_keys(self) -> BackupKeys:
        """Every configured key, parsed; ``ValueError`` (values not echoed) if one is malformed."""
        # imported here: keys.py builds on this module (KEY_ENV, key_id)
        from twinme_ops.backups.age_crypto import load_identities, parse_recipients
        from twinme_ops.backups.keys import BackupKeys

        return BackupKeys(
            aes_key=self.get_key(),
            age_recipients=parse_recipients(self.age_recipients),
            age_identities=load_identities(self.age_identity, self.age_identity_file),
        )
