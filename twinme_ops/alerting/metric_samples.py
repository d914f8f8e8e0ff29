"""What each operation's outcome becomes as metric samples: a backup set, a restore drill, a
point-in-time drill, a release attempt, a look at the WAL archive.

Plain values in, ``(spec, labels, value)`` samples out (specs in ``metric_specs.py``): the
operations hand over their results through the protocols below, so this imports no domain.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

from twinme_ops.alerting.metric_specs import (
    BACKUP_COMPONENT_DURATION,
    BACKUP_COMPONENT_SIZE,
    BACKUP_DURATION,
    BACKUP_LAST_SUCCESS,
    BACKUP_LAST_VERIFIED,
    BACKUP_SIZE,
    CAPACITY_DAYS_LEFT,
    CAPACITY_GROWTH,
    CAPACITY_USED,
    DEPLOY_LAST,
    DEPLOY_LOAD_ERROR_RATIO,
    DEPLOY_LOAD_P95,
    DEPLOY_ROLLBACK_HEALTHY,
    DEPLOY_ROLLED_BACK,
    DEPLOY_ROLLOUT_DURATION,
    DEPLOY_SUCCESS,
    DEPLOY_VERIFICATION_DURATION,
    DRILL_COMPONENT_RTO,
    DRILL_LAST_RUN,
    DRILL_RPO,
    DRILL_RTO,
    DRILL_SUCCESS,
    JWT_CURRENT_KEY_CREATED,
    JWT_KEYS_ACCEPTED,
    JWT_KEYS_SUCCESS,
    PITR_DRILL_RPO,
    PITR_DRILL_RTO,
    PITR_DRILL_SUCCESS,
    WAL_ARCHIVE_LAST_CHECK,
    WAL_ARCHIVE_RECEIVER_UP,
    WAL_ARCHIVE_RPO,
    Sample,
)


def _as_float(value: object) -> float | None:
    """A number read back from run metadata, or None when it is missing or not a number."""
    if not isinstance(value, int | float | str):
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _timestamp(iso: str) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except (TypeError, ValueError):
        return None


def backup_samples(manifest: Mapping[str, Any]) -> list[Sample]:
    """What a complete set's manifest tells Prometheus: when, how big, how long, per component."""
    arts: Mapping[str, Any] = manifest.get("artifacts", {})
    durations: Mapping[str, float] = manifest.get("durations_s", {})
    created = _timestamp(str(manifest.get("created_at", "")))
    samples: list[Sample] = [
        (BACKUP_LAST_SUCCESS, {}, created if created is not None else time.time()),
        (BACKUP_SIZE, {}, float(manifest.get("total_bytes", 0))),
    ]
    samples += [
        (BACKUP_COMPONENT_SIZE, {"component": c}, float(a["bytes_out"])) for c, a in arts.items()
    ]
    samples += [
        (BACKUP_COMPONENT_DURATION, {"component": c}, float(s)) for c, s in durations.items()
    ]
    if durations:
        samples.append((BACKUP_DURATION, {}, float(max(durations.values()))))
    return samples


class _TimedStep(Protocol):
    @property
    def duration_ms(self) -> float | None: ...


class _LoadFigures(Protocol):
    @property
    def p95_ms(self) -> float | None: ...
    @property
    def error_rate(self) -> float: ...


class VerificationFigures(Protocol):
    """What the metrics read of a release's verification (``release.verification``'s result
    fits): each step's duration, and the load test's p95 and error rate when it ran."""

    @property
    def steps(self) -> Sequence[_TimedStep]: ...
    @property
    def load_test(self) -> _LoadFigures | None: ...


class DrillFigures(Protocol):
    """What the metrics read of a restore drill (``backups.drill``'s result fits)."""

    @property
    def passed(self) -> bool: ...
    @property
    def rto_s(self) -> Mapping[str, float]: ...
    @property
    def rpo_s(self) -> float: ...
    @property
    def checked_at(self) -> str: ...


@dataclass(frozen=True)
class DeployOutcome:
    """How one release attempt ended (:meth:`MetricsResource.push_deploy` pushes it).

    The release builds one for the attempt (commit, rollout time, verification) and derives the
    ending from it: :meth:`verified` or :meth:`after_rollback`; as built, it is unproven.
    """

    sha: str
    success: bool = False
    rolled_back: bool = False
    # after a rollback only: whether the previous version is healthy again
    rollback_healthy: bool | None = None
    rollout_s: float | None = None
    # None when the verification did not run (the rollout failed, or no API URL)
    verification: VerificationFigures | None = None

    def verified(self) -> DeployOutcome:
        """This attempt, deployed and verified."""
        return replace(self, success=True, rolled_back=False, rollback_healthy=None)

    def after_rollback(self, healthy: bool) -> DeployOutcome:
        """This attempt, failed and rolled back; ``healthy``: the previous version verified."""
        return replace(self, success=False, rolled_back=True, rollback_healthy=healthy)


def drill_samples(
    *, passed: bool, rto_s: Mapping[str, float], rpo_s: float, checked_at: str
) -> list[Sample]:
    """A drill's verdict, RTO and RPO; on pass also the verified set's creation time."""
    samples: list[Sample] = [
        (DRILL_SUCCESS, {}, 1.0 if passed else 0.0),
        (DRILL_RTO, {}, float(sum(rto_s.values()))),
        (DRILL_LAST_RUN, {}, time.time()),
    ]
    samples += [(DRILL_COMPONENT_RTO, {"component": c}, float(s)) for c, s in rto_s.items()]
    started = _timestamp(checked_at)
    if started is not None:
        samples.append((DRILL_RPO, {}, float(rpo_s)))
        if passed:
            # the set's own age counts, not the drill's: an old set drilled today is still old
            samples.append((BACKUP_LAST_VERIFIED, {}, started - rpo_s))
    return samples


def pitr_drill_samples(*, passed: bool, rto_s: float | None, rpo_s: float | None) -> list[Sample]:
    """A point-in-time drill's verdict, and its RTO and RPO when it measured them."""
    samples: list[Sample] = [(PITR_DRILL_SUCCESS, {}, 1.0 if passed else 0.0)]
    if rto_s is not None:
        samples.append((PITR_DRILL_RTO, {}, float(rto_s)))
    if rpo_s is not None:
        samples.append((PITR_DRILL_RPO, {}, float(rpo_s)))
    return samples


def deploy_samples(outcome: DeployOutcome) -> list[Sample]:
    """One release attempt's outcome, with the verification's timings when it ran."""
    labels = {"sha": outcome.sha or "unknown"}
    samples: list[Sample] = [
        (DEPLOY_SUCCESS, labels, 1.0 if outcome.success else 0.0),
        (DEPLOY_ROLLED_BACK, labels, 1.0 if outcome.rolled_back else 0.0),
        (DEPLOY_LAST, {}, time.time()),
    ]
    if outcome.rolled_back and outcome.rollback_healthy is not None:
        healthy = 1.0 if outcome.rollback_healthy else 0.0
        samples.append((DEPLOY_ROLLBACK_HEALTHY, labels, healthy))
    rollout = _as_float(outcome.rollout_s)
    if rollout is not None:
        samples.append((DEPLOY_ROLLOUT_DURATION, {}, rollout))
    verification = outcome.verification
    if verification is not None:
        took_ms = [s.duration_ms for s in verification.steps if s.duration_ms is not None]
        samples.append((DEPLOY_VERIFICATION_DURATION, {}, sum(took_ms) / 1000))
        load = verification.load_test
        if load is not None:
            if load.p95_ms is not None:
                samples.append((DEPLOY_LOAD_P95, {}, load.p95_ms / 1000))
            samples.append((DEPLOY_LOAD_ERROR_RATIO, {}, float(load.error_rate)))
    return samples


def wal_archive_samples(
    rpo_s: float | None, receiver_up: bool, checked_at: float | None = None
) -> list[Sample]:
    """One RPO measurement: the RPO (left out when unknown), the receiver, the time."""
    samples: list[Sample] = [
        (WAL_ARCHIVE_RECEIVER_UP, {}, 1.0 if receiver_up else 0.0),
        (WAL_ARCHIVE_LAST_CHECK, {}, checked_at if checked_at is not None else time.time()),
    ]
    if rpo_s is not None:
        samples.insert(0, (WAL_ARCHIVE_RPO, {}, float(rpo_s)))
    return samples


def jwt_keys_samples(
    *, passed: bool, current_created: float | None, accepted: int | None
) -> list[Sample]:
    """A JWT key rotation or prune: its verdict, the current key's creation time and how many
    keys the API accepts (the last two left out when unknown)."""
    samples: list[Sample] = [(JWT_KEYS_SUCCESS, {}, 1.0 if passed else 0.0)]
    if current_created is not None:
        samples.append((JWT_CURRENT_KEY_CREATED, {}, float(current_created)))
    if accepted is not None:
        samples.append((JWT_KEYS_ACCEPTED, {}, float(accepted)))
    return samples


def capacity_samples(
    resources: Sequence[tuple[str, float | None, float | None, float | None]],
) -> list[Sample]:
    """``(resource, used bytes, growth bytes a day, days left)`` per resource; unknowns are
    left out, so an alert on days left never reads a stale or made-up value."""
    samples: list[Sample] = []
    for resource, used, growth, days_left in resources:
        for spec, value in ((CAPACITY_USED, used), (CAPACITY_GROWTH, growth)):
            if value is not None:
                samples.append((spec, {"resource": resource}, float(value)))
        if days_left is not None:
            samples.append((CAPACITY_DAYS_LEFT, {"resource": resource}, float(days_left)))
    return samples
