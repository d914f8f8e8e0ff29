"""recover_job: the guarded production recovery (manual only, never scheduled)."""

import os
from urllib.parse import urlsplit

import dagster as dg
from pydantic import Field

from twinme_ops.access.approvals import LAUNCHED_BY_TAG, ApprovalRefused
from twinme_ops.access.recovery_gate import (
    ApprovalTimeout,
    RecoveryApprovalResource,
    wait_for_approval,
)
from twinme_ops.alerting.messages import approval_needed, recovery_success
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.backups.crypto import BackupEncryption
from twinme_ops.backups.pitr.archive import WalArchive
from twinme_ops.backups.recovery import (
    RecoveryError,
    RecoveryState,
    RecoveryTargets,
    check_postgres_target,
    check_request,
    resolve_set,
    restore_files,
    restore_postgres,
    restore_redis,
    verify_services,
    verify_set,
)
from twinme_ops.backups.recovery_pitr import (
    check_point_target,
    live_system_identifier,
    restore_postgres_to_point,
)
from twinme_ops.backups.store.base import BackupStore
from twinme_ops.backups.take import Sources, backup_all
from twinme_ops.common.redact import redact
from twinme_ops.defs.alerts.hooks import slack_on_failure, step_where
from twinme_ops.defs.executors import PodResources
from twinme_ops.defs.resources import twinme_env
from twinme_ops.servers.files import FileStorageResource
from twinme_ops.servers.kube import KubernetesResource
from twinme_ops.servers.postgres import PostgresResource
from twinme_ops.servers.redis import RedisResource


class RecoverConfig(dg.Config):
    """What to restore, where, and the operator's confirmation."""

    set_id: str = Field(
        default="",
        description="Backup set id (YYYY-MM-DD), or latest-verified. Required, except for a "
        "point-in-time recovery of postgres alone (target_time, components: [postgres]).",
    )
    target_time: str = Field(
        default="",
        description="Point-in-time recovery of PostgreSQL from the WAL archive (either "
        "engine; with cloudnative-pg, from the Barman Cloud plugin's bucket): "
        "ISO 8601 with a time zone (2026-12-05T09:14:00+01:00), or latest. Empty: PostgreSQL "
        "comes from the set. Redis and files always come from the set.",
    )
    components: list[str] = Field(
        default=["postgres", "redis", "files"], description="Any of postgres, redis, files."
    )
    confirm: str = Field(
        default="",
        description="Must equal the target database name: the recovery refuses to start without.",
    )
    target_database_url: str = Field(
        default="", description="Override DATABASE_URL (prefer the environment: no secrets here)."
    )
    target_redis_url: str = Field(default="", description="Override REDIS_URL.")
    target_files_dir: str = Field(default="", description="Override TWINME_FILES_DIR.")
    api_url: str = Field(
        default="",
        description="API base URL whose /health and /ready are checked. Empty: TWINME_API_URL "
        "if set, else no HTTP check.",
    )
    approval_wait_minutes: float = Field(
        default=30,
        gt=0,
        le=24 * 60,
        description="How long recovery_approval waits for a second person before the run "
        "stops (nothing changed).",
    )


def _targets(config: RecoverConfig) -> RecoveryTargets:
    """Target overrides from the run config, which the UI shows: passwords are refused."""
    overrides = {
        "database_url": config.target_database_url,
        "redis_url": config.target_redis_url,
        "files_dir": config.target_files_dir,
    }
    for name, url in overrides.items():
        if url and urlsplit(url).password:
            raise dg.Failure(
                description=f"target_{name} contains a password, and run config is visible in the "
                "UI. Fix: leave the password out (use PGPASSWORD / the environment), or set "
                "DATABASE_URL / REDIS_URL in the code location's environment instead."
            )
    return RecoveryTargets(**overrides)


def _fail(state: RecoveryState, step: str, exc: BaseException) -> dg.Failure:
    return dg.Failure(
        description=f"recovery {step} failed: {redact(exc)}. State: {state.summary()}",
        metadata={
            "set_id": state.set_id,
            "restored": state.restored,
            "components": state.components,
            "safety_set_id": state.safety_set_id,
            "target_time": state.target_time,
        },
    )


@dg.op(
    description="Check the confirmation, that PostgreSQL lets this role swap the database, and "
    "every selected artifact's sha256 and key; touch nothing."
)
def recovery_preflight(
    context: dg.OpExecutionContext,
    config: RecoverConfig,
    backup_store: BackupStore,
    backup_encryption: BackupEncryption,
    postgres: PostgresResource,
    wal_archive: WalArchive,
) -> RecoveryState:
    targets = _targets(config)
    target_pg = targets.postgres(postgres)
    target_db = target_pg.database_name
    try:
        check_request(config.components, config.confirm, target_db)
        state = RecoveryState(
            "", list(config.components), target_db, targets=targets, target_time=config.target_time
        )
        if config.target_time:
            _check_point_request(config)
            live_id = live_system_identifier(target_pg)
            check_point_target(wal_archive, config.target_time, live_system_id=live_id)
        elif not config.set_id:
            raise RecoveryError(
                "set_id is empty. Nothing was touched. Fix: name a set (YYYY-MM-DD or "
                "latest-verified), or give target_time for a point-in-time recovery of postgres"
            )
        if state.from_set:
            state.set_id = resolve_set(backup_store, config.set_id)
        state.details["api_url"] = config.api_url or os.environ.get("TWINME_API_URL", "")
        state.details["approval_wait_s"] = config.approval_wait_minutes * 60
        if "postgres" in state.components:
            # before the safety backup and the scale-down: the swap must be possible
            check_postgres_target(target_pg, context.log)
        verify_set(backup_store, state, context.log, backup_encryption.get_keys())
    except RecoveryError as exc:
        raise dg.Failure(description=str(exc)) from None
    context.log.info(
        f"recovering {', '.join(state.components)} from {state.source_label()} into "
        f"{target_pg.describe()}"
    )
    return state


def _check_point_request(config: RecoverConfig) -> None:
    """A target_time recovers PostgreSQL; the other components need a set to come from."""
    if "postgres" not in config.components:
        raise RecoveryError(
            "target_time recovers PostgreSQL, which is not in components. Nothing was touched. "
            "Fix: add postgres, or leave target_time empty"
        )
    others = [c for c in config.components if c != "postgres"]
    if others and not config.set_id:
        raise RecoveryError(
            f"{', '.join(others)} have no point-in-time archive: they come from a set, and "
            "set_id is empty. Nothing was touched. Fix: give set_id (e.g. latest-verified) for "
            "them, or set components: [postgres]"
        )


@dg.op(
    description="The two-person rule: wait until a recovery approver who did not launch this "
    "run approves it on the webserver (production, and wherever access control is on); "
    "touch nothing before."
)
def recovery_approval(
    context: dg.OpExecutionContext,
    state: RecoveryState,
    recovery_approval: RecoveryApprovalResource,
    slack: SlackNotifier,
) -> RecoveryState:
    if not recovery_approval.required:
        context.log.info(
            "two-person approval is off: access control is not enabled here (TWINME_ACCESS_POLICY "
            "unset, TWINME_ENV=local); production always requires it"
        )
        return state
    run_id = context.run_id

    def read_tags() -> dict[str, str]:
        run = context.instance.get_run_by_id(run_id)
        return dict(run.tags) if run else {}

    tags = read_tags()
    where = step_where(context)
    if tags.get(LAUNCHED_BY_TAG):
        slack.send(
            approval_needed(
                where,
                state.source_label(),
                state.components,
                state.target_database,
                recovery_approval.approval_url,
                state.details["approval_wait_s"],
            ),
            log=context.log,
        )
    try:
        approval = wait_for_approval(
            run_id,
            read_tags,
            timeout_s=state.details["approval_wait_s"],
            poll_interval_s=recovery_approval.poll_interval_s,
            log=context.log,
        )
    except (ApprovalRefused, ApprovalTimeout) as exc:
        raise dg.Failure(
            description=f"recovery not approved: {exc}",
            metadata={"launched_by": tags.get(LAUNCHED_BY_TAG, ""), "set_id": state.set_id},
        ) from None
    state.details["approved_by"] = approval.approved_by
    context.log.info(
        f"approved by {approval.approved_by} ({approval.roles}) at "
        f"{approval.approved_at.isoformat(timespec='seconds')}; launched by "
        f"{tags.get(LAUNCHED_BY_TAG)}: the recovery proceeds"
    )
    return state


@dg.op(
    description="Back up the current production state first, so the recovery can be undone.",
    pool="twinme_database",
)
def recovery_safety_backup(
    context: dg.OpExecutionContext,
    state: RecoveryState,
    backup_store: BackupStore,
    backup_encryption: BackupEncryption,
    postgres: PostgresResource,
    redis: RedisResource,
    file_storage: FileStorageResource,
) -> RecoveryState:
    targets = state.targets
    safety_id = f"safety-{state.stamp}"
    try:
        backup_all(
            backup_store,
            safety_id,
            Sources(targets.postgres(postgres), targets.redis(redis), targets.files(file_storage)),
            key=backup_encryption.get_keys(),
            environment=twinme_env(),
            run_id=context.run.run_id,
            log=context.log,
        )
    except Exception as exc:
        raise _fail(state, "safety backup", exc) from None
    state.safety_set_id = safety_id
    context.log.info(f"safety backup complete: set {safety_id}")
    return state


@dg.op(description="Scale the API Deployment to 0 (no cluster configured: logged and skipped).")
def recovery_scale_down(
    context: dg.OpExecutionContext, state: RecoveryState, kubernetes: KubernetesResource
) -> RecoveryState:
    if not kubernetes.is_configured():
        context.log.info("no Kubernetes cluster configured: the API is not scaled (local run)")
        return state
    try:
        state.replicas_found = kubernetes.replicas()
        kubernetes.scale(0)
        kubernetes.wait_for_rollout(log=context.log)
    except Exception as exc:
        raise _fail(state, "scale down", exc) from None
    context.log.info(f"{kubernetes.describe()} scaled from {state.replicas_found} to 0")
    return state


@dg.op(
    description="Restore the selected components; PostgreSQL, then Redis, then files.",
    pool="twinme_database",
)
def recovery_restore(
    context: dg.OpExecutionContext,
    state: RecoveryState,
    backup_store: BackupStore,
    backup_encryption: BackupEncryption,
    postgres: PostgresResource,
    redis: RedisResource,
    file_storage: FileStorageResource,
    wal_archive: WalArchive,
) -> RecoveryState:
    targets = state.targets
    key = backup_encryption.get_keys()
    log = context.log
    for component in ("postgres", "redis", "files"):
        if component not in state.components:
            continue
        try:
            if component == "postgres" and state.target_time:
                restore_postgres_to_point(wal_archive, state, targets.postgres(postgres), log)
            elif component == "postgres":
                restore_postgres(backup_store, state, targets.postgres(postgres), key, log)
            elif component == "redis":
                restore_redis(backup_store, state, targets.redis(redis), key, log)
            else:
                restore_files(backup_store, state, targets.files(file_storage), key, log)
        except Exception as exc:
            raise _fail(state, f"of {component}", exc) from None
        state.restored.append(component)
    return state


@dg.op(description="Scale the API back to the replica count found, wait for the rollout, verify.")
def recovery_scale_up_and_verify(
    context: dg.OpExecutionContext,
    state: RecoveryState,
    kubernetes: KubernetesResource,
    postgres: PostgresResource,
    redis: RedisResource,
    slack: SlackNotifier,
) -> None:
    targets = state.targets
    api_url = state.details["api_url"]
    try:
        if kubernetes.is_configured() and state.replicas_found is not None:
            kubernetes.scale(state.replicas_found)
            kubernetes.wait_for_rollout(log=context.log)
        checks = verify_services(
            targets.postgres(postgres), targets.redis(redis), api_url, context.log
        )
    except Exception as exc:
        raise _fail(state, "scale up / verification", exc) from None
    alert = recovery_success(
        step_where(context),
        state.source_label(),
        state.restored,
        state.safety_set_id,
        checks,
        approved_by=state.details.get("approved_by", ""),
    )
    context.log.info(f"recovery complete from {state.source_label()}: {state.details}")
    slack.send(alert, log=context.log)


# a safety backup then a restore of every component: dumps, scratch files and the new database
RECOVERY_POD = PodResources(
    requests={"cpu": "1", "memory": "2Gi", "ephemeral-storage": "20Gi"},
    limits={"cpu": "2", "memory": "4Gi", "ephemeral-storage": "50Gi"},
)


@dg.job(
    description=(
        "Guarded production recovery from a backup set, or PostgreSQL to a point in time "
        "(target_time, from the WAL archive: the local root, or the Barman Cloud plugin's "
        "bucket on a scratch server): verifies checksums or the target, takes a safety "
        "backup, scales the API to 0, restores PostgreSQL (fresh database swapped in), Redis "
        "(keys replayed) and files, scales back up and verifies. Refuses to start unless "
        "config.confirm equals the target database name. Manual only."
    ),
    # one pod for the whole run (no step pods): the ops hand RecoveryState to each other
    tags={
        "twinme/operation": "recovery",
        "twinme/api-change": "recovery",
        # a recovery whose pod died is resumed by a person who has looked, never retried alone
        "dagster/max_retries": "0",
        # and no max runtime: killing a recovery halfway leaves production half restored; its
        # operator watches it and decides
        **RECOVERY_POD.tags(),
    },
    hooks={slack_on_failure},
)
def recover_job() -> None:
    state = recovery_preflight()
    state = recovery_approval(state)
    state = recovery_safety_backup(state)
    state = recovery_scale_down(state)
    state = recovery_restore(state)
    recovery_scale_up_and_verify(state)
