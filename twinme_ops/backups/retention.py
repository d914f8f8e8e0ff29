"""Retention of backup sets: which sets to keep, delete or report, and why.

The spec's ``find $BACKUP_DIR -mtime +30 -delete`` only cleans local copies (S3 is never
cleaned) and trusts file modification times, which a copy, a restore or a sync resets. Here the
age of a set comes from its id alone (the partition date, ``YYYY-MM-DD`` in Europe/Paris), the
store is read and cleaned through :class:`~twinme_ops.backups.store.base.BackupStore` only, so local
directories and S3 follow the same code path, and every decision carries its reasons.

The pipeline is three steps, each testable on its own:

* :func:`~twinme_ops.backups.retention_apply.inspect_sets` reads each set's ``manifest.json`` and
  ``drill.json`` from the store;
* :func:`plan_retention` (here, with the policy) is pure: sets + policy + clock -> one
  :class:`Decision` per set;
* :func:`~twinme_ops.backups.retention_apply.apply_retention` deletes what the plan says (or, in a
  dry run, only says so).

The rules, in order (:func:`plan_retention`):

1. A set id that is not a date, or whose manifest cannot be parsed, is **reported** and never
   deleted: a person decides.
2. These sets are always **kept**: the newest set (by id, whatever its state: it may still be
   being written), the newest complete set, and the newest set that passed its restore drill.
3. An incomplete set (no manifest: not a backup) is **kept** for ``incomplete_grace_hours`` after
   the end of its day, as it may still be being written, and **deleted** afterwards.
4. A complete set is **kept** when it is younger than ``keep_days`` days, or when a
   grandfather-father-son rule picks it; otherwise it is **deleted**.

Grandfather-father-son rules look only at complete sets *older* than ``keep_days`` (the window
already keeps the younger ones): ``keep_daily`` / ``keep_weekly`` / ``keep_monthly`` keep the
newest set of each of the N most recent days / ISO weeks / months that hold such a set. Within a
period, a set that failed its restore drill is passed over for one that did not; a period whose
sets all failed keeps its newest one anyway (a failed drill does not always mean a useless set,
retention errs on the side of keeping data).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from datetime import date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from twinme_ops.backups.manifest import MANIFEST

# Set ids are partition dates of this time zone (nightly_backup_job's partitions).
TIMEZONE = ZoneInfo("Europe/Paris")

SetStatus = Literal["complete", "incomplete", "unreadable"]
DrillStatus = Literal["passed", "failed", "none"]
Action = Literal["keep", "delete", "report"]


@dataclass(frozen=True)
class RetentionPolicy:
    """How many backup sets to keep.

    ``keep_days``: keep every complete set younger than this many days (the spec's
    ``RETENTION_DAYS=30``). ``keep_daily`` / ``keep_weekly`` / ``keep_monthly``: beyond that
    window, also keep the newest complete set of each of the N most recent days / ISO weeks /
    months (grandfather-father-son; 0 disables a rule). ``incomplete_grace_hours``: how long after
    the end of its day a set without manifest may still be being written before it is deleted.
    """

    keep_days: int = 30
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0
    incomplete_grace_hours: int = 24

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            # bool is an int subclass: keep_days=True is a typo, not a number of days
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(
                    f"retention policy: {f.name} must be a whole number, got {value!r}"
                )
            if value < 0:
                raise ValueError(
                    f"retention policy: {f.name} must be 0 or more, got {value} "
                    "(0 disables the rule)"
                )

    def describe(self) -> str:
        """One line for logs: ``30 days + 7 daily, 4 weekly, 6 monthly; incomplete sets 24 h``."""
        return (
            f"{self.keep_days} days + {self.keep_daily} daily, {self.keep_weekly} weekly, "
            f"{self.keep_monthly} monthly; incomplete sets {self.incomplete_grace_hours} h"
        )


@dataclass(frozen=True)
class SetState:
    """What the store says about one backup set.

    ``set_date`` is parsed from the id (``None`` when the id is not a ``YYYY-MM-DD`` date): the age
    of a set comes from its id, never from file times. ``status`` is ``complete`` (a manifest that
    parses), ``incomplete`` (no manifest) or ``unreadable`` (a manifest that does not parse, or an
    id that is not a date). ``drill`` is the outcome of the latest restore drill, if any.
    ``detail`` says why a set is unreadable or why its drill record is not trusted.
    """

    set_id: str
    set_date: date | None
    status: SetStatus
    drill: DrillStatus = "none"
    detail: str = ""


@dataclass(frozen=True)
class Decision:
    """What retention does with one set, and the human-readable reasons why.

    ``status`` is the set's status when the plan was made;
    :func:`~twinme_ops.backups.retention_apply.apply_retention` uses it to re-check, just before
    deleting, that an incomplete set has not been completed meanwhile.
    """

    set_id: str
    action: Action
    reasons: list[str]
    status: SetStatus | None = None

    def explain(self) -> str:
        """``2026-08-16: keep (younger than 30 days; monthly 2026-08)``."""
        return f"{self.set_id}: {self.action} ({'; '.join(self.reasons)})"


def parse_set_date(set_id: str) -> date | None:
    """The date a set id names, or ``None`` if it is not a strict ``YYYY-MM-DD`` date."""
    if len(set_id) != 10:
        return None
    try:
        parsed = date.fromisoformat(set_id)
    except ValueError:
        return None
    # fromisoformat also accepts other ISO forms (e.g. 20260915); the id must round-trip
    return parsed if parsed.isoformat() == set_id else None


def _paris_today(now: datetime) -> date:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware, e.g. datetime.now(UTC)")
    return now.astimezone(TIMEZONE).date()


def _end_of_day(day: date) -> datetime:
    # midnight Paris at the end of the set's day: the latest a scheduled backup of it starts
    return datetime.combine(day + timedelta(days=1), time(), tzinfo=TIMEZONE)


def _iso_week(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


_PERIODS: tuple[tuple[str, Callable[[date], str]], ...] = (
    ("daily", date.isoformat),
    ("weekly", _iso_week),
    ("monthly", lambda day: f"{day.year}-{day.month:02d}"),
)


def _gfs_picks(candidates: list[SetState], policy: RetentionPolicy) -> dict[str, list[str]]:
    """Reasons the grandfather-father-son rules give, by set id (candidates newest first)."""
    picks: dict[str, list[str]] = {}
    counts = {
        "daily": policy.keep_daily,
        "weekly": policy.keep_weekly,
        "monthly": policy.keep_monthly,
    }
    for rule, period_of in _PERIODS:
        periods: dict[str, list[SetState]] = {}
        for state in candidates:
            assert state.set_date is not None  # candidates are dated, complete sets
            periods.setdefault(period_of(state.set_date), []).append(state)
        # dicts keep insertion order: periods come newest first, like the candidates
        for period in list(periods)[: counts[rule]]:
            members = periods[period]
            trusted = [s for s in members if s.drill != "failed"]
            chosen = trusted[0] if trusted else members[0]
            reason = f"{rule} {period}"
            if not trusted:
                reason += " (every set of that period failed its drill: kept the newest)"
            picks.setdefault(chosen.set_id, []).append(reason)
    return picks


def _newest(states: Iterable[SetState]) -> str | None:
    ids = [s.set_id for s in states]
    return max(ids) if ids else None


def plan_retention(sets: list[SetState], policy: RetentionPolicy, now: datetime) -> list[Decision]:
    """Decide, for every set, keep / delete / report, with human-readable reasons.

    Pure: reads nothing but its arguments. ``now`` must be timezone-aware; ages are whole days
    in Europe/Paris between the set's date (from its id) and ``now``'s date: with
    ``keep_days=30`` the sets of today and of the 29 days before are kept by the window. The
    decisions come back sorted by set id. See the module docstring for the rules.
    """
    today = _paris_today(now)
    grace = timedelta(hours=policy.incomplete_grace_hours)
    dated = [s for s in sets if s.set_date is not None]
    # ISO dates sort as strings, so the newest set is the greatest id, whatever its status
    newest_any = _newest(dated)
    newest_complete = _newest(s for s in dated if s.status == "complete")
    newest_passed = _newest(s for s in dated if s.status == "complete" and s.drill == "passed")

    def age_days(state: SetState) -> int:
        assert state.set_date is not None
        return (today - state.set_date).days

    candidates = sorted(
        (s for s in dated if s.status == "complete" and age_days(s) >= policy.keep_days),
        key=lambda s: s.set_id,
        reverse=True,
    )
    gfs = _gfs_picks(candidates, policy)

    decisions: list[Decision] = []
    for state in sorted(sets, key=lambda s: s.set_id):
        decisions.append(
            _decide(
                state,
                policy,
                age=age_days(state) if state.set_date is not None else None,
                since_day_end=(
                    now - _end_of_day(state.set_date) if state.set_date is not None else None
                ),
                grace=grace,
                protected=[
                    reason
                    for set_id, reason in (
                        (newest_any, "newest set"),
                        (newest_complete, "newest complete set"),
                        (newest_passed, "newest set that passed its drill"),
                    )
                    if set_id == state.set_id
                ],
                gfs=gfs.get(state.set_id, []),
            )
        )
    return decisions


def _decide(
    state: SetState,
    policy: RetentionPolicy,
    *,
    age: int | None,
    since_day_end: timedelta | None,
    grace: timedelta,
    protected: list[str],
    gfs: list[str],
) -> Decision:
    """The decision for one set, given what the whole plan knows about it."""
    if age is None or since_day_end is None:
        return Decision(
            state.set_id,
            "report",
            [f"{state.detail or 'set id is not a YYYY-MM-DD date'}: reported, not deleted"],
            state.status,
        )
    if state.status == "unreadable":
        return Decision(
            state.set_id,
            "report",
            [f"manifest unreadable ({state.detail}): reported, not deleted"],
            state.status,
        )
    hours = policy.incomplete_grace_hours
    if state.status == "incomplete":
        if protected:
            return Decision(
                state.set_id,
                "keep",
                [*protected, "incomplete: may still be written"],
                state.status,
            )
        if since_day_end <= grace:
            return Decision(
                state.set_id,
                "keep",
                [f"incomplete for less than {hours} h: may still be written"],
                state.status,
            )
        return Decision(
            state.set_id,
            "delete",
            [f"incomplete for more than {hours} h (no {MANIFEST}: not a backup)"],
            state.status,
        )
    reasons = list(protected)
    if age < 0:
        reasons.append("dated in the future (check the clock)")
    elif age < policy.keep_days:
        reasons.append(f"younger than {policy.keep_days} days")
    reasons.extend(gfs)
    notes = ["its restore drill failed"] if state.drill == "failed" else []
    if state.detail:
        notes.append(state.detail)
    if reasons:
        return Decision(state.set_id, "keep", reasons + notes, state.status)
    return Decision(
        state.set_id,
        "delete",
        [f"older than {policy.keep_days} days and not kept by any rule", *notes],
        state.status,
    )


def kept_beyond_window(
    decisions: list[Decision], policy: RetentionPolicy, now: datetime
) -> list[str]:
    """Ids of the complete sets a plan keeps although they are ``keep_days`` old or more (by a
    grandfather-father-son rule, or as the newest complete or verified set): the bucket's
    default lock, which covers ``keep_days``, no longer protects them, so retention extends it."""
    today = _paris_today(now)
    return [
        d.set_id
        for d in decisions
        if d.action == "keep"
        and d.status == "complete"
        and (day := parse_set_date(d.set_id)) is not None
        and (today - day).days >= policy.keep_days
    ]


def decisions_markdown(decisions: list[Decision], states: list[SetState] | None = None) -> str:
    """A markdown table of the decisions (set, status, drill, action, reasons) for the UI."""
    by_id = {s.set_id: s for s in states or []}
    lines = ["| set | status | drill | action | reasons |", "|---|---|---|---|---|"]
    for d in decisions:
        state = by_id.get(d.set_id)
        cells = [
            d.set_id,
            state.status if state else (d.status or ""),
            state.drill if state else "",
            f"**{d.action}**" if d.action != "keep" else d.action,
            "; ".join(d.reasons),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if not decisions:
        lines.append("| (no sets) | | | | |")
    return "\n".join(lines)
