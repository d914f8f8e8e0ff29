"""Which backup partition may be taken now: a backup is a copy of the present.

``nightly_backup_job`` is partitioned by day (Europe/Paris) so that each set is named after the
day it was taken, and retention ages sets by that name. Dagster's UI nevertheless offers every
partition since 2026-01-01 ("Materialize all", backfills): each of those runs would dump the
database as it is *now* into a set named after a past day. :func:`check_backup_partition`
refuses them. It is called twice, with the same message:

- before a run exists for the worker to pick up, by the instance's run coordinator
  (:mod:`twinme_ops.instance.run_coordinator`): UI launches, backfills, schedules and sensors;
- at the very start of each backup step (``_backup_component``), for runs that do not go through
  a coordinator (``execute_in_process``: the CLI, tests, scripts).

Allowed: today's partition, and yesterday's until :data:`CATCH_UP_CLOSES` (12:00 Europe/Paris):
``nightly_backup_schedule`` ticks at 02:00 for that same day's partition, and a tick the daemon
missed (it was down, or the run waited in the queue) is launched late for its own day.

No Dagster run objects here; the step-level helper only raises ``dg.Failure``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

import dagster as dg

# the partitions' and the nightly schedule's time zone (backup_partitions, nightly_backup_schedule)
TIMEZONE = ZoneInfo("Europe/Paris")
# yesterday's partition may still be taken until this time today: the catch-up window of a
# nightly tick (02:00) the daemon missed or a run that waited in the queue
CATCH_UP_CLOSES = time(12, 0)
# the steps that read the live systems; backup_set only writes a manifest over their artifacts
TAKING_STEPS = frozenset({"postgres_backup", "redis_backup", "files_backup"})
BACKUP_JOB = "nightly_backup_job"


class BackupPartitionRefused(ValueError):
    """A backup was asked for a partition that is not the present day."""


_clock_lock = threading.Lock()
_frozen: list[datetime] = []


def backup_now() -> datetime:
    """The time the partition checks compare against: now, unless a test froze the clock."""
    with _clock_lock:
        if _frozen:
            return _frozen[-1]
    return datetime.now(UTC)


@contextlib.contextmanager
def frozen_backup_clock(now: datetime) -> Iterator[None]:
    """Make :func:`backup_now` return ``now`` in this process while the block runs (tests).

    It reaches checks made in this process only: a ``dagster dev`` or a run worker started
    elsewhere keeps the real clock.
    """
    if now.tzinfo is None:
        raise ValueError("frozen_backup_clock needs an aware datetime")
    with _clock_lock:
        _frozen.append(now)
    try:
        yield
    finally:
        with _clock_lock:
            _frozen.remove(now)


def catch_up_closes(partition: date) -> datetime:
    """When the window to take ``partition`` as yesterday's closes (aware, Europe/Paris)."""
    return datetime.combine(partition + timedelta(days=1), CATCH_UP_CLOSES, tzinfo=TIMEZONE)


def check_backup_partition(partition_key: str, now: datetime) -> None:
    """Refuse (raise :class:`BackupPartitionRefused`) a backup of any day but the present.

    ``now`` must be timezone-aware. Allowed: the day of ``now`` in Europe/Paris, and the day
    before it while ``now`` is before 12:00 Europe/Paris (:data:`CATCH_UP_CLOSES`).
    """
    if now.tzinfo is None:
        raise ValueError("check_backup_partition needs an aware datetime")
    local = now.astimezone(TIMEZONE)
    today = local.date()
    try:
        day = date.fromisoformat(partition_key)
    except ValueError:
        raise BackupPartitionRefused(
            f"refusing to back up partition {partition_key!r}: it is not a YYYY-MM-DD day. "
            f"Fix: launch today's partition ({today.isoformat()})."
        ) from None
    if day == today:
        return
    if day == today - timedelta(days=1) and local < catch_up_closes(day):
        return
    raise BackupPartitionRefused(_refusal(partition_key, day, local))


def _refusal(key: str, day: date, local: datetime) -> str:
    today = local.date().isoformat()
    yesterday = (local.date() - timedelta(days=1)).isoformat()
    stamp = local.strftime("%Y-%m-%d %H:%M %Z")
    window = (
        f"only today's partition ({today}) can be taken, or yesterday's until "
        f"{CATCH_UP_CLOSES:%H:%M} Europe/Paris the next day (the catch-up window of "
        "nightly_backup_schedule, which runs at 02:00 for that day's partition)"
    )
    if day > local.date():
        why = (
            f"partition {key} is a day that has not begun in Europe/Paris (now {stamp}): a set "
            "named after it would hold today's data under a future date"
        )
    elif key == yesterday:
        why = (
            f"a backup is a copy of the present; the catch-up window for partition {key} closed "
            f"at {catch_up_closes(day):%Y-%m-%d %H:%M} Europe/Paris (now {stamp}), so it would "
            "hold today's data under yesterday's date"
        )
    else:
        why = (
            f"a backup is a copy of the present; partition {key} would hold today's data "
            f"({today}) under a past date, and retention, which ages sets by their id, would "
            f"keep or delete it as if it had been taken on {key}"
        )
    return (
        f"refusing to back up partition {key}: {why}. Nothing was dumped and nothing was "
        f"written to the backup store; {window}. Fix: launch today's partition ({today}): "
        "nightly_backup_schedule does every night, `twinme-ops backup` does now; to restore or "
        f"check an old set, run recover_job or restore_drill_job with set_id: {key} (never a "
        "backfill of nightly_backup_job)."
    )


class _StepContext(Protocol):
    @property
    def partition_key(self) -> str: ...


def refuse_unless_present(
    context: _StepContext, clock: Callable[[], datetime] = backup_now
) -> None:
    """The step-level backstop: ``dg.Failure`` with the refusal, before the step does anything.

    Runs submitted to the instance were already checked by its run coordinator; this catches
    the paths that bypass it (``execute_in_process``: the CLI, tests, scripts).
    """
    try:
        check_backup_partition(context.partition_key, clock())
    except BackupPartitionRefused as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
