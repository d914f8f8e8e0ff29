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
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import dagster as dg
from pydantic import Field

from twinme_ops.alerting.metric_samples import (
    DeployOutcome,
    DrillFigures,
    backup_samples,
    capacity_samples,
    deploy_samples,
    drill_samples,
    jwt_keys_samples,
    pitr_drill_samples,
    wal_archive_samples,
)
from twinme_ops.alerting.metric_specs import (
    METRICS,
    Sample,
)
from twinme_ops.common.log import Log
from twinme_ops.common.redact import redact

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

_fallback_log = logging.getLogger("twinme_ops.metrics")


def build_registry(samples: list[Sample]) -> CollectorRegistry:
    """A fresh registry holding exactly ``samples`` (not the process-wide default registry)."""
    # prometheus_client is imported by the first push, not with the code location
    from prometheus_client import CollectorRegistry, Gauge

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

    def push_jwt_keys(
        self,
        *,
        passed: bool,
        current_created: float | None,
        accepted: int | None,
        log: Log | None = None,
    ) -> bool:
        """After a JWT key rotation or prune: verdict, current key's creation, keys accepted."""
        return self._build_and_push(
            "jwt_keys",
            lambda: jwt_keys_samples(
                passed=passed, current_created=current_created, accepted=accepted
            ),
            log,
        )

    def push_capacity(
        self,
        resources: Sequence[tuple[str, float | None, float | None, float | None]],
        log: Log | None = None,
    ) -> bool:
        """After a capacity report: each resource's size, growth and days left (replaces the
        group, so a projection that lost its date does not keep the old one)."""
        return self._build_and_push("capacity", lambda: capacity_samples(resources), log)

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
        from twinme_ops.alerting.pushgateway import gateway_target, send_registry

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
