"""Whether a backup store keeps its objects safe from the credentials that write them.

A store is immutable when an object version, once written, cannot be destroyed before its lock
expires, whoever holds the writer's credentials: the bucket has versioning (an overwrite or a
plain delete only adds a version or a delete marker) and S3 Object Lock with a default retention
(every new version is locked from the moment it lands, whatever client wrote it: twinme_ops'
sets, CloudNativePG's WAL and base backups alike), in the mode and for at least the days the
store requires (``TWINME_BACKUP_LOCK_MODE``, ``TWINME_BACKUP_LOCK_DAYS``). The active probe asks S3
to delete a version of an object that does not exist: a refusal (``AccessDenied``) shows that the
credentials lack ``s3:DeleteObjectVersion``, and any other answer that they have it, without
touching a byte either way.

:func:`evaluate` is pure (what the bucket said + what is required -> problems, each with its fix),
so every combination is tested without a bucket; the S3 backend gathers the facts
(:mod:`twinme_ops.backups.store.s3_versions`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from twinme_ops.common.log import Log

if TYPE_CHECKING:
    from twinme_ops.backups.store.base import BackupStore

LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
# TWINME_BACKUP_LOCK_MODE=off: no lock required (a development bucket); the check only reports
LOCK_OFF = "off"
MODE_ENV = "TWINME_BACKUP_LOCK_MODE"
DAYS_ENV = "TWINME_BACKUP_LOCK_DAYS"
RETENTION_PROFILE_ENV = "TWINME_RETENTION_AWS_PROFILE"
SETUP_DOC = "deploy/backup-bucket/README.md"

ProbeResult = Literal["refused", "allowed", "not run", "unknown"]


@dataclass(frozen=True)
class ObjectLock:
    """The lock of one object version: ``mode`` (GOVERNANCE, COMPLIANCE or None), its end, and
    whether a legal hold is on."""

    mode: str | None
    until: datetime | None
    legal_hold: bool = False

    def locked_at(self, when: datetime) -> bool:
        """Whether the version cannot be deleted at ``when``."""
        return self.legal_hold or (self.until is not None and self.until > when)


@dataclass(frozen=True)
class BucketFacts:
    """What the bucket says about its protection (``None``: not read, see ``unread``)."""

    versioning: str | None = None
    lock_enabled: bool | None = None
    default_mode: str | None = None
    default_days: int | None = None
    writer_delete_probe: ProbeResult = "not run"
    unread: tuple[str, ...] = ()


@dataclass(frozen=True)
class ImmutabilityReport:
    """The verdict of :meth:`BackupStore.check_immutability
    <twinme_ops.backups.store.base.BackupStore.check_immutability>`.

    ``applicable`` is False for a local directory, which no credential separation protects.
    ``problems`` say what leaves backups erasable and how to fix it; ``notes`` are facts worth
    knowing that are not problems. ``ok``: applicable and no problem.
    """

    location: str
    applicable: bool
    required_mode: str
    required_days: int
    facts: BucketFacts = field(default_factory=BucketFacts)
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.applicable and not self.problems

    @property
    def lock_enabled(self) -> bool:
        return bool(self.facts.lock_enabled)

    def describe_lock(self) -> str:
        """``GOVERNANCE 30 days``, ``no default retention`` or ``no Object Lock``."""
        if not self.applicable:
            return "not applicable (local directory)"
        if not self.facts.lock_enabled:
            return "no Object Lock" if self.facts.lock_enabled is False else "unknown"
        if not self.facts.default_mode:
            return "Object Lock without default retention"
        return f"{self.facts.default_mode} {self.facts.default_days} days"

    def summary(self) -> str:
        """One line for a log: the verdict, then the problems (each with its fix)."""
        if not self.applicable:
            return f"{self.location}: {self.notes[0] if self.notes else 'not applicable'}"
        if self.ok:
            return f"{self.location} is immutable: {self.describe_lock()}, versioning on"
        return f"{self.location} is NOT immutable: " + " ".join(self.problems)

    def metadata(self) -> dict[str, str | bool | int]:
        """Plain values for run metadata."""
        meta: dict[str, str | bool | int] = {
            "store_immutable": self.ok,
            "object_lock": self.describe_lock(),
        }
        if self.applicable:
            meta["versioning"] = self.facts.versioning or "unknown"
            meta["writer_can_delete_versions"] = {
                "refused": "no",
                "allowed": "YES",
            }.get(self.facts.writer_delete_probe, self.facts.writer_delete_probe)
        if self.problems:
            meta["immutability_problems"] = " ".join(self.problems)
        return meta


def check_lock_mode(mode: str) -> str:
    """The normalized required mode (GOVERNANCE, COMPLIANCE or off), or ValueError with the fix."""
    value = (mode or "").strip()
    if value.lower() == LOCK_OFF:
        return LOCK_OFF
    if value.upper() in LOCK_MODES:
        return value.upper()
    raise ValueError(
        f"{MODE_ENV}={mode!r} is not a lock mode. Fix: set GOVERNANCE (the default), COMPLIANCE "
        f"or {LOCK_OFF} (no Object Lock required, for a development bucket only)"
    )


def required_lock(mode: str, days: int) -> tuple[str, int]:
    """The store's required lock mode and days, validated (ValueError with the fix)."""
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= 36500:
        raise ValueError(
            f"{DAYS_ENV}={days!r}: the lock must last 1 to 36500 days. Fix: set it to "
            "retention's keep_days (30 by default)"
        )
    return check_lock_mode(mode), days


def evaluate(
    location: str, facts: BucketFacts, required_mode: str, required_days: int
) -> ImmutabilityReport:
    """The problems of a bucket that said ``facts``, against the required mode and days."""
    problems: list[str] = []
    notes: list[str] = []
    setup = f"(see {SETUP_DOC})"
    for what in facts.unread:
        problems.append(f"Could not read {what}.")
    if facts.versioning is not None and facts.versioning != "Enabled":
        problems.append(
            f"Versioning is {facts.versioning or 'off'}: an overwrite or a delete destroys the "
            f"only copy. Fix: create the bucket with Object Lock, which turns versioning on for "
            f"good {setup}."
        )
    if facts.lock_enabled is False:
        problems.append(
            "Object Lock is not enabled: whoever holds the writer's credentials can destroy "
            "every backup. Fix: enable it (aws s3api put-object-lock-configuration "
            "--object-lock-configuration file://deploy/backup-bucket/object-lock.json) or "
            f"create a new bucket with --object-lock-enabled-for-bucket {setup}."
        )
    elif facts.lock_enabled and not facts.default_mode:
        problems.append(
            "Object Lock has no default retention: objects land unlocked. Fix: put "
            f"deploy/backup-bucket/object-lock.json as the bucket's Object Lock configuration "
            f"{setup}."
        )
    elif facts.lock_enabled:
        mode, days = facts.default_mode, facts.default_days or 0
        if required_mode == "COMPLIANCE" and mode != "COMPLIANCE":
            problems.append(
                f"The default retention is {mode}, {MODE_ENV} requires COMPLIANCE. Fix: put a "
                f"COMPLIANCE default retention on the bucket, or set {MODE_ENV}=GOVERNANCE."
            )
        elif required_mode == "GOVERNANCE" and mode == "COMPLIANCE":
            notes.append("COMPLIANCE mode: not even an administrator can shorten a lock")
        if days < required_days:
            problems.append(
                f"The default retention is {days} days, shorter than the {required_days} days "
                f"required ({DAYS_ENV}, at least retention's keep_days): a set younger than "
                f"keep_days could be destroyed. Fix: raise the bucket's default retention to "
                f"{required_days} days or more {setup}."
            )
    if facts.writer_delete_probe == "allowed":
        problems.append(
            "These credentials may delete object versions (s3:DeleteObjectVersion): once a "
            "lock ends they could destroy any version, and with s3:BypassGovernanceRetention "
            "even locked ones. Fix: give the writer deploy/backup-bucket/writer-policy.json "
            f"and run retention with its own role ({RETENTION_PROFILE_ENV}) {setup}."
        )
    elif facts.writer_delete_probe == "unknown":
        notes.append("the delete probe's answer was not conclusive")
    if required_mode == LOCK_OFF:
        # a development bucket: say what is missing, require nothing
        notes.extend(f"(not required: {MODE_ENV}=off) {p}" for p in problems)
        problems = []
    return ImmutabilityReport(
        location=location,
        applicable=True,
        required_mode=required_mode,
        required_days=required_days,
        facts=facts,
        problems=tuple(problems),
        notes=tuple(notes),
    )


def not_applicable(location: str, required_mode: str, required_days: int) -> ImmutabilityReport:
    """The report of a local directory store."""
    return ImmutabilityReport(
        location=location,
        applicable=False,
        required_mode=required_mode,
        required_days=required_days,
        notes=(
            "a local directory: anything that can write it can erase it; production stores "
            "are S3 buckets with Object Lock",
        ),
    )


def lock_covers_policy(report: ImmutabilityReport, keep_days: int) -> tuple[bool, str]:
    """Whether the bucket's default retention covers a retention policy keeping every set for
    ``keep_days`` days, and a sentence that says what follows either way."""
    if not report.applicable:
        return False, "local directory: no Object Lock"
    days = report.facts.default_days or 0
    if not report.facts.lock_enabled or not report.facts.default_mode:
        return False, (
            "the bucket locks nothing: any set can be destroyed by credentials that may delete "
            f"versions. Fix: see {SETUP_DOC}"
        )
    if days < keep_days:
        return False, (
            f"the default retention ({days} days) is shorter than keep_days ({keep_days}): sets "
            f"aged {days} to {keep_days - 1} days are kept by the policy but no longer locked. "
            f"Fix: raise the bucket's default retention to {keep_days} days ({SETUP_DOC})"
        )
    if days > keep_days:
        return True, (
            f"the default retention ({days} days) outlasts keep_days ({keep_days}): a set the "
            f"policy drops stays locked up to {days - keep_days} more day(s) and is deleted by "
            "a later run"
        )
    return True, f"every set is locked for the {keep_days} days the policy keeps it"


def check_after_backup(store: BackupStore, set_id: str, log: Log) -> dict[str, str | bool | int]:
    """The store's immutability as the writer of set ``set_id`` sees it, for the set's metadata.

    Logs a warning naming each problem and its fix when the store is not immutable (the backup
    itself stands: an erasable backup is still better than none), and reports when the set's
    manifest is locked until (the proof that what was just written landed locked).
    """
    from twinme_ops.backups.manifest import MANIFEST
    from twinme_ops.backups.store.base import StoreError

    try:
        report = store.check_immutability(probe=True)
        lock = store.lock_of(set_id, MANIFEST) if report.applicable else None
    except StoreError as exc:
        log.warning(f"could not check that the backup store is immutable: {exc}")
        return {"store_immutable": False, "object_lock": "unknown"}
    meta = report.metadata()
    if report.applicable:
        if lock is not None and lock.until is not None:
            meta["manifest_locked_until"] = f"{lock.until:%Y-%m-%d %H:%M} UTC ({lock.mode})"
        else:
            meta["manifest_locked_until"] = "not locked"
    if report.applicable and report.problems:
        log.warning(report.summary())
    elif report.applicable:
        log.info(report.summary())
    return meta
