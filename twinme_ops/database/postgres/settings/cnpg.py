"""PostgreSQL settings on CloudNativePG: patch the Cluster's parameters, wait for the rollout.

CloudNativePG refuses ``ALTER SYSTEM`` (``enableAlterSystem`` is false by default): it writes
the server's configuration itself, from the Cluster's ``spec.postgresql.parameters``. So in
production the same declared settings go there instead:

1. Refuse what the operator fixes itself (:data:`FIXED_PARAMETERS`, and ``wal_level`` /
   ``wal_log_hints`` values it refuses for a replicated cluster), and names the server does not
   know (read from ``pg_settings``), before anything changes.
2. One JSON merge patch of exactly the declared keys whose value in the spec differs: a
   parameter this tool does not declare (``archive_timeout`` in deploy/postgres/) is never
   touched, let alone removed.
3. Wait, polling the Cluster's ``status.phase`` and the server's ``pg_settings`` (a new
   connection each time: a switchover ends the old one), until the phase is
   ``Cluster in healthy state`` and the server applies every declared value. A reload-only
   change never leaves the healthy phase; a restart-only one makes the operator restart the
   instances one at a time, replicas first, then the primary as ``primaryUpdateMethod`` says
   (``switchover``: a replica is promoted; ``restart``: in place). With
   ``primaryUpdateStrategy: supervised`` the operator stops before the primary ("Waiting for
   user action"): the wait ends there and the settings are reported as pending a restart, with
   the command a person runs. Progress (each phase) is logged; a timeout is an error that says
   what still differs.

The drift check stays the same for both appliers: ``pg_settings`` against the declared state.
No Dagster in this module.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from twinme_ops.common.log import Log
from twinme_ops.common.redact import redact
from twinme_ops.database.convergence import ConvergeReport
from twinme_ops.database.postgres.objects import first_line
from twinme_ops.database.postgres.settings.cnpg_api import (
    ClusterApi,
    ClusterSettingsError,
    ClusterTarget,
    spec_parameters,
    status_phase,
)
from twinme_ops.database.postgres.settings.declared import refuse_unmanaged
from twinme_ops.database.postgres.settings.drift import OK, OVERRIDDEN, assess
from twinme_ops.database.postgres.settings.live import read_settings
from twinme_ops.database.postgres.settings.values import same_value
from twinme_ops.servers.postgres import PostgresError

if TYPE_CHECKING:
    import psycopg

Connect = Callable[[], AbstractContextManager["psycopg.Connection[Any]"]]


def _operational_error() -> type[Exception]:
    import psycopg

    return psycopg.OperationalError


TARGET_SETTINGS = "postgres_settings"
# a log line at least this often while the rollout goes on in one phase
PROGRESS_EVERY_S = 60.0
HEALTHY = "Cluster in healthy state"
# the operator stopped before restarting the primary: a person must (supervised strategy)
WAITING_FOR_PERSON = frozenset({"Waiting for user action"})
# phases no amount of waiting ends
STOPPED = frozenset(
    {
        "Cluster is unrecoverable and needs manual intervention",
        "Invalid cluster definition",
        "Cluster cannot proceed to reconciliation due to an unknown plugin being required",
        "Cluster cannot proceed to reconciliation due to an error while interacting with plugins",
        "Cluster has incomplete or invalid image catalog",
        "Unable to create required cluster objects",
    }
)

# CloudNativePG's FixedConfigurationParameters (pkg/postgres/configuration.go, commit a95a534, the
# CRDs of schemas/cnpg/): the operator sets them itself, and its webhook refuses a user value.
FIXED_PARAMETERS = frozenset(
    {
        "allow_system_table_mods", "archive_mode", "bonjour", "bonjour_name", "cluster_name",
        "config_file", "data_directory", "data_sync_retry", "event_source", "external_pid_file",
        "hba_file", "hot_standby", "ident_file", "jit_provider", "listen_addresses",
        "logging_collector", "port", "primary_conninfo", "primary_slot_name", "recovery_target",
        "recovery_target_action", "recovery_target_inclusive", "recovery_target_lsn",
        "recovery_target_name", "recovery_target_time", "recovery_target_timeline",
        "recovery_target_xid", "restore_command", "shared_preload_libraries",
        "temp_tablespaces", "unix_socket_directories", "unix_socket_group",
        "unix_socket_permissions", "archive_cleanup_command", "archive_command",
        "log_destination", "log_directory", "log_file_mode", "log_filename", "log_rotation_age",
        "log_rotation_size", "log_truncate_on_rotation", "pg_failover_slots.primary_dsn",
        "pg_failover_slots.standby_slot_names", "promote_trigger_file", "recovery_end_command",
        "recovery_min_apply_delay", "restart_after_crash", "ssl", "ssl_ca_file",
        "ssl_cert_file", "ssl_crl_file", "ssl_dh_params_file", "ssl_key_file",
        "ssl_passphrase_command", "ssl_passphrase_command_supports_reload",
        "ssl_prefer_server_ciphers", "stats_temp_directory", "synchronous_standby_names",
        "synchronized_standby_slots", "syslog_facility", "syslog_ident",
        "syslog_sequence_numbers", "syslog_split_messages",
    }
)  # fmt: skip


def refuse_fixed(desired: Mapping[str, str], instances: int = 1) -> None:
    """Raise :class:`ClusterSettingsError` for what CloudNativePG would refuse or overwrite.

    ``instances`` is the Cluster's: with replicas, ``wal_level`` must stay ``replica`` or
    ``logical`` and ``wal_log_hints`` on (the operator's webhook, ``validateConfiguration``).
    """
    problems = []
    fixed = sorted(n for n in desired if n.lower() in FIXED_PARAMETERS)
    if fixed:
        problems.append(
            f"{', '.join(fixed)}: CloudNativePG sets {'it' if len(fixed) == 1 else 'them'} "
            "itself (a fixed parameter: archiving, replication, listening, TLS, logging and "
            "recovery belong to the operator), and refuses a value in spec.postgresql.parameters"
        )
    wal_level = str(desired.get("wal_level", "")).strip().lower()
    if wal_level and wal_level not in ("replica", "logical"):
        problems.append(f"wal_level={wal_level}: the Cluster archives WAL and has replicas")
    hints = desired.get("wal_log_hints")
    if hints is not None and instances > 1 and not same_value("on", hints, "bool", None):
        problems.append(f"wal_log_hints={hints}: must be on with {instances} instances")
    if problems:
        raise ClusterSettingsError(
            "refusing to patch the Cluster's parameters: "
            + "; ".join(problems)
            + ". Fix: remove these from the declared settings (setting_overrides); configure "
            "what they control through the Cluster's own fields (deploy/postgres/30-cluster.yaml)"
        )


def _restart_advice(spec: Mapping[str, Any]) -> str:
    method = spec.get("primaryUpdateMethod") or "restart"
    strategy = spec.get("primaryUpdateStrategy") or "unsupervised"
    if strategy == "supervised":
        return (
            "CloudNativePG restarts the replicas, then waits for a person to restart the primary "
            "(primaryUpdateStrategy supervised)"
        )
    how = "a switchover to an updated replica" if method == "switchover" else "an in-place restart"
    return (
        "CloudNativePG restarts the instances one at a time, replicas first, then the primary "
        f"by {how} (primaryUpdateMethod {method})"
    )


def converge_cluster_settings(
    target: ClusterTarget,
    connect: Connect,
    desired: Mapping[str, str],
    log: Log,
    *,
    timeout_s: float,
    poll_interval_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> ConvergeReport:
    """Bring the Cluster's parameters to ``desired`` and wait until the server applies them.

    ``connect`` opens an autocommit connection to the primary (``DATABASE_URL``: the ``-rw``
    Service). Returns a report whose changes are the patched parameters (none on a second
    run) and whose ``pending_restart`` lists what waits for a person. Raises
    :class:`ClusterSettingsError` (refused parameter, API failure, timeout, a failed Cluster),
    :class:`~.live.UnknownSettingError` for a name the server does not know, and ValueError for
    ``shared_preload_libraries`` (as the ALTER SYSTEM path).
    """
    refuse_unmanaged(desired)
    api = ClusterApi(target)
    cluster = api.read()
    spec = cluster.get("spec") or {}
    refuse_fixed(desired, int(spec.get("instances") or 1))
    names = list(desired)
    with connect() as conn:
        states = read_settings(conn, names)  # unknown names are refused before any change
    current = spec_parameters(cluster)
    changes = {
        name: str(want)
        for name, want in desired.items()
        if not states[name].same(str(want), current.get(name))
    }
    report = ConvergeReport()
    if changes:
        log.info(f"{target}: patching {len(changes)} parameter(s) via {api.source}")
        api.patch_parameters(changes)
        for name, want in changes.items():
            report.add(
                TARGET_SETTINGS,
                f"PATCH {target}: spec.postgresql.parameters.{name} = {want!r}",
                log,
                detail=f"{current.get(name, '(unset)')} -> {want}",
            )
        restart = sorted(n for n in changes if states[n].restart_only)
        if restart:
            log.info(f"{', '.join(restart)} only apply at a restart: {_restart_advice(spec)}")
    pending, notes = _wait_for_rollout(
        api, connect, desired, log, timeout_s, poll_interval_s, clock, sleep
    )
    report.pending_restart.extend(pending)
    report.notes.extend(notes)
    return report


def _wait_for_rollout(
    api: ClusterApi,
    connect: Connect,
    desired: Mapping[str, str],
    log: Log,
    timeout_s: float,
    poll_interval_s: float,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> tuple[list[str], list[str]]:
    """Poll until healthy with every value applied: ``(pending restart, notes)``."""
    target = api.target
    started = clock()
    deadline = started + timeout_s
    next_progress = started + PROGRESS_EVERY_S
    seen: tuple[str, str] | None = None
    problem = ""
    while True:
        try:
            cluster = api.read()
        except ClusterSettingsError as exc:
            if not exc.transient or clock() >= deadline:
                raise
            log.warning(f"{target}: {exc} (retrying)")
            sleep(poll_interval_s)
            continue
        phase, reason = status_phase(cluster)
        if (phase, reason) != seen:
            log.info(f"{target}: phase {phase or '(none yet)'}" + (f": {reason}" if reason else ""))
            seen = (phase, reason)
        if phase in STOPPED:
            raise ClusterSettingsError(
                f"{target} is in phase {phase!r} ({reason or 'no reason given'}): the operator "
                f"will not apply the settings. Fix: kubectl -n {target.namespace} describe "
                f"cluster {target.cluster} and the operator's log; correct the Cluster, then "
                "re-run database_tuning_job"
            )
        try:
            with connect() as conn:
                states = read_settings(conn, list(desired))
        except (PostgresError, _operational_error()) as exc:
            # a restart or switchover in progress: the -rw Service has no primary for a moment
            problem = f"the server is unreachable ({first_line(exc)})"
        else:
            verdicts = {name: assess(str(want), states[name]) for name, want in desired.items()}
            left = {
                n: msg for n, (status, msg) in verdicts.items() if status not in (OK, OVERRIDDEN)
            }
            notes = [msg for status, msg in verdicts.values() if status == OVERRIDDEN]
            if not left and phase == HEALTHY:
                log.info(
                    f"{target}: healthy after {clock() - started:.0f} s, and the server applies "
                    "every declared setting"
                )
                return [], notes
            if phase in WAITING_FOR_PERSON:
                pending = sorted(left)
                advice = (
                    f"{target} waits for a person to restart its primary ({reason or phase}): "
                    f"kubectl cnpg restart {target.cluster} <primary> -n {target.namespace} (in "
                    f"place) or kubectl cnpg promote {target.cluster} <replica> -n "
                    f"{target.namespace} (switchover); until then the drift check warns"
                )
                log.warning(advice)
                return pending, [*notes, advice]
            problem = "; ".join(left.values()) if left else "the Cluster is not healthy yet"
        now = clock()
        if now >= deadline:
            raise ClusterSettingsError(
                f"{target}: the operator did not finish applying the settings within "
                f"{timeout_s:g} s (phase {phase or 'none'}{': ' + reason if reason else ''}; "
                f"{redact(problem)}). Fix: look at `kubectl cnpg status {target.cluster} -n "
                f"{target.namespace}` and the operator's log; the Cluster already holds the "
                "declared values and the operator goes on: re-run database_tuning_job once it "
                "is healthy (a second run changes nothing and waits again)"
            )
        if now >= next_progress:
            log.info(f"{target}: still waiting after {now - started:.0f} s: {redact(problem)}")
            next_progress = now + PROGRESS_EVERY_S
        sleep(poll_interval_s)


__all__ = [
    "FIXED_PARAMETERS",
    "HEALTHY",
    "STOPPED",
    "WAITING_FOR_PERSON",
    "Connect",
    "converge_cluster_settings",
    "refuse_fixed",
]
