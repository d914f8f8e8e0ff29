"""Database tuning as converged state: each asset brings one aspect of the servers to its
declared state, changing only what differs and listing every statement it ran."""

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import dagster as dg

from twinme_ops.common.log import Log
from twinme_ops.common.redact import redact, register_secret
from twinme_ops.database.convergence import ConvergeReport
from twinme_ops.database.declared_state import DatabaseTuning
from twinme_ops.database.postgres.extensions import (
    MissingExtensionError,
    ensure_extensions,
    extensions_drift,
)
from twinme_ops.database.postgres.indexes.converge import IndexBuildError, converge_indexes
from twinme_ops.database.postgres.indexes.drift import indexes_drift
from twinme_ops.database.postgres.objects import PgObjectsError
from twinme_ops.database.postgres.partitions import converge_partitions, partitions_drift
from twinme_ops.database.postgres.publication import converge_publication, publication_drift
from twinme_ops.database.postgres.rls import converge_rls, rls_drift
from twinme_ops.database.postgres.settings.applier import SettingsApplier
from twinme_ops.database.postgres.settings.cnpg import Connect
from twinme_ops.database.postgres.settings.declared import InstanceResources, desired_settings
from twinme_ops.database.postgres.settings.drift import settings_drift
from twinme_ops.database.postgres.settings.live import SettingsError
from twinme_ops.database.redis.converge import converge_redis
from twinme_ops.database.redis.declared import desired_settings as redis_desired_settings
from twinme_ops.database.redis.template import load_template, render, write_rendered
from twinme_ops.defs.resources import twinme_env, twinme_home
from twinme_ops.servers.postgres import PostgresError, PostgresResource
from twinme_ops.servers.redis import RedisResource

EXTENSIONS = ("vector", "pg_trgm")
# Errors whose message names the problem and the fix: they fail only the affected asset
EXPECTED_ERRORS = (
    PgObjectsError,
    MissingExtensionError,
    SettingsError,
    IndexBuildError,
    PostgresError,
    ValueError,
)

Converge = Callable[[Any, DatabaseTuning, Log], ConvergeReport]
Drift = Callable[[Any, DatabaseTuning], list[str]]
Apply = Callable[[SettingsApplier, Connect, DatabaseTuning, Log], ConvergeReport]


def wanted_settings(tuning: DatabaseTuning) -> dict[str, str]:
    """Desired PostgreSQL settings from the declared instance resources and overrides."""
    resources = InstanceResources(
        memory_mb=tuning.memory_mb,
        cpus=tuning.cpus,
        storage=tuning.storage,
        max_connections=tuning.max_connections,
    )
    return desired_settings(resources, tuning.setting_overrides)


@dataclass(frozen=True)
class PgStep:
    """One aspect of PostgreSQL: how to converge it, how to measure its drift.

    A step converges on one connection (``converge``), or through the settings applier
    (``apply``), which opens its own connections: a rollout of the CloudNativePG Cluster
    restarts the server under it.
    """

    name: str
    description: str
    converge: Converge | None
    drift: Drift
    deps: tuple[str, ...] = ()
    apply: Apply | None = None


PG_STEPS = [
    PgStep(
        "postgres_extensions",
        "Extensions vector (pgvector) and pg_trgm exist in the TwinMe database; if the server "
        "lacks one, the error lists what it offers and how to install it.",
        lambda conn, t, log: ensure_extensions(conn, EXTENSIONS, log),
        lambda conn, t: extensions_drift(conn, EXTENSIONS),
    ),
    PgStep(
        "postgres_settings",
        "Server settings computed from the declared instance (memory, CPUs, storage, "
        "connections) with PGTune-style formulas plus overrides, written only where they "
        "differ by the configured applier: ALTER SYSTEM then pg_reload_conf() (settings that "
        "need a restart are reported as pending, never applied by restarting), or on "
        "CloudNativePG a merge patch of the Cluster's spec.postgresql.parameters, waiting for "
        "the operator's rollout (a rolling restart when a setting needs one).",
        None,
        lambda conn, t: settings_drift(conn, wanted_settings(t)),
        apply=lambda applier, connect, t, log: applier.apply(connect, wanted_settings(t), log),
    ),
    PgStep(
        "postgres_indexes",
        "The spec's indexes, built with CREATE INDEX CONCURRENTLY outside any transaction with "
        "lock and statement timeouts; INVALID leftovers are rebuilt. The vector index is HNSW "
        "(ivfflat only on a table with rows, lists from the row count).",
        lambda conn, t, log: converge_indexes(
            conn,
            vector_index=t.vector_index,
            lock_timeout=t.index_lock_timeout,
            statement_timeout=t.index_statement_timeout,
            log=log,
        ),
        lambda conn, t: indexes_drift(conn, vector_index=t.vector_index),
        deps=("postgres_extensions",),
    ),
    PgStep(
        "session_events_partitions",
        "Monthly partitions of session_events from the current month to N months ahead, "
        "created before they are needed.",
        lambda conn, t, log: converge_partitions(
            conn, months_ahead=t.partitions_months_ahead, log=log
        ),
        lambda conn, t: partitions_drift(conn, months_ahead=t.partitions_months_ahead),
    ),
    PgStep(
        "replication_publication",
        "Publication twinme_pub contains exactly users, conversations, messages, "
        "document_chunks and sessions.",
        lambda conn, t, log: converge_publication(conn, log),
        lambda conn, t: publication_drift(conn),
    ),
    PgStep(
        "row_level_security",
        "Role authenticated_users, function current_user_id() (reads the session setting "
        "app.current_user_id set by the API per request), RLS enabled and forced on "
        "conversations and messages, with the spec's policies.",
        lambda conn, t, log: converge_rls(conn, log),
        lambda conn, t: rls_drift(conn),
    ),
]


def report_metadata(report: ConvergeReport) -> dict[str, dg.MetadataValue]:
    """Changes as the statements run (secret-free), and what waits for a restart."""
    statements = report.statements()
    return {
        "changes": dg.MetadataValue.int(len(statements)),
        "statements": dg.MetadataValue.md(
            "\n".join(f"- `{s}`" for s in statements) if statements else "no change: no drift"
        ),
        "pending_restart": dg.MetadataValue.json(report.pending_restart),
        "notes": dg.MetadataValue.json(report.notes),
    }


def _finish(
    context: dg.AssetExecutionContext, step: PgStep, run: Callable[[], ConvergeReport]
) -> dg.MaterializeResult:
    """Run one step's convergence: an expected error fails the step with its fix, redacted."""
    try:
        report = run()
    except EXPECTED_ERRORS as exc:
        raise dg.Failure(description=f"{step.name}: {redact(exc)}") from None
    if report.pending_restart:
        context.log.warning(
            f"{step.name}: waiting for a server restart: {', '.join(report.pending_restart)}"
        )
    if not report.changed:
        context.log.info(f"{step.name}: no change (no drift)")
    return dg.MaterializeResult(metadata=report_metadata(report))


def _step_asset(step: PgStep) -> Callable[[Callable[..., Any]], dg.AssetsDefinition]:
    return dg.asset(
        name=step.name,
        group_name="database",
        pool="twinme_database",
        kinds={"postgres"},
        deps=list(step.deps),
        description=step.description,
    )


def _applied_asset(step: PgStep, apply: Apply) -> dg.AssetsDefinition:
    @_step_asset(step)
    def _converge(
        context: dg.AssetExecutionContext,
        postgres: PostgresResource,
        database_tuning: DatabaseTuning,
        postgres_settings_applier: SettingsApplier,
    ) -> dg.MaterializeResult:
        return _finish(
            context,
            step,
            lambda: apply(
                postgres_settings_applier,
                lambda: postgres.get_connection(autocommit=True),
                database_tuning,
                context.log,
            ),
        )

    return _converge


def _pg_asset(step: PgStep) -> dg.AssetsDefinition:
    if step.apply is not None:
        return _applied_asset(step, step.apply)
    converge = step.converge
    assert converge is not None, f"{step.name} has neither converge nor apply"

    @_step_asset(step)
    def _converge(
        context: dg.AssetExecutionContext,
        postgres: PostgresResource,
        database_tuning: DatabaseTuning,
    ) -> dg.MaterializeResult:
        def run() -> ConvergeReport:
            with postgres.get_connection(autocommit=True) as conn:
                return converge(conn, database_tuning, context.log)

        return _finish(context, step, run)

    return _converge


pg_tuning_assets = [_pg_asset(step) for step in PG_STEPS]


def redis_password(redis: RedisResource) -> str:
    """REDIS_PASSWORD, else the password in REDIS_URL; locally a throwaway one for the file."""
    password = os.environ.get("REDIS_PASSWORD") or unquote(
        urlsplit(redis.resolved_url()).password or ""
    )
    if not password:
        if twinme_env() == "production":
            raise dg.Failure(
                description="redis_configuration: no Redis password (REDIS_PASSWORD, or the "
                "password in REDIS_URL). Fix: set REDIS_PASSWORD; production.conf requires one."
            )
        # the sandbox Redis has no password; the rendered file still needs one
        password = secrets.token_urlsafe(24)
    register_secret(password)
    return password


@dg.asset(
    name="redis_configuration",
    group_name="database",
    kinds={"redis"},
    description=(
        "deploy/redis/production.conf rendered with the password from the environment and "
        "written (0600) where the Redis deployment reads it; runtime settings that differ are "
        "applied with CONFIG SET when CONFIG is available (it is renamed away in production: "
        "then the differences are reported for a restart)."
    ),
)
def redis_configuration(
    context: dg.AssetExecutionContext, redis: RedisResource, database_tuning: DatabaseTuning
) -> dg.MaterializeResult:
    rendered = render(load_template(), redis_password(redis))
    path = Path(database_tuning.redis_conf_path or twinme_home() / "redis" / "production.conf")
    write_rendered(rendered, path)
    client = redis.get_client()
    try:
        report = converge_redis(client, redis_desired_settings(rendered), context.log)
    finally:
        client.close()
    for note in report.notes:
        context.log.warning(f"redis_configuration: {note}")
    return dg.MaterializeResult(
        metadata={**report_metadata(report), "rendered_path": dg.MetadataValue.path(str(path))}
    )


database_assets = [*pg_tuning_assets, redis_configuration]
