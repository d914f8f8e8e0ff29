"""Every metric the code can push, declared once: the contract with deploy/monitoring/.

The alert rules and the Grafana dashboard use exactly these names (a test cross-checks them);
``metric_samples.py`` turns an operation's outcome into samples of them, ``metrics.py`` pushes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


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

# --- JWT signing keys (operation="jwt_keys"), pushed after each rotation or prune, passed or not
JWT_KEYS_SUCCESS = MetricSpec(
    "twinme_jwt_keys_success",
    "1 if the last JWT key rotation or prune was verified against the API, 0 if it was rolled "
    "back.",
)
JWT_CURRENT_KEY_CREATED = MetricSpec(
    "twinme_jwt_current_key_created_timestamp_seconds",
    "Unix time the JWT key the API signs with was created (its age: how overdue a rotation is).",
)
JWT_KEYS_ACCEPTED = MetricSpec(
    "twinme_jwt_keys_accepted", "Number of JWT keys the API accepts (current + in their overlap)."
)

# --- capacity (operation="capacity"), pushed by capacity_report every week
CAPACITY_USED = MetricSpec(
    "twinme_capacity_used_bytes",
    "Size of each resource in the newest nightly set (database, Redis memory, files, backup "
    "set, bytes a backup reads).",
    ("resource",),
)
CAPACITY_GROWTH = MetricSpec(
    "twinme_capacity_growth_bytes_per_day",
    "Growth of each resource a day, fitted over the last weeks of nightly sets.",
    ("resource",),
)
CAPACITY_DAYS_LEFT = MetricSpec(
    "twinme_capacity_days_left",
    "Days until each resource reaches its limit at its fitted growth (absent: no limit, flat "
    "growth or too little history).",
    ("resource",),
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
        JWT_KEYS_SUCCESS,
        JWT_CURRENT_KEY_CREATED,
        JWT_KEYS_ACCEPTED,
        CAPACITY_USED,
        CAPACITY_GROWTH,
        CAPACITY_DAYS_LEFT,
    )
}
"""Every metric name the code can push: the contract with deploy/monitoring/."""

# A sample: (spec, labels, value)
Sample = tuple[MetricSpec, Mapping[str, str], float]
