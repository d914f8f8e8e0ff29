"""Operation metrics pushed to a Prometheus Pushgateway, for the alerts and the Grafana dashboard.

Backups, restore drills and releases are batch work: Prometheus cannot scrape them, so each one
pushes its outcome to a Pushgateway (``TWINME_PUSHGATEWAY_URL``), which Prometheus scrapes with
``honor_labels``. Every metric the code can push is declared in :data:`METRICS`; the alert rules
and the dashboard under ``deploy/monitoring/`` use exactly these names (a test cross-checks them).

A push never fails the operation it reports on: without a gateway the metrics are only logged,
and a gateway that cannot be reached costs a warning in the run's log (URL password redacted).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Protocol

import dagster as dg
from prometheus_client import CollectorRegistry, Gauge
from pydantic import Field

from twinme_ops.alerting.pushgateway import gateway_target, send_registry
from twinme_ops.common.log import Log
from twinme_ops.common.redact import redact

_fallback_log = logging.getLogger("twinme_ops.metrics")


@dataclass(frozen=True)
class MetricSpec:
    """One gauge the code pushes: its name, help text and label names."""

    name: str
    help: str
    labels: tuple[str, ...] = ()


# --- backup_set (operation="backup"), pushed when a set's manifest is written
BACKUP_LAST_SUCCESS = MetricSpec(
    "twinme_backup_last_success_timestamp_seconds",
    "Unix time at which the newest complete backup set (manifest written) was created.",
)
BACKUP_SIZE = MetricSpec(
    "twinme_backup_size_bytes", "Stored size of the newest complete backup set, all components."
)
BACKUP_COMPONENT_SIZE = MetricSpec(
    "twinme_backup_component_size_bytes",
    "Stored (compressed, encrypted) size of each component of the newest complete set.",
    ("component",),
)
BACKUP_COMPONENT_DURATION = MetricSpec(
    "twinme_backup_component_duration_seconds",
    "Time each component's backup took in the newest complete set.",
    ("component",),
)
BACKUP_DURATION = MetricSpec(
    "twinme_backup_duration_seconds",
    "Duration of the newest complete set's slowest component (components may run in parallel).",
)

# --- restore drill (operation="restore_drill"), pushed on pass and on failure
DRILL_SUCCESS = MetricSpec(
    "twinme_restore_drill_success", "1 if the last restore drill passed, 0 if it failed."
)
DRILL_RTO = MetricSpec(
    "twinme_restore_drill_rto_seconds",
    "Recovery time measured by the last restore drill (all components).",
)
DRILL_COMPONENT_RTO = MetricSpec(
    "twinme_restore_drill_component_rto_seconds",
    "Recovery time of each component in the last restore drill.",
    ("component",),
)
DRILL_RPO = MetricSpec(
    "twinme_restore_drill_rpo_seconds",
    "Age of the drilled set when the last drill started (data lost if restored then).",
)
DRILL_LAST_RUN = MetricSpec(
    "twinme_restore_drill_last_run_timestamp_seconds", "Unix time the last restore drill ran."
)
BACKUP_LAST_VERIFIED = MetricSpec(
    "twinme_backup_last_verified_timestamp_seconds",
    "Creation time of the last backup set that passed its restore drill (pushed on pass only).",
)

# --- point-in-time drill (operation="pitr_drill"), pushed on pass and on failure
PITR_DRILL_SUCCESS = MetricSpec(
    "twinme_pitr_drill_success", "1 if the last point-in-time drill passed, 0 if it failed."
)
PITR_DRILL_RTO = MetricSpec(
    "twinme_pitr_drill_rto_seconds",
    "Time the last point-in-time drill's restore to the latest point took (copy + replay).",
)
PITR_DRILL_RPO = MetricSpec(
    "twinme_pitr_drill_rpo_seconds",
    "Achieved RPO of the last point-in-time drill: newest heartbeat written minus newest restored.",
)

# --- release (operation="release"), pushed once per release attempt, replacing the last one
DEPLOY_SUCCESS = MetricSpec(
    "twinme_deploy_success", "1 if the last release was deployed and verified, else 0.", ("sha",)
)
DEPLOY_ROLLED_BACK = MetricSpec(
    "twinme_deploy_rolled_back",
    "1 if the last release was rolled back to the previous image, else 0.",
    ("sha",),
)
DEPLOY_ROLLBACK_HEALTHY = MetricSpec(
    "twinme_deploy_rollback_healthy",
    "After a rollback only: 1 if the previous version is healthy again, 0 if it is not.",
    ("sha",),
)
DEPLOY_LAST = MetricSpec(
    "twinme_deploy_last_timestamp_seconds", "Unix time of the last release attempt's outcome."
)
DEPLOY_ROLLOUT_DURATION = MetricSpec(
    "twinme_deploy_rollout_duration_seconds",
    "Time the last release's rollout took (until ready, or until it failed).",
)
DEPLOY_VERIFICATION_DURATION = MetricSpec(
    "twinme_deploy_verification_duration_seconds",
    "Time the last release's verification took (probes, database, Redis, load test).",
)
DEPLOY_LOAD_P95 = MetricSpec(
    "twinme_deploy_load_test_p95_seconds", "p95 latency measured by the last release's load test."
)
DEPLOY_LOAD_ERROR_RATIO = MetricSpec(
    "twinme_deploy_load_test_error_ratio",
    "Failed requests / requests in the last release's load test.",
)

# --- WAL archive (operation="wal_archive"), pushed by wal_archive_rpo_sensor every 30 s
WAL_ARCHIVE_RPO = MetricSpec(
    "twinme_wal_archive_rpo_seconds",
    "Recovery point of the local WAL archive: 0 when it holds everything the server wrote, "
    "else the age of the newest heartbeat it holds (docs/backups.md).",
)
WAL_ARCHIVE_RECEIVER_UP = MetricSpec(
    "twinme_wal_archive_receiver_up", "1 if the WAL receiver (pg_receivewal) runs, else 0."
)
WAL_ARCHIVE_LAST_CHECK = MetricSpec(
    "twinme_wal_archive_last_check_timestamp_seconds",
    "Unix time the WAL archive's RPO was last measured.",
)

METRICS: dict[str, MetricSpec] = {
    m.name: m
    for m in (
        BACKUP_LAST_SUCCESS,
        BACKUP_SIZE,
        BACKUP_COMPONENT_SIZE,
        BACKUP_COMPONENT_DURATION,
        BACKUP_DURATION,
        DRILL_SUCCESS,
        DRILL_RTO,
        DRILL_COMPONENT_RTO,
        DRILL_RPO,
        DRILL_LAST_RUN,
        BACKUP_LAST_VERIFIED,
        PITR_DRILL_SUCCESS,
        PITR_DRILL_RTO,
        PITR_DRILL_RPO,
        DEPLOY_SUCCESS,
        DEPLOY_ROLLED_BACK,
        DEPLOY_ROLLBACK_HEALTHY,
        DEPLOY_LAST,
        DEPLOY_ROLLOUT_DURATION,
        DEPLOY_VERIFICATION_DURATION,
        DEPLOY_LOAD_P95,
        DEPLOY_LOAD_ERROR_RATIO,
        WAL_ARCHIVE_RPO,
        WAL_ARCHIVE_RECEIVER_UP,
        WAL_ARCHIVE_LAST_CHECK,
    )
}
"""Every metric name the code can push: the contract with deploy/monitoring/."""

# A sample: (spec, labels, value)
Sample = tuple[MetricSpec, Mapping[str, str], float]


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


def build_registry(samples: list[Sample]) -> CollectorRegistry:
    """A fresh registry holding exactly ``samples`` (not the process-wide default registry)."""
    registry = CollectorRegistry(auto_describe=True)
    gauges: dict[str, Gauge] = {}
    for spec, labels, value in samples:
        if spec.name not in METRICS:
            raise ValueError(f"metric {spec.name} is not declared in twinme_ops.alerting.metrics")
        gauge = gauges.get(spec.name)
        if gauge is None:
            gauge = Gauge(spec.name, spec.help, spec.labels, registry=registry)
            gauges[spec.name] = gauge
        (gauge.labels(**labels) if spec.labels else gauge).set(value)
    return registry


class MetricsResource(dg.ConfigurableResource):
    """Pushes operation metrics to a Prometheus Pushgateway (``TWINME_PUSHGATEWAY_URL``).

    Each operation is one group on the gateway, keyed by ``job``, ``operation`` and
    ``environment``. Pushes never raise: without a gateway URL the samples are logged; a failed
    push is a warning in the run's log.
    """

    pushgateway_url: str = Field(
        default="",
        description="Pushgateway base URL, e.g. http://pushgateway.monitoring:9091 (basic auth "
        "as http://user:password@host:9091). Empty: metrics are logged, not pushed.",
    )
    job: str = Field(default="twinme_ops", description="The `job` label of every pushed group.")
    environment: str = Field(
        default="local", description="The `environment` label of every pushed group."
    )
    timeout_s: float = Field(default=10, gt=0, description="HTTP timeout of one push.")

    def push_backup(self, manifest: Mapping[str, Any], log: Log | None = None) -> bool:
        """After a backup set is complete: its time, total and per-component size and duration."""
        return self._build_and_push("backup", lambda: backup_samples(manifest), log)

    def push_drill(self, result: DrillFigures, log: Log | None = None) -> bool:
        """After a restore drill, passed or not: verdict, RTO, RPO.

        Added to the group rather than replacing it, so a failed drill keeps the time of the last
        verified set, which the backup-age alert reads.
        """
        return self._build_and_push(
            "restore_drill",
            lambda: drill_samples(
                passed=result.passed,
                rto_s=result.rto_s,
                rpo_s=result.rpo_s,
                checked_at=result.checked_at,
            ),
            log,
            replace=False,
        )

    def push_pitr_drill(
        self, *, passed: bool, rto_s: float | None, rpo_s: float | None, log: Log | None = None
    ) -> bool:
        """After a point-in-time drill, passed or not: verdict, RTO (latest restore), RPO."""
        return self._build_and_push(
            "pitr_drill",
            lambda: pitr_drill_samples(passed=passed, rto_s=rto_s, rpo_s=rpo_s),
            log,
        )

    def push_deploy(
        self, outcome: DeployOutcome | None = None, /, *, log: Log | None = None, **fields: Any
    ) -> bool:
        """After a release attempt: success or rollback (and whether the rollback is healthy).

        ``outcome``, or its fields as keywords (``push_deploy(sha=..., success=...,
        rolled_back=...)``, the older form). Replaces the previous release's group, so a
        rollback's metrics end with the next release.
        """
        record = outcome if outcome is not None else DeployOutcome(**fields)
        return self._build_and_push("release", lambda: deploy_samples(record), log)

    def push_wal_archive(
        self, rpo_s: float | None, receiver_up: bool, log: Log | None = None
    ) -> bool:
        """After each RPO measurement: the RPO and whether the receiver runs (replaces the
        group, so an RPO that became unknown is not left at its last value)."""
        return self._build_and_push(
            "wal_archive", lambda: wal_archive_samples(rpo_s, receiver_up), log
        )

    def _build_and_push(
        self,
        operation: str,
        build: Callable[[], list[Sample]],
        log: Log | None,
        replace: bool = True,
    ) -> bool:
        # an unexpected record (a manifest from an older format, say) costs a warning, not a run
        try:
            samples = build()
            build_registry(samples)
        except Exception as exc:
            (_fallback_log if log is None else log).warning(
                f"{operation} metrics not pushed: they could not be built ({redact(exc)})"
            )
            return False
        return self.push(operation, samples, log=log, replace=replace)

    @property
    def gateway_display(self) -> str:
        """The gateway URL without its password, for messages."""
        return redact(self.pushgateway_url)

    def grouping_key(self, operation: str) -> dict[str, str]:
        """Labels (besides ``job``) that name the operation's group on the gateway."""
        return {"operation": operation, "environment": self.environment}

    def push(
        self,
        operation: str,
        samples: list[Sample],
        *,
        log: Log | None = None,
        replace: bool = True,
    ) -> bool:
        """Push ``samples`` as the operation's group (PUT when ``replace``, else POST: only
        metrics of the same name are replaced). Returns whether the gateway accepted them."""
        logger = _fallback_log if log is None else log
        registry = build_registry(samples)
        summary = ", ".join(
            f"{spec.name}{_fmt_labels(labels)}={value:.15g}" for spec, labels, value in samples
        )
        if not self.pushgateway_url:
            # debug: locally (no gateway) this is expected, and a person reads the run's summary
            logger.debug(
                f"{operation} metrics not pushed (TWINME_PUSHGATEWAY_URL unset): {summary}"
            )
            return False
        try:
            gateway, handler = gateway_target(self.pushgateway_url)
        except ValueError as exc:
            logger.warning(f"{operation} metrics not pushed: {exc}")
            return False
        try:
            send_registry(
                gateway,
                handler,
                job=self.job,
                registry=registry,
                grouping_key=self.grouping_key(operation),
                timeout_s=self.timeout_s,
                replace=replace,
            )
        except Exception as exc:  # monitoring must never fail the operation it reports on
            logger.warning(
                f"{operation} metrics not pushed to the Pushgateway at {self.gateway_display} "
                f"({type(exc).__name__}: {redact(exc)}); the operation itself is unaffected. "
                "Fix: check TWINME_PUSHGATEWAY_URL and that the gateway is reachable."
            )
            return False
        logger.info(f"pushed {len(samples)} {operation} metrics to {self.gateway_display}")
        return True


def _fmt_labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"
