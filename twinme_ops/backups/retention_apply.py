"""Retention against the store: reading every set's state, then carrying out a plan.

The two steps of the retention pipeline that touch the store, around the pure
:func:`~twinme_ops.backups.retention.plan_retention` (the policy and its rules live in
:mod:`twinme_ops.backups.retention`): :func:`inspect_sets` reads each set's ``manifest.json`` and
``drill.json``; :func:`apply_retention` deletes what the plan says (or, in a dry run, only says
so). Only :class:`~twinme_ops.backups.store.base.BackupStore` calls are used, so local directories
and S3 are read and cleaned alike. On an S3 bucket with Object Lock, a set still locked is not
deleted and not a failure: it is listed in ``locked`` and deleted by a later run; the sets kept
beyond the lock's reach have their lock extended (:func:`extend_kept_locks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from twinme_ops.backups.manifest import MANIFEST
from twinme_ops.backups.retention import Decision, SetState, parse_set_date
from twinme_ops.backups.sets import read_set
from twinme_ops.backups.store.base import BackupStore, ObjectLockedError, StoreError
from twinme_ops.common.log import Log


@dataclass
class RetentionReport:
    """The outcome of :func:`apply_retention`.

    ``deleted`` lists the sets deleted or, in a dry run, the sets a real run would delete.
    ``failed`` lists deletions the store refused, with the error (the other sets were handled).
    ``locked`` lists sets to delete that Object Lock still protects, with the end of the lock
    (None: a legal hold): nothing of them was deleted, a later run deletes them.
    """

    dry_run: bool
    kept: list[Decision] = field(default_factory=list)
    deleted: list[Decision] = field(default_factory=list)
    reported: list[Decision] = field(default_factory=list)
    failed: list[tuple[Decision, str]] = field(default_factory=list)
    locked: list[tuple[Decision, datetime | None]] = field(default_factory=list)

    @property
    def decisions(self) -> list[Decision]:
        """Every decision, sorted by set id."""
        every = [
            *self.kept,
            *self.deleted,
            *self.reported,
            *(d for d, _ in self.failed),
            *(d for d, _ in self.locked),
        ]
        return sorted(every, key=lambda d: d.set_id)


def inspect_set(store: BackupStore, set_id: str) -> SetState:
    """Read one set's manifest and drill record (one listing and at most two reads).

    A drill verdict about a manifest that has since been replaced (force) counts as no drill.
    """
    set_date = parse_set_date(set_id)
    if set_date is None:
        return SetState(set_id, None, "unreadable", detail="set id is not a YYYY-MM-DD date")
    view = read_set(store, set_id)
    if view.unreadable:
        return SetState(set_id, set_date, "unreadable", detail=view.unreadable)
    if not view.complete:
        return SetState(set_id, set_date, "incomplete")
    verdict = view.verdict
    if verdict == "stale":
        return SetState(set_id, set_date, "complete", "none", "drill verified a replaced manifest")
    detail = f"{view.drill_problem}: treated as a failed drill" if view.drill_problem else ""
    return SetState(set_id, set_date, "complete", verdict, detail)


def inspect_sets(store: BackupStore) -> list[SetState]:
    """The state of every set in the store, sorted by id.

    Store errors (unreachable bucket, access denied) propagate: retention must not plan from a
    partial view of the store.
    """
    return [inspect_set(store, set_id) for set_id in store.list_sets()]


def apply_retention(
    store: BackupStore,
    decisions: list[Decision],
    *,
    dry_run: bool,
    log: Log,
) -> RetentionReport:
    """Carry out a plan: delete the sets marked ``delete`` (not in a dry run), log every decision.

    Only :class:`BackupStore` calls are used, so local directories and S3 are cleaned alike. An
    incomplete set is re-checked just before deletion: if its manifest appeared since the plan
    (a backup finished meanwhile), it is kept; one whose manifest someone deleted (an S3 delete
    marker over its versions: twinme_ops never deletes a manifest) is reported, not deleted. A
    set Object Lock still protects is listed in ``locked``, untouched. A deletion the store
    refuses is logged and listed in ``failed``; the other sets are still handled.
    """
    report = RetentionReport(dry_run=dry_run)
    for decision in sorted(decisions, key=lambda d: d.set_id):
        if decision.action == "report":
            log.warning(f"report {decision.explain()}")
            report.reported.append(decision)
            continue
        if decision.action == "keep":
            log.info(f"keep {decision.explain()}")
            report.kept.append(decision)
            continue
        if dry_run:
            log.info(f"dry run, would delete {decision.explain()}")
            report.deleted.append(decision)
            continue
        try:
            if decision.status == "incomplete" and store.exists(decision.set_id, MANIFEST):
                kept = Decision(
                    decision.set_id,
                    "keep",
                    ["became complete while retention ran: kept"],
                    "complete",
                )
                log.info(f"keep {kept.explain()}")
                report.kept.append(kept)
                continue
            if decision.status == "incomplete" and MANIFEST in store.hidden_names(decision.set_id):
                hidden = replace(decision, action="report", reasons=[_HIDDEN_MANIFEST])
                log.warning(f"report {hidden.explain()}")
                report.reported.append(hidden)
                continue
            store.delete_set(decision.set_id, first=(MANIFEST,))
        except ObjectLockedError as exc:
            when = f"until {exc.until:%Y-%m-%d %H:%M} UTC" if exc.until else "by a legal hold"
            locked = replace(
                decision, reasons=[*decision.reasons, f"locked {when}: deleted by a later run"]
            )
            log.info(f"not yet deleted {locked.explain()}")
            report.locked.append((locked, exc.until))
            continue
        except StoreError as exc:
            log.warning(f"could not delete {decision.explain()}: {exc}")
            report.failed.append((decision, str(exc)))
            continue
        log.info(f"deleted {decision.explain()}")
        report.deleted.append(decision)
    return report


_HIDDEN_MANIFEST = (
    f"{MANIFEST} was deleted by someone (a delete marker hides its versions; twinme_ops never "
    "deletes a manifest): reported, not deleted. Fix: find who deleted it (CloudTrail), then "
    "bring it back by deleting the delete marker (aws s3api delete-object --version-id <the "
    "marker's id>, with the retention role)"
)


def extend_kept_locks(
    store: BackupStore,
    set_ids: list[str],
    *,
    now: datetime,
    days: int,
    log: Log,
) -> tuple[int, list[tuple[str, str]]]:
    """Lock the current objects of ``set_ids`` (sets kept beyond the bucket's default lock,
    :func:`~twinme_ops.backups.retention.kept_beyond_window`) until ``now + days``.

    A lock already ending later than a day before that is left alone, so each object is
    extended about once every ``days - 1`` days. A set the policy drops afterwards stays locked
    up to ``days`` more days and is deleted by a later run. Returns the number of object
    versions extended and the sets whose extension failed, with the error (logged, not fatal).
    """
    extended = 0
    failures: list[tuple[str, str]] = []
    until = now + timedelta(days=days)
    for set_id in set_ids:
        try:
            n = store.extend_lock(set_id, until, slack=timedelta(days=1))
        except StoreError as exc:
            log.warning(f"could not extend the lock of set {set_id}: {exc}")
            failures.append((set_id, str(exc)))
            continue
        if n:
            log.info(f"lock of set {set_id} extended to {until:%Y-%m-%d} ({n} object(s))")
        extended += n
    return extended, failures
