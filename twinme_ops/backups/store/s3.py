"""The S3 backend of :class:`~twinme_ops.backups.store.base.BackupStore` (``s3://bucket/prefix``).

A streaming writer that sends a single ``PutObject`` for small artifacts and a multipart upload
otherwise, buffering one part at a time (in RAM up to 16 MiB, in a temporary file beyond) with
part sizes that grow so that 10,000 parts hold more than 1 TiB; a failed write aborts its upload.
Every write asks for server-side encryption. A create-only write is a ``PutObject`` with
``If-None-Match: *``: S3 refuses it (412, or 409 when it races another conditional write) when
the key exists, atomically, with no lock. botocore errors become redacted
:class:`~twinme_ops.backups.store.base.StoreError` messages that say what to fix.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from twinme_ops.backups.store.base import (
    MIB,
    URL_ENV,
    ArtifactExistsError,
    ArtifactNotFoundError,
    BackendReader,
    BackendWriter,
    StoredEntry,
    StoreError,
    is_artifact_name,
)
from twinme_ops.common.redact import redact

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


class _S3Writer:
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


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class _S3Reader:
    """The object's streaming body, with transport errors turned into :class:`StoreError`."""

    def __init__(self, backend: S3Backend, key: str, body: Any) -> None:
        self._backend = backend
        self._key = key
        self._body = body

    def read(self, n: int = -1, /) -> bytes:
        try:
            return self._body.read(None if n is None or n < 0 else n)
        except Exception as exc:  # urllib3 and botocore both raise on a broken stream
            raise self._backend.error(exc, "read", self._key) from None

    def close(self) -> None:
        self._body.close()


class S3Backend:
    def __init__(
        self,
        url: str,
        bucket: str,
        prefix: str,
        client_factory: Callable[[], Any],
        server_side_encryption: str,
        part_base: int,
    ) -> None:
        self.url = url
        self.bucket = bucket
        self.prefix = prefix
        self._client_factory = client_factory
        self._client: Any = None
        self.write_args: dict[str, str] = (
            {"ServerSideEncryption": server_side_encryption} if server_side_encryption else {}
        )
        self.part_base = part_base

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                self._client = self._client_factory()
            except (BotoCoreError, ClientError, ValueError) as exc:
                raise StoreError(redact(f"cannot create an S3 client: {exc}")) from None
        return self._client

    def describe(self) -> str:
        return redact(self.url)

    def _root(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def key(self, set_id: str, name: str = "") -> str:
        return f"{self._root()}{set_id}/{name}"

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def error(self, exc: BaseException, action: str, key: str | None) -> StoreError:
        """Turn a boto3 exception into an actionable, redacted :class:`StoreError`."""
        where = self.uri(key) if key is not None else f"s3://{self.bucket}"
        ctx = f"({URL_ENV}={self.url})"
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            detail = error.get("Message") or code
            if code == "NoSuchBucket" or (key is None and code in ("404", "NotFound")):
                return StoreError(
                    redact(
                        f"S3 bucket '{self.bucket}' does not exist or is not reachable {ctx}. "
                        f"Fix: create the bucket or correct {URL_ENV}."
                    )
                )
            if code in ("NoSuchKey", "404", "NotFound"):
                return ArtifactNotFoundError(redact(f"artifact not found: {where}"))
            if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled"):
                return StoreError(
                    redact(
                        f"access denied while trying to {action} {where} {ctx}. Fix: give the "
                        "credentials in use (AWS_ACCESS_KEY_ID or the pod's IAM role) "
                        "s3:ListBucket, s3:GetObject, s3:PutObject, s3:DeleteObject and "
                        f"s3:AbortMultipartUpload on bucket '{self.bucket}' (plus "
                        "kms:GenerateDataKey with aws:kms encryption), or fix the bucket policy"
                    )
                )
            if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
                return StoreError(
                    redact(
                        f"S3 rejected the credentials ({code}) while trying to {action} {where}. "
                        "Fix: check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN "
                        "(or the IAM role)"
                    )
                )
            return StoreError(
                redact(
                    f"S3 error {code} while trying to {action} {where} {ctx}: {detail}. "
                    f"Fix: check the bucket and {URL_ENV}."
                )
            )
        if isinstance(exc, NoCredentialsError):
            return StoreError(
                f"no AWS credentials found while trying to {action} {redact(where)}. Fix: set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or give the pod an "
                "IAM role"
            )
        endpoint = getattr(getattr(self._client, "meta", None), "endpoint_url", None) or "?"
        return StoreError(
            redact(
                f"S3 failure while trying to {action} {where} (endpoint {endpoint}): "
                f"{type(exc).__name__}: {exc}. Fix: check AWS_ENDPOINT_URL_S3, the network and "
                f"{URL_ENV}"
            )
        )

    def call(self, action: str, key: str | None, fn: Callable[..., Any], **kwargs: Any) -> Any:
        try:
            return fn(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise self.error(exc, action, key) from None

    def check_writable(self) -> None:
        self.call("reach bucket", None, self.client.head_bucket, Bucket=self.bucket)

    def writer(self, set_id: str, name: str, size_hint: int | None) -> BackendWriter:
        return _S3Writer(self, self.key(set_id, name), size_hint)

    def create(self, set_id: str, name: str, data: bytes) -> None:
        key = self.key(set_id, name)
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, IfNoneMatch="*", **self.write_args
            )
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                raise ArtifactExistsError(redact(f"{self.uri(key)} already exists")) from None
            raise self.error(exc, "write", key) from None
        except BotoCoreError as exc:
            raise self.error(exc, "write", key) from None

    def list_entries(self, set_id: str) -> list[StoredEntry]:
        prefix = self.key(set_id)
        found = [
            StoredEntry(obj["Key"][len(prefix) :], int(obj["Size"]), _aware(obj["LastModified"]))
            for page in self._pages("list", prefix, Delimiter="/")
            for obj in page.get("Contents", [])
            if is_artifact_name(obj["Key"][len(prefix) :])
        ]
        try:
            found += [
                StoredEntry(
                    upload["Key"][len(prefix) :],
                    0,
                    _aware(upload["Initiated"]),
                    partial=True,
                    ref=upload["UploadId"],
                )
                for page in self.client.get_paginator("list_multipart_uploads").paginate(
                    Bucket=self.bucket, Prefix=prefix
                )
                for upload in page.get("Uploads", [])
                if is_artifact_name(upload["Key"][len(prefix) :])
            ]
        except (BotoCoreError, ClientError) as exc:
            raise self.error(exc, "list uploads under", prefix) from None
        return sorted(found, key=lambda e: (e.name, e.partial))

    def remove_partial(self, set_id: str, entry: StoredEntry, min_age_s: float) -> bool:
        # S3 cannot say whether an upload's writer lives: only an old one is aborted
        age = (datetime.now(UTC) - entry.modified).total_seconds()
        if not entry.partial or age < min_age_s:
            return False
        key = self.key(set_id, entry.name)
        self.call(
            "abort an upload to",
            key,
            self.client.abort_multipart_upload,
            Bucket=self.bucket,
            Key=key,
            UploadId=entry.ref,
        )
        return True

    def open_reader(self, set_id: str, name: str) -> BackendReader:
        key = self.key(set_id, name)
        resp = self.call("read", key, self.client.get_object, Bucket=self.bucket, Key=key)
        return _S3Reader(self, key, resp["Body"])

    def exists(self, set_id: str, name: str) -> bool:
        key = self.key(set_id, name)
        try:
            self.call("inspect", key, self.client.head_object, Bucket=self.bucket, Key=key)
        except ArtifactNotFoundError:
            return False
        return True

    def delete(self, set_id: str, name: str) -> None:
        key = self.key(set_id, name)
        self.call("delete", key, self.client.delete_object, Bucket=self.bucket, Key=key)

    def _pages(self, action: str, key: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            yield from paginator.paginate(Bucket=self.bucket, Prefix=key, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise self.error(exc, action, key) from None

    def list_sets(self) -> list[str]:
        root = self._root()
        sets = [
            p["Prefix"][len(root) :].rstrip("/")
            for page in self._pages("list", root, Delimiter="/")
            for p in page.get("CommonPrefixes", [])
        ]
        return sorted(s for s in sets if is_artifact_name(s))

    def list_artifacts(self, set_id: str) -> dict[str, int]:
        prefix = self.key(set_id)
        found = {
            obj["Key"][len(prefix) :]: int(obj["Size"])
            for page in self._pages("list", prefix, Delimiter="/")
            for obj in page.get("Contents", [])
        }
        return {name: found[name] for name in sorted(found) if is_artifact_name(name)}

    def delete_set(self, set_id: str) -> None:
        prefix = self.key(set_id)
        # uploads orphaned by a killed writer would otherwise be billed until the lifecycle rule
        try:
            uploads = [
                upload
                for page in self.client.get_paginator("list_multipart_uploads").paginate(
                    Bucket=self.bucket, Prefix=prefix
                )
                for upload in page.get("Uploads", [])
            ]
        except (BotoCoreError, ClientError) as exc:
            raise self.error(exc, "list uploads under", prefix) from None
        for upload in uploads:
            self.call(
                "abort an upload under",
                prefix,
                self.client.abort_multipart_upload,
                Bucket=self.bucket,
                Key=upload["Key"],
                UploadId=upload["UploadId"],
            )
        for page in self._pages("list", prefix):
            objects = [{"Key": obj["Key"]} for obj in page.get("Contents", [])]
            # a page holds at most 1,000 keys, the DeleteObjects limit
            if not objects:
                continue
            resp = self.call(
                "delete",
                prefix,
                self.client.delete_objects,
                Bucket=self.bucket,
                Delete={"Objects": objects, "Quiet": True},
            )
            if resp.get("Errors"):
                first = resp["Errors"][0]
                raise StoreError(
                    redact(
                        f"could not delete {len(resp['Errors'])} object(s) under "
                        f"{self.uri(prefix)}, e.g. {first.get('Key')}: {first.get('Code')} "
                        f"{first.get('Message', '')}"
                    )
                )
