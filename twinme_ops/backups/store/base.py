"""Where backup artifacts live: a local directory or an S3 bucket, behind one API.

Both backends use the same layout, ``<root>/<set_id>/<artifact name>``, and the same guarantees:

* a write is all-or-nothing: an artifact appears under its final name only once it is complete
  (local: temp file + fsync + rename; S3: a single ``PutObject`` or a completed multipart upload),
  and a failed write leaves nothing behind (the temp file is removed, the multipart upload aborted);
* memory stays bounded whatever the artifact size (S3 parts larger than 16 MiB are spooled to a
  temporary file; part sizes grow so that 10,000 parts, the S3 maximum, hold more than 1 TiB);
* every S3 write asks for server-side encryption (``server_side_encryption``);
* :meth:`BackupStore.create_bytes` is create-only: when the name already exists the write is
  refused with :class:`ArtifactExistsError` and the existing object is untouched (local: a hard
  link, which fails on an existing name; S3: a conditional ``PutObject`` with
  ``If-None-Match: *``). This is what makes two writers of one set safe without a shared lock;
* failures surface as :class:`StoreError` with a redacted message that says what to fix;
* an S3 store is meant to be immutable (docs/backups.md, "Backups nobody can erase"):
  versioning and Object Lock keep every version locked for ``lock_days``;
  :meth:`BackupStore.check_immutability` says whether the bucket and the credentials in use
  really are so; :meth:`BackupStore.delete_set` deletes only a set none of whose versions is
  locked (:class:`ObjectLockedError` otherwise).

The backends live in :mod:`twinme_ops.backups.store.local` and :mod:`twinme_ops.backups.store.s3`
(its multipart upload in :mod:`twinme_ops.backups.store.s3_upload`) and build on their shared
part, :mod:`twinme_ops.backups.store.backend`; this module holds the resource that picks one
and the shared name rules; the errors are in :mod:`twinme_ops.backups.store.errors`.

Deployments should also add a bucket lifecycle rule ``AbortIncompleteMultipartUpload`` (e.g. 1 day):
a process killed with SIGKILL cannot abort its own upload, and S3 bills the orphaned parts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote, urlsplit

import dagster as dg
from pydantic import Field, PrivateAttr

from twinme_ops.backups.store.errors import ArtifactExistsError as ArtifactExistsError
from twinme_ops.backups.store.errors import ArtifactNotFoundError as ArtifactNotFoundError
from twinme_ops.backups.store.errors import ObjectLockedError as ObjectLockedError
from twinme_ops.backups.store.errors import StoreError as StoreError
from twinme_ops.backups.store.errors import StoreLocationError as StoreLocationError
from twinme_ops.common.redact import redact

if TYPE_CHECKING:
    from twinme_ops.backups.store.backend import Backend
    from twinme_ops.backups.store.immutability import ImmutabilityReport, ObjectLock

URL_ENV = "TWINME_BACKUP_URL"
MIB = 1 << 20

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:=+@,-]{0,199}")
_TMP_SUFFIX_RE = re.compile(r"\.tmp-[0-9a-f]{16}$")
_URL_FORMS = "file:///absolute/path or s3://bucket/prefix"


@dataclass(frozen=True)
class StoredEntry:
    """One object of a set as the store lists it, in-progress writes included.

    ``partial``: an unfinished write (a local ``.tmp-`` file, an S3 multipart upload), whose
    ``name`` is the artifact it would become. ``modified``: last write (local), upload start or
    last modification (S3), timezone-aware. ``ref``: what the backend needs to remove it.
    """

    name: str
    size: int
    modified: datetime
    partial: bool = False
    ref: str = ""


class ArtifactWriter(Protocol):
    """What :meth:`BackupStore.open_writer` yields."""

    def write(self, data: bytes | bytearray | memoryview, /) -> None: ...


class ArtifactReader(Protocol):
    """What :meth:`BackupStore.open_reader` yields."""

    def read(self, n: int = -1, /) -> bytes: ...


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


def is_artifact_name(value: str) -> bool:
    """Whether ``value`` is a valid set id or artifact name (listings skip the others)."""
    try:
        _check_name("name", value)
    except ValueError:
        return False
    return True


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
    # Any resource, not S3Resource: dagster-aws is imported only for a first S3 client (s3_client).
    s3: dg.ConfigurableResource | None = Field(
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

    lock_mode: str = Field(
        default="GOVERNANCE",
        description=(
            "S3 Object Lock mode the bucket's default retention must have (GOVERNANCE or "
            "COMPLIANCE; off = not required, development buckets only) (TWINME_BACKUP_LOCK_MODE)."
        ),
    )
    lock_days: int = Field(
        default=30,
        description=(
            "Shortest default retention, in days, the bucket must apply to every new version: at "
            "least retention's keep_days (TWINME_BACKUP_LOCK_DAYS)."
        ),
    )
    retention_aws_profile: str = Field(
        default="",
        description=(
            "AWS profile of the retention role, which alone may delete object versions; empty: "
            "retention uses the store's own credentials (TWINME_RETENTION_AWS_PROFILE)."
        ),
    )

    _backend_cache: Any = PrivateAttr(default=None)

    def _backend(self) -> Backend:
        if self._backend_cache is None:
            self._backend_cache = self._make_backend()
        return self._backend_cache

    def _make_backend(self) -> Backend:
        # a StoreError: steps report it as the component's failure, with the fix
        bad = StoreLocationError(
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
            from twinme_ops.backups.store.local import LocalBackend

            return LocalBackend(Path(path).absolute())
        if parts.scheme == "s3":
            bucket = parts.netloc
            if not bucket or "@" in bucket or ":" in bucket:
                raise bad
            if not 5 <= self.multipart_part_size_mb <= 5120:
                raise ValueError("multipart_part_size_mb must be between 5 and 5120 (S3 limits)")
            from twinme_ops.backups.store.s3 import S3Backend
            from twinme_ops.backups.store.s3_client import s3_client_factory

            return S3Backend(
                url=self.url.strip().rstrip("/"),
                bucket=bucket,
                prefix=unquote(parts.path).strip("/"),
                client_factory=s3_client_factory(self.s3),
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
        """Write a small artifact atomically, replacing any object of that name."""
        with self.open_writer(set_id, name, size_hint=len(data)) as writer:
            writer.write(data)

    def create_bytes(self, set_id: str, name: str, data: bytes) -> None:
        """Write a small artifact atomically only if no object of that name exists.

        Raises :class:`ArtifactExistsError` (and changes nothing) when the name is taken, even
        by a writer that won a race by a millisecond: the manifest of a set is written this way.
        """
        _check_name("set id", set_id)
        _check_name("artifact name", name)
        self._backend().create(set_id, name, data)

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

    def list_entries(self, set_id: str) -> list[StoredEntry]:
        """Every object of a set with its age, unfinished writes included (``partial``)."""
        _check_name("set id", set_id)
        return self._backend().list_entries(set_id)

    def remove_partial(self, set_id: str, entry: StoredEntry, min_age_s: float) -> bool:
        """Remove an unfinished write if its writer is gone; return whether it was removed.

        Local: the writer holds a lock on its temporary file while it lives, so a temporary file
        whose lock can be taken (and that is older than a couple of seconds) belongs to a killed
        process. S3 cannot tell: a multipart upload is aborted once older than ``min_age_s``.
        """
        _check_name("set id", set_id)
        return self._backend().remove_partial(set_id, entry, min_age_s)

    def delete_set(self, set_id: str, first: tuple[str, ...] = ()) -> None:
        """Delete every object of a set (and abort its unfinished S3 uploads).

        The names in ``first`` go before the others (the manifest: a crash halfway leaves an
        incomplete set, never a complete one with missing artifacts). On S3 every version of
        every object goes, delete markers included, and only if none is locked: otherwise
        :class:`ObjectLockedError` and nothing is deleted. Deleting versions needs the
        retention role (:meth:`for_retention`); the writer's credentials are refused.
        """
        _check_name("set id", set_id)
        for name in first:
            _check_name("artifact name", name)
        self._backend().delete_set(set_id, first)

    def _required_lock(self) -> tuple[str, int]:
        from twinme_ops.backups.store.immutability import required_lock

        return required_lock(self.lock_mode, self.lock_days)

    def check_immutability(self, probe: bool = True) -> ImmutabilityReport:
        """Whether the store keeps backups safe from the credentials in use (versioning, Object
        Lock of ``lock_mode`` for ``lock_days`` or more, and with ``probe`` no
        s3:DeleteObjectVersion): see :mod:`~twinme_ops.backups.store.immutability`. What it
        finds is in the report, each problem with its fix; it raises only for a bad setting."""
        from twinme_ops.backups.store.immutability import evaluate, not_applicable

        mode, days = self._required_lock()
        facts = self._backend().immutability(probe)
        if facts is None:
            return not_applicable(self.describe(), mode, days)
        return evaluate(self.describe(), facts, mode, days)

    def lock_of(self, set_id: str, name: str) -> ObjectLock | None:
        """The lock of the artifact's current version (None: no lock, or a local store)."""
        _check_name("set id", set_id)
        _check_name("artifact name", name)
        return self._backend().lock_of(set_id, name)

    def extend_lock(self, set_id: str, until: datetime, slack: timedelta = timedelta()) -> int:
        """Lock the current version of each object of the set until ``until``, in its own mode
        (or ``lock_mode``), unless its lock already ends after ``until - slack``; never shortens
        a lock. Returns how many versions were extended (0 on a local store)."""
        _check_name("set id", set_id)
        mode, _ = self._required_lock()
        return self._backend().extend_lock(set_id, until, until - slack, mode)

    def hidden_names(self, set_id: str) -> list[str]:
        """Names of the set whose latest S3 version is a delete marker over older versions: an
        object someone deleted while its versions stay (always empty on a local store)."""
        _check_name("set id", set_id)
        return self._backend().hidden_names(set_id)

    def for_retention(self) -> BackupStore:
        """This store as retention must use it: with the retention role's credentials
        (``retention_aws_profile``), or this very store when no profile is set."""
        if not self.retention_aws_profile.strip() or not self.url.strip().startswith("s3:"):
            return self
        from twinme_ops.backups.store.s3_client import with_profile

        return BackupStore(
            url=self.url,
            s3=with_profile(self.s3, self.retention_aws_profile.strip()),
            server_side_encryption=self.server_side_encryption,
            multipart_part_size_mb=self.multipart_part_size_mb,
            lock_mode=self.lock_mode,
            lock_days=self.lock_days,
        )
