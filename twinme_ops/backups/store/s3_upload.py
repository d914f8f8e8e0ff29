"""The streaming upload behind the writes of :class:`~twinme_ops.backups.store.s3.S3Backend`.

A streaming writer that sends a single ``PutObject`` for small artifacts and a multipart upload
otherwise, buffering one part at a time (in RAM up to 16 MiB, in a temporary file beyond) with
part sizes that grow so that 10,000 parts hold more than 1 TiB (:func:`part_size`); a failed
write aborts its upload, so nothing is left behind (a killed process's upload is listed as an
unfinished write and aborted by retention, or by the bucket's lifecycle rule).
"""

from __future__ import annotations

import logging
import tempfile
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from twinme_ops.backups.store.base import MIB, StoreError
from twinme_ops.common.redact import redact

if TYPE_CHECKING:
    from twinme_ops.backups.store.s3 import S3Backend

logger = logging.getLogger(__name__)

GIB = 1 << 30
# S3 limits: every part but the last is at least 5 MiB, at most 5 GiB, and at most 10,000 parts.
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * GIB
MAX_PARTS = 10_000
# Parts up to this size are buffered in RAM, larger ones in a temporary file.
SPOOL_MAX_SIZE = 16 * MIB
# The part size doubles every this many parts.
PART_GROWTH_INTERVAL = 1000


def part_size(part_number: int, base: int, size_hint: int | None = None) -> int:
    """Size in bytes of multipart part ``part_number`` (1-based).

    Parts start at ``base`` (at least 5 MiB, the S3 minimum) and double every 1,000 parts, capped
    at 5 GiB: with a 5 MiB base, 10,000 parts hold ~5 TiB, so an artifact of unknown size up to
    1 TiB never runs out of parts while small artifacts still use small parts. When the
    ``size_hint`` is known, the first part is large enough for the hinted size to fit in the first
    1,000 parts, which keeps the part count (and request overhead) low for big artifacts.
    """
    if not 1 <= part_number <= MAX_PARTS:
        raise ValueError(f"part_number must be between 1 and {MAX_PARTS}, got {part_number}")
    first = max(base, MIN_PART_SIZE)
    if size_hint:
        per_part = -(-size_hint // PART_GROWTH_INTERVAL)
        first = max(first, -(-per_part // MIB) * MIB)
    return min(first << ((part_number - 1) // PART_GROWTH_INTERVAL), MAX_PART_SIZE)


class S3Writer:
    """Streams to S3 with bounded memory: one part buffered at a time, multipart only if needed."""

    def __init__(self, backend: S3Backend, key: str, size_hint: int | None) -> None:
        self._backend = backend
        self._key = key
        self._size_hint = size_hint
        # a spooled file stays in RAM up to SPOOL_MAX_SIZE and moves to disk beyond it
        self._spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MAX_SIZE)  # noqa: SIM115
        self._buffered = 0
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._part_number = 1
        self._target = part_size(1, backend.part_base, size_hint)
        self._done = False

    @property
    def spooled_to_disk(self) -> bool:
        """Whether the part buffer has moved from RAM to a temporary file."""
        return bool(getattr(self._spool, "_rolled", False))

    def write(self, data: bytes | bytearray | memoryview, /) -> None:
        if self._done:
            raise StoreError("write after the artifact was committed or discarded")
        with memoryview(data) as whole:
            view = whole.cast("B")
            while len(view):
                # a full buffer is only sent once more data arrives, so that a stream of exactly
                # one part still becomes a single PutObject and the last part is never empty
                if self._buffered >= self._target:
                    self._upload_part()
                take = min(self._target - self._buffered, len(view))
                self._spool.write(view[:take])
                self._buffered += take
                view = view[take:]

    def _upload_part(self) -> None:
        b = self._backend
        if self._part_number > MAX_PARTS:
            raise StoreError(
                redact(f"{b.uri(self._key)}: more than {MAX_PARTS} parts; raise size_hint")
            )
        if self._upload_id is None:
            resp = b.call(
                "start a multipart upload to",
                self._key,
                b.client.create_multipart_upload,
                Bucket=b.bucket,
                Key=self._key,
                **b.write_args,
            )
            self._upload_id = resp["UploadId"]
        self._spool.seek(0)
        resp = b.call(
            f"upload part {self._part_number} to",
            self._key,
            b.client.upload_part,
            Bucket=b.bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=self._part_number,
            Body=self._spool,
            ContentLength=self._buffered,
        )
        part: dict[str, Any] = {"PartNumber": self._part_number, "ETag": resp["ETag"]}
        # newer botocore sends a CRC per part by default; completing must then repeat it
        for field in ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumSHA1", "ChecksumSHA256"):
            if field in resp:
                part[field] = resp[field]
        self._parts.append(part)
        self._spool.seek(0)
        self._spool.truncate()
        self._buffered = 0
        self._part_number += 1
        if self._part_number <= MAX_PARTS:
            self._target = part_size(self._part_number, b.part_base, self._size_hint)

    def commit(self) -> None:
        b = self._backend
        try:
            if self._upload_id is None:
                self._spool.seek(0)
                b.call(
                    "write",
                    self._key,
                    b.client.put_object,
                    Bucket=b.bucket,
                    Key=self._key,
                    Body=self._spool,
                    ContentLength=self._buffered,
                    **b.write_args,
                )
            else:
                self._upload_part()
                b.call(
                    "complete the multipart upload to",
                    self._key,
                    b.client.complete_multipart_upload,
                    Bucket=b.bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
        except BaseException:
            self.discard()
            raise
        self._done = True
        self._spool.close()

    def discard(self) -> None:
        self._done = True
        self._spool.close()
        if self._upload_id is None:
            return
        upload_id, self._upload_id = self._upload_id, None
        try:
            self._backend.client.abort_multipart_upload(
                Bucket=self._backend.bucket, Key=self._key, UploadId=upload_id
            )
        except (BotoCoreError, ClientError) as exc:
            # the original failure matters more; the bucket's lifecycle rule reclaims the parts
            logger.warning(
                "could not abort the multipart upload to %s: %s",
                self._backend.uri(self._key),
                redact(exc),
            )
