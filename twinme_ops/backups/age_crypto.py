"""Client-side encryption to age recipients: public keys where backups are taken, the private
identity only where restores run.

An artifact encrypted this way is a standard age file (https://age-encryption.org/v1) of the
zstd stream, so a person restores it with the stock tools::

    age -d -i key.txt postgres.<run>.dump.zst.age | zstd -d | pg_restore ...

The work is pyrage's (the Rust ``age`` crate). Its streaming calls (``encrypt_io``,
``decrypt_io``) pull from a reader and push to a writer until the end; they run here with
adapters, so memory stays bounded (age's 64 KiB chunks, plus ``_BATCH`` while decrypting):

- :func:`encrypt_to` reads the compressed stream from an iterator and hands the age file to a
  sink, re-raising the source's or the sink's own exception (pyrage reports a reader's error as
  text, and ignores a writer's error on its last flush);
- :func:`decrypt_from` runs ``decrypt_io`` in a worker thread and yields the plaintext through a
  small queue, so the restore tools keep consuming an iterator; closing it stops the worker.

age authenticates every 64 KiB chunk and the end of the stream: a changed, dropped or appended
byte fails decryption (``ValueError``), and nothing unauthenticated is yielded.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any, cast

import pyrage

from twinme_ops.common.redact import register_secret

RECIPIENTS_ENV = "TWINME_BACKUP_AGE_RECIPIENTS"
IDENTITY_ENV = "TWINME_BACKUP_AGE_IDENTITY"
IDENTITY_FILE_ENV = "TWINME_BACKUP_AGE_IDENTITY_FILE"
FORMAT = "age-encryption.org/v1"
_SECRET_PREFIX = "AGE-SECRET-KEY-"
# plaintext handed from the decrypting thread in pieces of about this size; the queue holds
# at most _QUEUE of them
_BATCH = 1 << 20
_QUEUE = 4
_IDENTITY_FIX = (
    f"Fix: where restores run, set {IDENTITY_FILE_ENV} to an age identity file (age-keygen -o "
    f"key.txt) or {IDENTITY_ENV} to its contents; backup pods need only {RECIPIENTS_ENV}"
)


def parse_recipients(value: str) -> tuple[str, ...]:
    """The age X25519 recipients (``age1...`` public keys) in ``value``: separated by spaces,
    commas or new lines, ``#`` starts a comment (as in age's recipients files).

    Raises ``ValueError`` naming the bad entry; an identity (secret key) pasted here by mistake
    is never echoed, and is registered as a secret.
    """
    found: list[str] = []
    for line in value.splitlines():
        for token in line.split("#", 1)[0].replace(",", " ").split():
            if token.upper().startswith(_SECRET_PREFIX):
                register_secret(token)
                raise ValueError(
                    f"{RECIPIENTS_ENV} holds an age identity (a secret key), not a recipient. "
                    f"Fix: put its public key there (age-keygen -y key.txt prints it) and keep "
                    f"the identity only where restores run ({IDENTITY_FILE_ENV})"
                )
            try:
                pyrage.x25519.Recipient.from_str(token)
            except pyrage.RecipientError:
                raise ValueError(
                    f"{RECIPIENTS_ENV}: {token[:80]!r} is not an age X25519 recipient. Fix: list "
                    "public keys as printed by age-keygen (age1..., 62 characters), separated by "
                    "commas or spaces"
                ) from None
            if token not in found:
                found.append(token)
    return tuple(found)


def parse_identities(text: str, source: str) -> tuple[pyrage.x25519.Identity, ...]:
    """The age X25519 identities in ``text`` (an identity file's format: one
    ``AGE-SECRET-KEY-1...`` per line, ``#`` comments); each is registered as a secret.

    ``source`` names where ``text`` came from in errors, which never quote a key.
    """
    identities: list[pyrage.x25519.Identity] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        register_secret(line)
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(pyrage.x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise ValueError(
                f"{source}: line {number} is not an age X25519 identity (AGE-SECRET-KEY-1...). "
                f"{_IDENTITY_FIX}"
            ) from None
    if not identities:
        raise ValueError(f"{source} holds no age identity. {_IDENTITY_FIX}")
    return tuple(identities)


def load_identities(inline: str, path: str) -> tuple[pyrage.x25519.Identity, ...]:
    """Identities from ``TWINME_BACKUP_AGE_IDENTITY`` (``inline``) and the file named by
    ``TWINME_BACKUP_AGE_IDENTITY_FILE`` (``path``); empty when neither is set."""
    found: list[pyrage.x25519.Identity] = []
    if inline.strip():
        found += parse_identities(inline, IDENTITY_ENV)
    if path.strip():
        try:
            text = open(path.strip(), encoding="utf-8").read()  # noqa: SIM115 (small file)
        except OSError as exc:
            raise ValueError(
                f"{IDENTITY_FILE_ENV}={path.strip()}: cannot read it ({exc.strerror}). Fix: "
                "mount the identity file there (readable by this process) or unset the variable"
            ) from None
        found += parse_identities(text, f"{IDENTITY_FILE_ENV}={path.strip()}")
    return tuple(found)


def public_key(identity: pyrage.x25519.Identity) -> str:
    """The recipient (``age1...``) that ``identity`` decrypts: what ``age-keygen -y`` prints."""
    return str(identity.to_public())


def encryption_info(recipients: Iterable[str]) -> dict[str, Any]:
    """The manifest description of an artifact encrypted to ``recipients`` (public keys: they
    tell which identity a restore needs; they decrypt nothing)."""
    return {"algorithm": "age", "format": FORMAT, "recipients": sorted(recipients)}


class _IteratorReader:
    """``read(n)`` over an iterator of bytes, for pyrage's pull-based calls; keeps the
    iterator's own exception (pyrage turns it into text) in ``error``."""

    def __init__(self, chunks: Iterator[bytes], cancelled: threading.Event | None = None) -> None:
        self._chunks = chunks
        self._buf = memoryview(b"")
        self._cancelled = cancelled
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        try:
            if self._cancelled is not None and self._cancelled.is_set():
                raise _Cancelled
            while not self._buf:
                chunk = next(self._chunks, None)
                if chunk is None:
                    return b""
                self._buf = memoryview(chunk)
            n = len(self._buf) if size is None or size < 0 else size
            out, self._buf = self._buf[:n], self._buf[n:]
            return bytes(out)
        except BaseException as exc:
            self.error = exc
            raise


class _SinkWriter:
    """``write(b)`` into a callable; keeps the callable's exception in ``error`` (pyrage ignores
    an error of the final flush)."""

    def __init__(self, sink: Callable[[bytes], None]) -> None:
        self._sink = sink
        self.error: BaseException | None = None

    def write(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        try:
            self._sink(bytes(data))
        except BaseException as exc:
            self.error = exc
            raise
        return len(data)

    def flush(self) -> None:
        return None


class _Cancelled(Exception):
    """The consumer of :func:`decrypt_from` stopped: the worker thread gives up."""


def encrypt_to(chunks: Iterator[bytes], sink: Callable[[bytes], None], recipients: Iterable[str]):
    """Encrypt the bytes of ``chunks`` to ``recipients`` as one age file handed to ``sink``.

    An exception of ``chunks`` or ``sink`` propagates as itself; pyrage's own failure raises
    ``ValueError``.
    """
    keys = [pyrage.x25519.Recipient.from_str(r) for r in recipients]
    if not keys:
        raise ValueError(f"no age recipient to encrypt to. Fix: set {RECIPIENTS_ENV}")
    reader, writer = _IteratorReader(chunks), _SinkWriter(sink)
    try:
        pyrage.encrypt_io(cast("Any", reader), cast("Any", writer), keys)
    except (pyrage.EncryptError, OSError) as exc:
        if reader.error is not None:
            raise reader.error from None
        if writer.error is not None:
            raise writer.error from None
        raise ValueError(f"age encryption failed: {exc}") from None
    for error in (reader.error, writer.error):
        if error is not None:
            raise error


def decrypt_from(
    chunks: Iterator[bytes], identities: Iterable[pyrage.x25519.Identity]
) -> Generator[bytes, None, None]:
    """Yield the plaintext of the age file whose bytes ``chunks`` yields.

    ``chunks`` is consumed in a worker thread. Decryption errors (wrong identity, a damaged or
    truncated file) raise ``ValueError``; an exception of ``chunks`` propagates as itself.
    Closing the returned iterator early stops the worker before it returns.
    """
    keys = list(identities)
    out: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUE)
    cancelled = threading.Event()
    reader = _IteratorReader(chunks, cancelled)
    batch = bytearray()
    # (exception, whether it is pyrage's verdict on the bytes rather than the source's error)
    failure: list[tuple[BaseException, bool]] = []

    def put(item: bytes | None) -> None:
        while True:
            if cancelled.is_set():
                raise _Cancelled
            try:
                out.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def sink(data: bytes) -> None:
        batch.extend(data)
        if len(batch) >= _BATCH:
            put(bytes(batch))
            batch.clear()

    writer = _SinkWriter(sink)

    def work() -> None:
        try:
            pyrage.decrypt_io(cast("Any", reader), cast("Any", writer), keys)
            error = reader.error or writer.error
            if error is not None:
                raise error
            if batch:
                put(bytes(batch))
        except _Cancelled:
            return
        except BaseException as exc:
            own = reader.error or writer.error
            failure.append((own, False) if own is not None else (exc, True))
        try:
            put(None)
        except _Cancelled:
            return

    worker = threading.Thread(target=work, name="age-decrypt", daemon=True)
    worker.start()
    try:
        while (item := out.get()) is not None:
            yield item
        worker.join()
        if failure:
            error, verdict = failure[0]
            if verdict:
                raise ValueError(f"decryption failed: {_decrypt_detail(error)}") from None
            raise error
    finally:
        cancelled.set()
        while worker.is_alive():
            with contextlib.suppress(queue.Empty):
                out.get(timeout=0.1)
        worker.join()


def _decrypt_detail(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    if "no matching keys" in text.lower():
        return "no configured age identity matches the artifact's recipients"
    return f"corrupted or truncated age artifact ({text})"
