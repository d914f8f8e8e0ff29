"""Every step's alert words, gathered from the domains that declare them, and the alert builders
the hooks, sensors and steps call with them.

Each domain declares its steps' labels and next actions beside them (``backups/advice.py``,
``release/advice.py``); here they meet the formatter (``alerting/messages.py``), which imports
no domain.
"""

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from twinme_ops.alerting import messages
from twinme_ops.alerting.alert import Alert, Fact, Where
from twinme_ops.backups import advice as backup_advice
from twinme_ops.backups.drill import last_good_set
from twinme_ops.backups.store.base import BackupStore
from twinme_ops.common.step_advice import StepAdvice
from twinme_ops.release import advice as release_advice

STEPS: dict[str, StepAdvice] = {**backup_advice.STEPS, **release_advice.STEPS}
# the jobs whose alerts carry the last good backup set
BACKUP_JOBS = ("nightly_backup_job", "restore_drill_job", "retention_job")


def last_good_fact(store: BackupStore, now: datetime | None = None) -> Fact:
    """The newest set that passed its restore drill, read from the store (never raises)."""
    return Fact("Last good set", last_good_set(store, now))


def _plain(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in (metadata or {}).items()}


def step_failure(
    where: Where,
    error: str,
    facts: Sequence[Fact] = (),
    metadata: Mapping[str, Any] | None = None,
    stopped: bool = False,
    canceled: bool = False,
) -> Alert:
    """The alert for a failed (or stopped) step, with the step's own advice.

    ``metadata`` is the failing step's ``dg.Failure`` metadata: it adds the facts the step left
    (a recovery's state, a drill's failures), names the set when the job is not partitioned (a
    drill), and turns a refusal to overwrite a complete set into a warning that says so.
    """
    values = _plain(metadata)
    set_id = values.get("set_id")
    if not where.partition and isinstance(set_id, str) and set_id:
        where = replace(where, partition=set_id)
    refused = "the set is already complete" if values.get("set_complete") else ""
    left = [Fact(label, value) for label, value in backup_advice.failure_facts(values)]
    return messages.step_failure(
        where,
        backup_advice.short_error(error, values),
        [*facts, *left],
        STEPS.get(where.step),
        stopped=stopped,
        canceled=canceled,
        refused=refused,
        advice=backup_advice.SET_COMPLETE_ADVICE if refused else None,
    )


def release_failure(
    where: Where,
    reason: str,
    image: str,
    outcome: messages.Rollback,
    previous_image: str = "",
) -> Alert:
    """The alert for a release that failed its rollout or verification and was rolled back."""
    return messages.release_failure(
        where, reason, image, outcome, previous_image, STEPS.get(where.step)
    )
