"""How the bytes of a backup artifact are transformed on their way to and from the store.

Writing: source chunks -> zstd -> optional encryption -> sha256 + byte count ->
:meth:`BackupStore.open_writer`. Reading runs the same chain backwards. Encryption is age to the
configured recipients (:mod:`twinme_ops.backups.age_crypto`: a standard age file, ``age -d``
decrypts it by hand) or, for sets written before age, AES-256-GCM in chunks
(:mod:`twinme_ops.backups.crypto`); :mod:`twinme_ops.backups.keys` says which one writes and
which key reads what. Everything streams with bounded memory, whatever the artifact size. An
unencrypted artifact is a plain single-frame zstd file (``zstd -d`` restores it by hand); the
sha256 is that of the stored bytes, so ``sha256sum`` on the downloaded object checks it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twinme_ops.backups import age_crypto
from twinme_ops.backups.crypto import Decryptor, Encryptor, encryption_info
from twinme_ops.backups.keys import AGE, BackupKeys, as_keys, require_readable, scheme_of

if TYPE_CHECKING:
    from twinme_ops.backups.store.base import BackupStore

# threads=-1 lets zstd use one worker per core: on the 2-core reference machine it compresses
# ~2x faster than the single-threaded zstd CLI, and the frame format is unchanged.
DEFAULT_THREADS = -1
# Input per multi-threaded zstd job. zstd's default at level 3 (4x the 2 MiB window, 8 MiB) makes
# the compressor hold ~65 MiB of input and output buffers with 2 workers; 2 MiB jobs hold ~18 MiB
# for the same speed and a 0.4% larger output (1 GB dump, 2 cores). Still one zstd frame.
JOB_SIZE = 2 << 20
READ_SIZE = 1 << 20
# compress() calls on at most this much input so that a huge source chunk cannot produce a
# correspondingly huge output buffer
_MAX_COMPRESS_INPUT = 4 << 20

ProgressCallback = Callable[[int, int, float], None]


@dataclass
class ArtifactResult:
    """What was stored for one artifact; ``to_dict()`` is the manifest entry."""

    name: str
    bytes_in: int
    bytes_out: int
    sha256: str
    compression: dict[str, Any]
    encryption: dict[str, Any] | None
    duration_s: float

    @property
    def ratio(self) -> float:
        """Compression ratio, raw bytes / stored bytes (encryption overhead included)."""
        return self.bytes_in / self.bytes_out if self.bytes_out else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form, the inverse of :meth:`from_dict`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArtifactResult:
        """Rebuild a result from a manifest entry (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def write_artifact(
    store: BackupStore,
    set_id: str,
    name: str,
    chunks: Iterable[bytes],
    *,
    level: int = 3,
    key: bytes | BackupKeys | None = None,
    size_hint: int | None = None,
    progress: ProgressCallback | None = None,
    progress_interval_s: float = 10.0,
    threads: int = DEFAULT_THREADS,
) -> ArtifactResult:
    """Compress (zstd ``level``), optionally encrypt, hash and store ``chunks``.

    ``key``: :class:`~twinme_ops.backups.keys.BackupKeys` (age recipients win over the AES key),
    or raw bytes, an AES-256-GCM key. ``progress(bytes_in, bytes_out, elapsed_s)`` is called at
    most every ``progress_interval_s`` seconds while data flows, and once at the end. If
    ``chunks`` (or anything else) raises, the store discards the partial artifact and the
    exception propagates. ``size_hint`` is an upper bound of the stored size if known (the raw
    size is fine).
    """
    # zstandard is imported by the first artifact, not with the code location
    import zstandard

    keys = as_keys(key)
    scheme = keys.write_scheme
    start = time.monotonic()
    params = zstandard.ZstdCompressionParameters.from_level(
        level, threads=threads, job_size=JOB_SIZE if threads else 0, write_checksum=1
    )
    compressor = zstandard.ZstdCompressor(compression_params=params)
    cobj = compressor.compressobj()
    hasher = hashlib.sha256()
    bytes_in = 0
    bytes_out = 0
    last_report = start

    def compressed() -> Iterator[bytes]:
        nonlocal bytes_in, last_report
        for chunk in chunks:
            size = len(chunk)
            bytes_in += size
            if size <= _MAX_COMPRESS_INPUT:
                yield cobj.compress(chunk)
            else:
                with memoryview(chunk) as view:
                    for offset in range(0, size, _MAX_COMPRESS_INPUT):
                        yield cobj.compress(view[offset : offset + _MAX_COMPRESS_INPUT])
            if progress is not None:
                now = time.monotonic()
                if now - last_report >= progress_interval_s:
                    progress(bytes_in, bytes_out, now - start)
                    last_report = now
        yield cobj.flush()

    with store.open_writer(set_id, name, size_hint=size_hint) as writer:

        def emit(data: bytes) -> None:
            nonlocal bytes_out
            if data:
                hasher.update(data)
                writer.write(data)
                bytes_out += len(data)

        if scheme == AGE:
            age_crypto.encrypt_to(
                (piece for piece in compressed() if piece), emit, keys.age_recipients
            )
        elif keys.aes_key is not None:
            encryptor = Encryptor(keys.aes_key)
            for piece in compressed():
                if piece:
                    emit(encryptor.update(piece))
            emit(encryptor.finalize())
        else:
            for piece in compressed():
                emit(piece)

    duration = time.monotonic() - start
    if progress is not None:
        progress(bytes_in, bytes_out, duration)
    if scheme == AGE:
        info: dict[str, Any] | None = age_crypto.encryption_info(keys.age_recipients)
    else:
        info = encryption_info(keys.aes_key) if keys.aes_key is not None else None
    return ArtifactResult(
        name=name,
        bytes_in=bytes_in,
        bytes_out=bytes_out,
        sha256=hasher.hexdigest(),
        compression={"codec": "zstd", "level": level},
        encryption=info,
        duration_s=round(duration, 3),
    )


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_HEADER, _BLOCK, _CHECKSUM, _DONE = range(4)


class _ZstdFrameSplitter:
    """Cuts one zstd frame into pieces of at most one block each and tells when the frame ends.

    zstd's decompressobj returns everything an input decodes to in one bytes object, and a few
    bytes of RLE blocks can decode to megabytes; fed one block at a time its output stays bounded
    (a block regenerates at most 2 MiB). Walking the block headers also detects a stream that
    stops at a block boundary (zstd's streaming API reports no error for that) and trailing data.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._state = _HEADER
        self._has_checksum = False

    def feed(self, data: bytes) -> list[bytes]:
        """Add compressed bytes; return the complete pieces now available, in order."""
        if self._state == _DONE:
            if data:
                raise ValueError("unexpected data after the end of the compressed stream")
            return []
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        pos = self._pos
        while True:
            avail = len(buf) - pos
            if self._state == _HEADER:
                if avail < 5:
                    break
                if buf[pos : pos + 4] != _ZSTD_MAGIC:
                    raise ValueError(
                        "not a zstd stream (is the artifact encrypted? then pass the key)"
                    )
                fhd = buf[pos + 4]
                single_segment = (fhd >> 5) & 1
                header_len = (
                    5
                    + (0 if single_segment else 1)
                    + (0, 1, 2, 4)[fhd & 3]
                    + ((1 if single_segment else 0), 2, 4, 8)[fhd >> 6]
                )
                if avail < header_len:
                    break
                self._has_checksum = bool(fhd & 4)
                pos += header_len
                self._state = _BLOCK
            elif self._state == _BLOCK:
                if avail < 3:
                    break
                block_header = int.from_bytes(buf[pos : pos + 3], "little")
                block_type = (block_header >> 1) & 3
                if block_type == 3:
                    raise ValueError("corrupted zstd stream (reserved block type)")
                body = 1 if block_type == 1 else block_header >> 3
                if avail < 3 + body:
                    break
                pos += 3 + body
                out.append(bytes(buf[:pos]))
                del buf[:pos]
                pos = 0
                if block_header & 1:
                    self._state = _CHECKSUM if self._has_checksum else _DONE
            elif self._state == _CHECKSUM:
                if avail < 4:
                    break
                out.append(bytes(buf[: pos + 4]))
                del buf[: pos + 4]
                pos = 0
                self._state = _DONE
            else:
                if avail:
                    raise ValueError("unexpected data after the end of the compressed stream")
                break
        self._pos = pos
        return out

    def finish(self) -> None:
        """Raise ``ValueError`` unless a complete frame was fed."""
        if self._state != _DONE:
            raise ValueError("truncated compressed stream")


def read_artifact(
    store: BackupStore,
    set_id: str,
    name: str,
    *,
    expected_sha256: str | None,
    key: bytes | BackupKeys | None,
    encrypted: bool | Mapping[str, Any] | None,
) -> Iterator[bytes]:
    """Stream the original bytes of an artifact: read, hash, decrypt, decompress.

    ``encrypted``: the manifest entry's ``encryption`` (None: not encrypted; ``True``: the
    AES-256-GCM stream). ``key``: :class:`~twinme_ops.backups.keys.BackupKeys`, or raw AES bytes.
    A missing or non-matching key raises ``ValueError`` before anything is read.

    The returned iterator yields data before the artifact has been fully verified: the sha256 of
    the stored bytes (against ``expected_sha256``), the last encryption chunk and the end of the
    zstd frame are checked only when the stored stream is exhausted. A consumer must therefore
    treat what it received as untrusted until the iterator ends without error (restore into a
    scratch location, then switch over). Integrity failures raise ``ValueError``: ``"checksum
    mismatch for <set>/<name>: ..."`` when the stored bytes differ from ``expected_sha256``
    (a decryption or decompression error is reported as such a mismatch when the checksum also
    differs, which tells a corrupted artifact from a wrong key).
    """
    keys = as_keys(key)
    require_readable(set_id, name, encrypted, keys)
    return _read_artifact(store, set_id, name, expected_sha256, keys, scheme_of(encrypted))


def _mismatch(set_id: str, name: str, expected: str, actual: str) -> ValueError:
    return ValueError(
        f"checksum mismatch for {set_id}/{name}: expected sha256 {expected}, "
        f"stored bytes have {actual}; the artifact is corrupted or was modified"
    )


def _aes_plaintext(raw: Iterator[bytes], key: bytes) -> Iterator[bytes]:
    decryptor = Decryptor(key)
    for data in raw:
        yield decryptor.update(data)
    yield decryptor.finalize()


def _read_artifact(
    store: BackupStore,
    set_id: str,
    name: str,
    expected_sha256: str | None,
    keys: BackupKeys,
    scheme: str | None,
) -> Iterator[bytes]:
    import zstandard

    hasher = hashlib.sha256()
    splitter = _ZstdFrameSplitter()
    dobj = zstandard.ZstdDecompressor().decompressobj()

    with store.open_reader(set_id, name) as reader:

        def stored() -> Iterator[bytes]:
            while raw := reader.read(READ_SIZE):
                hasher.update(raw)
                yield raw

        if scheme == AGE:
            plaintext = age_crypto.decrypt_from(stored(), keys.age_identities)
        elif scheme is not None:
            assert keys.aes_key is not None  # require_readable checked it
            plaintext = _aes_plaintext(stored(), keys.aes_key)
        else:
            plaintext = stored()

        try:
            for compressed in plaintext:
                for piece in splitter.feed(compressed):
                    out = dobj.decompress(piece)
                    if out:
                        yield out
            splitter.finish()
            if not dobj.eof:
                raise ValueError("truncated compressed stream")
        except (ValueError, zstandard.ZstdError) as exc:
            close = getattr(plaintext, "close", None)
            if close is not None:
                close()  # the age worker thread stops reading before the rest is hashed here
            if expected_sha256 is not None:
                # hash the rest: a checksum mismatch names the real cause (a damaged artifact)
                while raw := reader.read(READ_SIZE):
                    hasher.update(raw)
                actual = hasher.hexdigest()
                if actual != expected_sha256:
                    raise _mismatch(set_id, name, expected_sha256, actual) from exc
            if isinstance(exc, zstandard.ZstdError):
                raise ValueError(f"cannot decompress {set_id}/{name}: {exc}") from exc
            raise ValueError(f"cannot read {set_id}/{name}: {exc}") from exc
        finally:
            close = getattr(plaintext, "close", None)
            if close is not None:
                close()
        # the stored stream may end after the last byte the decryptor needed
        while raw := reader.read(READ_SIZE):
            hasher.update(raw)

    actual = hasher.hexdigest()
    if expected_sha256 is not None and actual != expected_sha256:
        raise _mismatch(set_id, name, expected_sha256, actual)


def verify_artifact(store: BackupStore, set_id: str, name: str, expected_sha256: str) -> int:
    """Hash the stored bytes of an artifact against ``expected_sha256``; return its stored size."""
    hasher = hashlib.sha256()
    size = 0
    with store.open_reader(set_id, name) as reader:
        while raw := reader.read(READ_SIZE):
            hasher.update(raw)
            size += len(raw)
    actual = hasher.hexdigest()
    if actual != expected_sha256:
        raise _mismatch(set_id, name, expected_sha256, actual)
    return size


def read_manifest_artifact(
    store: BackupStore, set_id: str, entry: dict[str, Any], key: bytes | BackupKeys | None
) -> Iterator[bytes]:
    """:func:`read_artifact` for a manifest entry (its name, sha256 and encryption)."""
    return read_artifact(
        store,
        set_id,
        entry["name"],
        expected_sha256=entry["sha256"],
        key=key,
        encrypted=entry.get("encryption"),
    )
