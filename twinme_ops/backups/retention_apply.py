"""Retention against the store: reading every set's state, then carrying out a plan.

The two steps of the retention pipeline that touch the store, around the pure
:func:`~twinme_ops.backups.retention.plan_retention` (the policy and its rules live in
:mod:`twinme_ops.backups.retention`): :func:`inspect_sets` reads each set's ``manifest.json`` and
``drill.json``; :func:`apply_retention` deletes what the plan says (or, in a dry run, only says
so). Only :class:`~twinme_ops.backups.store.base.BackupStore` calls are used, so local directories
and S3 are read and cleaned alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twinme_ops.backups.manifest import MANIFEST
from twinme_ops.backups.retention import Decision, SetState, parse_set_date
from twinme_ops.backups.sets import read_set
from twinme_ops.backups.store.base import BackupStore, StoreError
from twinme_ops.common.log import Log


@dataclass
class RetentionReport:
    """The outcome of :func:`apply_retention`.

    ``deleted`` lists the sets deleted or, in a dry run, the sets a real run would delete.
    ``failed`` lists deletions the store refused, with the error (the other sets were handled).
    """

    dry_run: bool
    kept: list[Decision] = field(default_factory=list)
    deleted: list[Decision] = field(default_factory=list)
    reported: list[Decision] = field(default_factory=list)
    failed: list[tuple[Decision, str]] = field(default_factory=list)

    @property
    def decisions(self) -> list[Decision]:
        """Every decision, sorted by set id."""
        every = [*self.kept, *self.deleted, *self.reported, *(d for d, _ in self.failed)]
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
    (a backup finished meanwhile), it is kept. A deletion the store refuses is logged and listed
    in ``failed``; the other sets are still handled.
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
            store.delete_set(decision.set_id)
        except StoreError as exc:
            log.warning(f"could not delete {decision.explain()}: {exc}")
            report.failed.append((decision, str(exc)))
            continue
        log.info(f"deleted {decision.explain()}")
        report.deleted.append(decision)
    return report
