"""Versions and Object Lock on the S3 backend: the immutability check, lock reads and extensions,
objects hidden by delete markers, and deleting a set for good.

On a versioned bucket with Object Lock (deploy/backup-bucket/), a plain ``DeleteObject`` only adds
a delete marker and a ``PutObject`` a new version: the writer's credentials, which hold no
``s3:DeleteObjectVersion``, can hide an object but never destroy one. Retention, with its own
role, destroys a set by deleting each of its versions, and only when none is locked: it first
reads every version's lock (``HeadObject``), and if one still holds, deletes nothing and raises
:class:`~twinme_ops.backups.store.base.ObjectLockedError` with the date the last lock ends. The
names the caller puts ``first`` (the manifest) go first, their older versions before the current
one, so that a crash halfway leaves a set that is incomplete, never one whose manifest is back to
an older version or whose artifacts are gone.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from twinme_ops.backups.store.base import ObjectLockedError
from twinme_ops.backups.store.immutability import (
    LOCK_OFF,
    RETENTION_PROFILE_ENV,
    SETUP_DOC,
    BucketFacts,
    ObjectLock,
    ProbeResult,
)
from twinme_ops.common.redact import redact

if TYPE_CHECKING:
    from twinme_ops.backups.store.s3 import S3Backend

# Never a valid set id (listings skip names starting with "."): the probe's key, never written.
PROBE_KEY = ".twinme-immutability-probe"
# Shaped like an S3 version id (32 characters), and naming none.
PROBE_VERSION = "TwinmeProbe.NoSuchVersion.000000"
VERSION_DELETE_FIX = (
    "deleting object versions is the retention role's alone: run retention with it "
    f"({RETENTION_PROFILE_ENV}, or the twinme-ops-retention ServiceAccount), and give that role "
    f"deploy/backup-bucket/retention-policy.json ({SETUP_DOC}); a version under Object Lock "
    "is refused to everyone until its lock ends"
)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _denied(exc: ClientError) -> bool:
    return _code(exc) in ("AccessDenied", "403", "Forbidden", "AllAccessDisabled")


def _as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _lock(head: dict[str, Any]) -> ObjectLock:
    return ObjectLock(
        mode=head.get("ObjectLockMode"),
        until=_as_utc(head.get("ObjectLockRetainUntilDate")),
        legal_hold=head.get("ObjectLockLegalHoldStatus") == "ON",
    )


def bucket_facts(b: S3Backend, probe: bool) -> BucketFacts:
    """What the bucket says about versioning, Object Lock and, with ``probe``, whether these
    credentials may delete versions. Access refused to a read is a finding (``unread``); a
    missing bucket or an unreachable endpoint raises StoreError."""
    unread: list[str] = []
    versioning: str | None = None
    try:
        versioning = b.client.get_bucket_versioning(Bucket=b.bucket).get("Status", "off")
    except ClientError as exc:
        if not _denied(exc):
            raise b.error(exc, "read the versioning of", None) from None
        unread.append("the bucket's versioning (grant s3:GetBucketVersioning).")
    except BotoCoreError as exc:
        raise b.error(exc, "read the versioning of", None) from None
    lock_enabled: bool | None = None
    mode: str | None = None
    days: int | None = None
    try:
        config = b.client.get_object_lock_configuration(Bucket=b.bucket)
        config = config.get("ObjectLockConfiguration", {})
        lock_enabled = config.get("ObjectLockEnabled") == "Enabled"
        default = config.get("Rule", {}).get("DefaultRetention", {})
        mode = default.get("Mode")
        if mode:
            days = int(default.get("Days") or 0) + 365 * int(default.get("Years") or 0)
    except ClientError as exc:
        if _code(exc) == "ObjectLockConfigurationNotFoundError":
            lock_enabled = False
        elif _denied(exc):
            unread.append(
                "the Object Lock configuration (grant s3:GetBucketObjectLockConfiguration)."
            )
        else:
            raise b.error(exc, "read the Object Lock configuration of", None) from None
    except BotoCoreError as exc:
        raise b.error(exc, "read the Object Lock configuration of", None) from None
    b.lock_enabled = lock_enabled
    return BucketFacts(
        versioning=versioning,
        lock_enabled=lock_enabled,
        default_mode=mode,
        default_days=days,
        writer_delete_probe=_probe(b) if probe else "not run",
        unread=tuple(unread),
    )


def _probe(b: S3Backend) -> ProbeResult:
    """Ask to delete a version that does not exist: AccessDenied means no s3:DeleteObjectVersion."""
    try:
        b.client.delete_object(
            Bucket=b.bucket, Key=f"{b.root()}{PROBE_KEY}", VersionId=PROBE_VERSION
        )
    except ClientError as exc:
        if _denied(exc):
            return "refused"
        if _code(exc) in ("NoSuchVersion", "NoSuchKey", "404"):
            return "allowed"
        return "unknown"
    except BotoCoreError:
        return "unknown"
    return "allowed"


def lock_of(b: S3Backend, key: str, version_id: str | None = None) -> ObjectLock:
    """The lock of one version (the current one by default)."""
    extra = {"VersionId": version_id} if version_id else {}
    head = b.call("inspect", key, b.client.head_object, Bucket=b.bucket, Key=key, **extra)
    return _lock(head)


def _versions(b: S3Backend, prefix: str) -> Iterator[dict[str, Any]]:
    """Every version and delete marker under ``prefix`` (``Marker`` True for a marker)."""
    pages = b.pages(
        "list_object_versions", "list the versions under", prefix, denied_fix=VERSION_DELETE_FIX
    )
    for page in pages:
        for v in page.get("Versions", []):
            yield {**v, "Marker": False}
        for m in page.get("DeleteMarkers", []):
            yield {**m, "Marker": True}


def hidden_names(b: S3Backend, set_id: str) -> list[str]:
    """Names whose latest version is a delete marker over older versions."""
    prefix = b.key(set_id)
    marked, kept = set(), set()
    for v in _versions(b, prefix):
        name = v["Key"][len(prefix) :]
        if v["Marker"] and v.get("IsLatest"):
            marked.add(name)
        elif not v["Marker"]:
            kept.add(name)
    return sorted(marked & kept)


def extend_lock(b: S3Backend, set_id: str, until: datetime, before: datetime, mode: str) -> int:
    """Lock each current version of the set until ``until`` unless it is locked past ``before``."""
    extended = 0
    prefix = b.key(set_id)
    for page in b.pages("list_objects_v2", "list", prefix, Delimiter="/"):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            head = b.call("inspect", key, b.client.head_object, Bucket=b.bucket, Key=key)
            lock = _lock(head)
            if lock.until is not None and lock.until >= before:
                continue
            wanted = lock.mode or (mode if mode != LOCK_OFF else None)
            if wanted is None:
                continue
            b.call(
                "extend the lock of",
                key,
                b.client.put_object_retention,
                Bucket=b.bucket,
                Key=key,
                VersionId=head["VersionId"],
                Retention={"Mode": wanted, "RetainUntilDate": until},
                denied_fix=VERSION_DELETE_FIX.replace(
                    "deleting object versions", "extending locks"
                ),
            )
            extended += 1
    return extended


def _bucket_locks(b: S3Backend) -> bool:
    """Whether versions may carry locks (unknown counts as yes: read each version's lock)."""
    if b.lock_enabled is None:
        try:
            bucket_facts(b, probe=False)
        except Exception:  # the deletion reports its own errors
            return True
    return b.lock_enabled is not False


def delete_set(b: S3Backend, set_id: str, first: tuple[str, ...]) -> None:
    """Delete every version of the set (see the module docstring), or nothing while one is
    locked (:class:`ObjectLockedError`)."""
    prefix = b.key(set_id)
    entries = list(_versions(b, prefix))
    if not entries:
        return
    now = datetime.now(UTC)
    if _bucket_locks(b):
        held = [
            lock
            for v in entries
            if not v["Marker"] and (lock := lock_of(b, v["Key"], v.get("VersionId"))).locked_at(now)
        ]
        if held:
            untils = [lock.until for lock in held if lock.until is not None]
            hold = any(lock.legal_hold for lock in held)
            until = None if hold else max(untils)
            when = "under a legal hold" if hold else f"locked until {until:%Y-%m-%d %H:%M} UTC"
            raise ObjectLockedError(
                redact(
                    f"{len(held)} object version(s) of {b.uri(prefix)} are {when} (Object "
                    "Lock): nothing of the set was deleted; a later retention run deletes it "
                    "once no lock holds"
                ),
                until,
            )

    def order(v: dict[str, Any]) -> tuple[int, int, datetime]:
        name = v["Key"][len(prefix) :]
        rank = first.index(name) if name in first else len(first)
        # within a name: older versions first, the current one last
        return rank, 1 if v.get("IsLatest") else 0, _as_utc(v.get("LastModified")) or now

    for v in sorted(entries, key=order):
        b.call(
            "delete a version of",
            v["Key"],
            b.client.delete_object,
            Bucket=b.bucket,
            Key=v["Key"],
            VersionId=v.get("VersionId") or "null",
            denied_fix=VERSION_DELETE_FIX,
        )
