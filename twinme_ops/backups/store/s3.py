"""The S3 backend of :class:`~twinme_ops.backups.store.base.BackupStore` (``s3://bucket/prefix``).

Objects are keys ``<prefix>/<set_id>/<name>``; writes stream through the multipart upload of
:mod:`twinme_ops.backups.store.s3_upload` (a single ``PutObject`` for small artifacts). Every
write asks for server-side encryption. A create-only write is a ``PutObject`` with
``If-None-Match: *``: S3 refuses it (412, or 409 when it races another conditional write) when
the key exists, atomically, with no lock. An unfinished write is a multipart upload, listed and
aborted by age. Versions and Object Lock (the immutability check, deleting a set for good,
extending locks) live in :mod:`twinme_ops.backups.store.s3_versions`. botocore errors become
redacted :class:`~twinme_ops.backups.store.base.StoreError` messages that say what to fix.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from twinme_ops.backups.store.backend import (
    Backend,
    BackendReader,
    BackendWriter,
    not_found,
    taken,
)
from twinme_ops.backups.store.base import URL_ENV, ArtifactNotFoundError, StoredEntry, StoreError
from twinme_ops.backups.store.s3_upload import S3Writer
from twinme_ops.common.redact import redact

if TYPE_CHECKING:
    from twinme_ops.backups.store.immutability import BucketFacts, ObjectLock


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


class S3Backend(Backend):
    """Keys under ``s3://bucket/prefix``; listings and their rules come from :class:`Backend`."""

    def __init__(
        self,
        url: str,
        bucket: str,
        prefix: str,
        client_factory: Callable[[], Any],
        server_side_encryption: str,
        part_base: int,
    ) -> None:
        super().__init__(url)
        self.bucket = bucket
        self.prefix = prefix
        self._client_factory = client_factory
        self._client: Any = None
        self.write_args: dict[str, str] = (
            {"ServerSideEncryption": server_side_encryption} if server_side_encryption else {}
        )
        self.part_base = part_base
        # whether the bucket has Object Lock, once read (None: not read, or not readable)
        self.lock_enabled: bool | None = None

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                self._client = self._client_factory()
            except (BotoCoreError, ClientError, ValueError) as exc:
                raise StoreError(redact(f"cannot create an S3 client: {exc}")) from None
        return self._client

    def root(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def key(self, set_id: str, name: str = "") -> str:
        return f"{self.root()}{set_id}/{name}"

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def error(
        self, exc: BaseException, action: str, key: str | None, denied_fix: str | None = None
    ) -> StoreError:
        """Turn a boto3 exception into an actionable, redacted :class:`StoreError`
        (``denied_fix``: the fix of an access denied, when not the store's usual permissions)."""
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
                return not_found(where)
            if code in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled") and denied_fix:
                return StoreError(
                    redact(
                        f"access denied while trying to {action} {where} {ctx}: {detail}. "
                        f"Fix: {denied_fix}"
                    )
                )
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

    def call(
        self,
        action: str,
        key: str | None,
        fn: Callable[..., Any],
        denied_fix: str | None = None,
        **kwargs: Any,
    ) -> Any:
        try:
            return fn(**kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise self.error(exc, action, key, denied_fix) from None

    def check_writable(self) -> None:
        self.call("reach bucket", None, self.client.head_bucket, Bucket=self.bucket)

    def writer(self, set_id: str, name: str, size_hint: int | None) -> BackendWriter:
        return S3Writer(self, self.key(set_id, name), size_hint)

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
                raise taken(self.uri(key)) from None
            raise self.error(exc, "write", key) from None
        except BotoCoreError as exc:
            raise self.error(exc, "write", key) from None

    def pages(
        self,
        operation: str,
        action: str,
        prefix: str,
        denied_fix: str | None = None,
        **kwargs: Any,
    ) -> Iterator[dict[str, Any]]:
        """The pages of ``operation`` (``list_objects_v2``, ``list_multipart_uploads``)."""
        paginator = self.client.get_paginator(operation)
        try:
            yield from paginator.paginate(Bucket=self.bucket, Prefix=prefix, **kwargs)
        except (BotoCoreError, ClientError) as exc:
            raise self.error(exc, action, prefix, denied_fix) from None

    def _uploads(self, prefix: str) -> list[dict[str, Any]]:
        """The unfinished multipart uploads under ``prefix`` (those of nested keys included)."""
        pages = self.pages("list_multipart_uploads", "list uploads under", prefix)
        return [upload for page in pages for upload in page.get("Uploads", [])]

    def _set_ids(self) -> list[str]:
        root = self.root()
        return [
            p["Prefix"][len(root) :].rstrip("/")
            for page in self.pages("list_objects_v2", "list", root, Delimiter="/")
            for p in page.get("CommonPrefixes", [])
        ]

    def _entries(self, set_id: str, partial: bool) -> list[StoredEntry]:
        prefix = self.key(set_id)
        found = [
            StoredEntry(obj["Key"][len(prefix) :], int(obj["Size"]), _aware(obj["LastModified"]))
            for page in self.pages("list_objects_v2", "list", prefix, Delimiter="/")
            for obj in page.get("Contents", [])
        ]
        if partial:
            found += [
                StoredEntry(
                    upload["Key"][len(prefix) :],
                    0,
                    _aware(upload["Initiated"]),
                    partial=True,
                    ref=upload["UploadId"],
                )
                for upload in self._uploads(prefix)
            ]
        return found

    def _remove_partial(self, set_id: str, entry: StoredEntry, min_age_s: float) -> bool:
        # S3 cannot say whether an upload's writer lives: only an old one is aborted
        age = (datetime.now(UTC) - entry.modified).total_seconds()
        if age < min_age_s:
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

    def delete_set(self, set_id: str, first: tuple[str, ...]) -> None:
        from twinme_ops.backups.store import s3_versions

        prefix = self.key(set_id)
        # uploads orphaned by a killed writer would otherwise be billed until the lifecycle rule
        for upload in self._uploads(prefix):
            self.call(
                "abort an upload under",
                prefix,
                self.client.abort_multipart_upload,
                Bucket=self.bucket,
                Key=upload["Key"],
                UploadId=upload["UploadId"],
            )
        s3_versions.delete_set(self, set_id, first)

    def immutability(self, probe: bool) -> BucketFacts:
        from twinme_ops.backups.store import s3_versions

        return s3_versions.bucket_facts(self, probe)

    def lock_of(self, set_id: str, name: str) -> ObjectLock | None:
        from twinme_ops.backups.store import s3_versions

        lock = s3_versions.lock_of(self, self.key(set_id, name))
        return lock if lock.mode or lock.legal_hold else None

    def extend_lock(self, set_id: str, until: datetime, before: datetime, mode: str) -> int:
        from twinme_ops.backups.store import s3_versions

        return s3_versions.extend_lock(self, set_id, until, before, mode)

    def hidden_names(self, set_id: str) -> list[str]:
        from twinme_ops.backups.store import s3_versions

        return s3_versions.hidden_names(self, set_id)
