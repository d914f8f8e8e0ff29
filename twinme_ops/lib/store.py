"""Where backup artifacts live: a local directory or an S3 bucket, behind one API.

Both backends use the same layout, ``<root>/<set_id>/<artifact name>``, and the same guarantees:

* a write is all-or-nothing: an artifact appears under its final name only once it is complete
  (local: temp file + fsync + rename; S3: a single ``PutObject`` or a completed multipart upload),
  and a failed write leaves nothing behind (the temp file is removed, the multipart upload aborted);
* memory stays bounded whatever the artifact size (S3 parts larger than 16 MiB are spooled to a
  temporary file; part sizes grow so that 10,000 parts, the S3 maximum, hold more than 1 TiB);
* every S3 write asks for server-side encryption (``server_side_encryption``);
* failures surface as :class:`StoreError` with a redacted message that says what to fix.

Deployments should also add a bucket lifecycle rule ``AbortIncompleteMultipartUpload`` (e.g. 1 day):
a process killed with SIGKILL cannot abort its own upload, and S3 bills the orphaned parts.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import dagster as dg
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr

from twinme_ops.lib.redact import redact

logger = logging.getLogger(__name__)

URL_ENV = "TWINME_BACKUP_URL"
MIB = 1 << 20
GIB = 1 << 30
# S3 limits: every part but the last is at least 5 MiB, at most 5 GiB, and at most 10,000 parts.
MIN_PART_SIZE = 5 * MIB
MAX_PART_SIZE = 5 * GIB
MAX_PARTS = 10_000
# Parts up to this size are buffered in RAM, larger ones in a temporary file.
SPOOL_MAX_SIZE = 16 * MIB
# The part size doubles every this many parts.
PART_GROWTH_INTERVAL = 1000

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:=+@,-]{0,199}")
_TMP_SUFFIX_RE = re.compile(r"\.tmp-[0-9a-f]{16}$")
_URL_FORMS = "file:///absolute/path or s3://bucket/prefix"


class StoreError(Exception):
    """A backup store operation failed; the message is redacted and says what to fix."""


class ArtifactNotFoundError(StoreError):
    """The requested artifact does not exist in the store."""


class ArtifactWriter(Protocol):
    """What :meth:`BackupStore.open_writer` yields."""

    def write(self, data: bytes | bytearray | memoryview, /) -> None: ...


class ArtifactReader(Protocol):
    """What :meth:`BackupStore.open_reader` yields."""

    def read(self, n: int = -1, /) -> bytes: ...


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


def _check_name(kind: str, value: str) -> None:
    # Names become path components and S3 key segments: no separators, no "..", no hidden or
    # temporary names that listings skip.
    if (
        not isinstance(value, str)
        or not _NAME_RE.fullmatch(value)
        or ".." in value
        or _TMP_SUFFIX_RE.search(value)
    ):
        raise ValueError(
            f"invalid {kind} {value!r}: use 1-200 characters among letters, digits and _.:=+@,- "
            "not starting with '.' or '-', without '..'"
        )


def _is_artifact_name(value: str) -> bool:
    try:
        _check_name("name", value)
    except ValueError:
        return False
    return True


class _Backend(Protocol):
    def describe(self) -> str: ...
    def check_writable(self) -> None: ...
    def writer(self, set_id: str, name: str, size_hint: int | None) -> _Writer: ...
    def open_reader(self, set_id: str, name: str) -> _Reader: ...
    def exists(self, set_id: str, name: str) -> bool: ...
    def delete(self, set_id: str, name: str) -> None: ...
    def list_sets(self) -> list[str]: ...
    def list_artifacts(self, set_id: str) -> dict[str, int]: ...
    def delete_set(self, set_id: str) -> None: ...


class _Writer(Protocol):
    def write(self, data: bytes | bytearray | memoryview, /) -> None: ...
    def commit(self) -> None: ...
    def discard(self) -> None: ...


class _Reader(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...
    def close(self) -> None: ...


# ---------------------------------------------------------------------------------------------
# local directory


def _os_error(exc: OSError, action: str, path: Path | str) -> StoreError:
    reason = exc.strerror or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        fix = "free disk space or point TWINME_BACKUP_URL at a larger volume"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "fix the directory's permissions or point TWINME_BACKUP_URL at a writable location"
    elif exc.errno == errno.ENOTDIR:
        fix = "a component of the path is a regular file: correct TWINME_BACKUP_URL"
    else:
        fix = "check TWINME_BACKUP_URL and the file system"
    return StoreError(redact(f"cannot {action} {path}: {reason}. Fix: {fix}."))


class _LocalWriter:
    """Writes ``<name>.tmp-<random>`` next to the target, then fsyncs and renames it into place."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._tmp = path.with_name(f"{path.name}.tmp-{secrets.token_hex(8)}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self._tmp, "xb")  # noqa: SIM115 - closed by commit() / discard()
        except OSError as exc:
            raise _os_error(exc, "create", self._tmp) from None

    def write(self, data: bytes | bytearray | memoryview, /) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise _os_error(exc, "write", self._tmp) from None

    def commit(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self._path)
            # the rename itself must survive a crash, not only the data
            dir_fd = os.open(self._path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            self.discard()
            raise _os_error(exc, "write", self._path) from None

    def discard(self) -> None:
        with suppress(OSError):
            self._file.close()
        try:
            self._tmp.unlink(missing_ok=True)
        except OSError as exc:
            logger.warning("could not remove %s: %s", self._tmp, exc.strerror)


class _LocalBackend:
    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self) -> str:
        return redact(f"file://{self.root}")

    def _set_dir(self, set_id: str) -> Path:
        return self.root / set_id

    def check_writable(self) -> None:
        probe = self.root / f".twinme-probe-{secrets.token_hex(8)}"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(probe, "xb") as f:
                f.write(b"probe")
                f.flush()
                os.fsync(f.fileno())
            probe.unlink()
        except OSError as exc:
            raise _os_error(exc, "write to the backup directory", self.root) from None

    def writer(self, set_id: str, name: str, size_hint: int | None) -> _Writer:
        return _LocalWriter(self._set_dir(set_id) / name)

    def open_reader(self, set_id: str, name: str) -> _Reader:
        path = self._set_dir(set_id) / name
        try:
            return open(path, "rb")  # noqa: SIM115 - closed by BackupStore.open_reader
        except FileNotFoundError:
            raise ArtifactNotFoundError(redact(f"artifact not found: {path}")) from None
        except OSError as exc:
            raise _os_error(exc, "read", path) from None

    def exists(self, set_id: str, name: str) -> bool:
        return (self._set_dir(set_id) / name).is_file()

    def delete(self, set_id: str, name: str) -> None:
        path = self._set_dir(set_id) / name
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise _os_error(exc, "delete", path) from None

    def list_sets(self) -> list[str]:
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise _os_error(exc, "list", self.root) from None
        return sorted(e.name for e in entries if e.is_dir() and _is_artifact_name(e.name))

    def list_artifacts(self, set_id: str) -> dict[str, int]:
        path = self._set_dir(set_id)
        try:
            entries = list(os.scandir(path))
            return {
                e.name: e.stat().st_size
                for e in sorted(entries, key=lambda e: e.name)
                if e.is_file() and _is_artifact_name(e.name)
            }
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise _os_error(exc, "list", path) from None

    def delete_set(self, set_id: str) -> None:
        path = self._set_dir(set_id)
        try:
            shutil.rmtree(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _os_error(exc, "delete", path) from None


# ---------------------------------------------------------------------------------------------
# S3


class _S3Writer:
    """Streams to S3 with bounded memory: one part buffered at a time, multipart only if needed."""

    def __init__(self, backend: _S3Backend, key: str, size_hint: int | None) -> None:
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


class _S3Reader:
    """The object's streaming body, with transport errors turned into :class:`StoreError`."""

    def __init__(self, backend: _S3Backend, key: str, body: Any) -> None:
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


class _S3Backend:
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

    def writer(self, set_id: str, name: str, size_hint: int | None) -> _Writer:
        return _S3Writer(self, self.key(set_id, name), size_hint)

    def open_reader(self, set_id: str, name: str) -> _Reader:
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
        return sorted(s for s in sets if _is_artifact_name(s))

    def list_artifacts(self, set_id: str) -> dict[str, int]:
        prefix = self.key(set_id)
        found = {
            obj["Key"][len(prefix) :]: int(obj["Size"])
            for page in self._pages("list", prefix, Delimiter="/")
            for obj in page.get("Contents", [])
        }
        return {name: found[name] for name in sorted(found) if _is_artifact_name(name)}

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


# ---------------------------------------------------------------------------------------------
# the resource


class BackupStore(dg.ConfigurableResource):
    """Backup artifacts in a local directory or an S3 bucket, as ``<root>/<set_id>/<name>``.

    ``url`` chooses the backend: ``file:///path`` (a relative ``file://dir`` is resolved against
    the working directory) or ``s3://bucket/prefix``. The S3 client comes from dagster-aws'
    ``S3Resource`` (boto3 honours ``AWS_ENDPOINT_URL_S3`` for S3-compatible stores).
    """

    url: str = Field(
        description=(
            "Where backup sets are stored: file:///path or s3://bucket/prefix (TWINME_BACKUP_URL)."
        )
    )
    # Dagster gives nested resources no default (it passes None), hence the Optional + fallback.
    s3: S3Resource | None = Field(
        default=None,
        description="S3 client configuration for s3:// URLs; defaults to S3Resource().",
    )
    server_side_encryption: str = Field(
        default="AES256",
        description=(
            "ServerSideEncryption requested on every S3 write (AES256 or aws:kms); "
            "empty string to send none."
        ),
    )
    multipart_part_size_mb: int = Field(
        default=16,
        description=(
            "Size of the first parts of an S3 multipart upload, in MiB (5-5120); part sizes "
            "double every 1,000 parts so that 10,000 parts hold more than 1 TiB."
        ),
    )

    _backend_cache: Any = PrivateAttr(default=None)

    def _backend(self) -> _Backend:
        if self._backend_cache is None:
            self._backend_cache = self._make_backend()
        return self._backend_cache

    def _make_backend(self) -> _Backend:
        bad = ValueError(
            redact(f"{URL_ENV}={self.url!r} is not a valid backup location: use {_URL_FORMS}")
        )
        try:
            parts = urlsplit(self.url.strip())
        except ValueError:
            raise bad from None
        if parts.query or parts.fragment:
            raise bad
        if parts.scheme == "file":
            netloc = unquote(parts.netloc)
            path = unquote(parts.path)
            # file://.twinme/backups is not a host name but a path relative to the working dir
            if netloc not in ("", "localhost"):
                path = netloc + path
            if not path:
                raise bad
            return _LocalBackend(Path(path).absolute())
        if parts.scheme == "s3":
            bucket = parts.netloc
            if not bucket or "@" in bucket or ":" in bucket:
                raise bad
            if not 5 <= self.multipart_part_size_mb <= 5120:
                raise ValueError("multipart_part_size_mb must be between 5 and 5120 (S3 limits)")
            s3 = self.s3 if self.s3 is not None else S3Resource()
            return _S3Backend(
                url=self.url.strip().rstrip("/"),
                bucket=bucket,
                prefix=unquote(parts.path).strip("/"),
                client_factory=s3.get_client,
                server_side_encryption=self.server_side_encryption,
                part_base=self.multipart_part_size_mb * MIB,
            )
        raise bad

    def describe(self) -> str:
        """Human-readable, redacted location of the store."""
        return self._backend().describe()

    def set_location(self, set_id: str) -> str:
        """Human-readable, redacted location of one backup set."""
        _check_name("set id", set_id)
        return f"{self.describe().rstrip('/')}/{set_id}"

    def check_writable(self) -> None:
        """Fail early, with the fix in the message, if backups cannot be written here."""
        self._backend().check_writable()

    @contextmanager
    def open_writer(
        self, set_id: str, name: str, size_hint: int | None = None
    ) -> Iterator[ArtifactWriter]:
        """Yield a writer for ``<set_id>/<name>``; commit on normal exit, discard on exception.

        The artifact becomes visible only once complete; if the body raises (or the upload fails),
        nothing is left behind and the exception propagates. ``size_hint`` (an upper bound of the
        size, if known) lets S3 pick larger parts for large artifacts.
        """
        _check_name("set id", set_id)
        _check_name("artifact name", name)
        writer = self._backend().writer(set_id, name, size_hint)
        try:
            yield writer
        except BaseException:
            writer.discard()
            raise
        writer.commit()

    def put_bytes(self, set_id: str, name: str, data: bytes) -> None:
        """Write a small artifact (e.g. the manifest) atomically."""
        with self.open_writer(set_id, name, size_hint=len(data)) as writer:
            writer.write(data)

    @contextmanager
    def open_reader(self, set_id: str, name: str) -> Iterator[ArtifactReader]:
        """Yield a reader with ``read(n)`` over the stored bytes of ``<set_id>/<name>``.

        Raises :class:`ArtifactNotFoundError` if the artifact does not exist.
        """
        _check_name("set id", set_id)
        _check_name("artifact name", name)
        reader = self._backend().open_reader(set_id, name)
        try:
            yield reader
        finally:
            reader.close()

    def get_bytes(self, set_id: str, name: str) -> bytes:
        """Read a small artifact entirely."""
        with self.open_reader(set_id, name) as reader:
            return reader.read()

    def exists(self, set_id: str, name: str) -> bool:
        """Whether the artifact exists (complete: writes are atomic)."""
        _check_name("set id", set_id)
        _check_name("artifact name", name)
        return self._backend().exists(set_id, name)

    def delete(self, set_id: str, name: str) -> None:
        """Delete one artifact; no error if it does not exist."""
        _check_name("set id", set_id)
        _check_name("artifact name", name)
        self._backend().delete(set_id, name)

    def list_sets(self) -> list[str]:
        """Sorted ids of the sets (direct child folders / prefixes), with or without manifest."""
        return self._backend().list_sets()

    def list_artifacts(self, set_id: str) -> dict[str, int]:
        """Artifacts of a set, name -> stored size in bytes; in-progress writes are not listed."""
        _check_name("set id", set_id)
        return self._backend().list_artifacts(set_id)

    def delete_set(self, set_id: str) -> None:
        """Delete every object of a set (and abort its unfinished S3 uploads).

        On a versioned bucket this leaves delete markers and noncurrent versions; expire those with
        a lifecycle rule (NoncurrentVersionExpiration).
        """
        _check_name("set id", set_id)
        self._backend().delete_set(set_id)
