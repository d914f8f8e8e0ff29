"""The one environment switch: which servers, store and Slack the definitions talk to.

``TWINME_ENV=local`` (default) falls back to the embedded sandbox for every server that is not
configured; ``production`` requires the variables of docs/architecture.md, 'Configuration
contract'. Secrets are passed as ``dg.EnvVar`` so the UI shows the variable's name, never its
value. Nothing here runs at import time: :func:`build_resources` is called when the code location
loads.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dagster as dg

from twinme_ops.access.approval_page import approval_url
from twinme_ops.access.policy import POLICY_ENV
from twinme_ops.access.recovery_gate import RecoveryApprovalResource
from twinme_ops.alerting.metrics import MetricsResource
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.backups.crypto import BackupEncryption
from twinme_ops.backups.pitr.archive import WalArchive, window_days
from twinme_ops.backups.pitr.continuous import (
    ArchivingReport,
    archive_processes,
    ensure_continuous_archiving,
)
from twinme_ops.backups.pitr.heartbeat_writer import DEFAULT_INTERVAL_S, interval_from_env
from twinme_ops.backups.pitr.layout import ArchiveLayout
from twinme_ops.backups.store.base import BackupStore
from twinme_ops.backups.store.immutability import (
    DAYS_ENV,
    MODE_ENV,
    RETENTION_PROFILE_ENV,
    required_lock,
)
from twinme_ops.common.redact import redact, register_secret, register_secrets_in
from twinme_ops.database.declared_state import DatabaseTuning
from twinme_ops.database.postgres.settings.applier import APPLIERS, SettingsApplier
from twinme_ops.defs.capacity.resources import capacity_limits_from_env
from twinme_ops.defs.release.jwt_resources import JwtKeysResource, overlap_hours_from_env
from twinme_ops.defs.release.resources import image_builder, make_app_test_runner
from twinme_ops.defs.security.resources import dependency_audit_settings
from twinme_ops.release.git import GitRepoResource
from twinme_ops.release.rollback import ReleaseSettings
from twinme_ops.servers.files import FileStorageResource
from twinme_ops.servers.kube import KubernetesResource
from twinme_ops.servers.postgres import PostgresResource
from twinme_ops.servers.redis import RedisResource

if TYPE_CHECKING:
    from twinme_ops.sandbox.servers import SandboxInfo
    from twinme_ops.scratch.postgres import PostgresServer

ENVIRONMENTS = ("local", "production")
_log = logging.getLogger("twinme_ops.sandbox.archiving")


def twinme_env() -> str:
    """The environment name, validated."""
    env = os.environ.get("TWINME_ENV", "local").strip() or "local"
    if env not in ENVIRONMENTS:
        raise ValueError(redact(f"TWINME_ENV={env!r} is not one of {', '.join(ENVIRONMENTS)}"))
    return env


def twinme_home() -> Path:
    """Local state directory (sandbox servers, local backup store): ``TWINME_HOME`` or ./.twinme."""
    return Path(os.environ.get("TWINME_HOME") or ".twinme").absolute()


def _env_or(name: str, default: Any) -> Any:
    """``dg.EnvVar(name)`` if the variable is set (its value stays out of the UI), else default."""
    return dg.EnvVar(name) if os.environ.get(name) else default


def _tuning() -> DatabaseTuning:
    """Declared instance resources: the spec's instance unless TWINME_PG_* say otherwise."""
    declared: dict[str, Any] = {}
    for field, var, kind in (
        ("memory_mb", "TWINME_PG_MEMORY_MB", int),
        ("cpus", "TWINME_PG_CPUS", int),
        ("storage", "TWINME_PG_STORAGE", str),
        ("max_connections", "TWINME_PG_MAX_CONNECTIONS", int),
        ("redis_conf_path", "TWINME_REDIS_CONF", str),
    ):
        value = os.environ.get(var)
        if value:
            try:
                declared[field] = kind(value)
            except ValueError:
                raise ValueError(
                    redact(f"{var}={value!r} is not a valid {kind.__name__}")
                ) from None
    return DatabaseTuning(**declared)


# variables that may carry a password in a URL's user info (or a libpq password=...), and
# variables whose whole value is a secret
URL_SECRET_VARS = (
    "DATABASE_URL",
    "REDIS_URL",
    "TWINME_BACKUP_URL",
    "TWINME_GIT_REMOTE",
    "TWINME_BUILD_GIT_URL",
    "TWINME_PUSHGATEWAY_URL",
    "TWINME_API_URL",
    "TWINME_DAGSTER_URL",
    "AWS_ENDPOINT_URL_S3",
    "TWINME_AUDIT_OSV_URL",
    "TWINME_AUDIT_NPM_REGISTRY",
)
WHOLE_SECRET_VARS = (
    "SLACK_WEBHOOK_URL",
    "TWINME_BACKUP_ENCRYPTION_KEY",
    "TWINME_BACKUP_AGE_IDENTITY",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "PGPASSWORD",
    "REDIS_PASSWORD",
)


class SandboxPostgres(PostgresResource):
    """Locally, an empty ``url`` is the embedded sandbox under ``sandbox_home``, started on first
    use (and archived continuously into ``wal_archive_root`` when it is set). This module is the
    one place that knows the sandbox exists."""

    sandbox_home: str = ".twinme"
    wal_archive_root: str = ""
    heartbeat_interval_s: float = DEFAULT_INTERVAL_S

    def resolved_url(self) -> str:
        return self.url or _sandbox(self).database_url

    def running_url(self) -> str | None:
        if self.url:
            return self.url
        from twinme_ops.sandbox.servers import running_sandbox

        info = running_sandbox(Path(self.sandbox_home))
        return info.database_url if info is not None else None


class SandboxRedis(RedisResource):
    """Locally, an empty ``url`` is the embedded sandbox's Redis."""

    sandbox_home: str = ".twinme"
    wal_archive_root: str = ""
    heartbeat_interval_s: float = DEFAULT_INTERVAL_S

    def configured_url(self) -> str:
        return self.url or _sandbox(self).redis_url


class SandboxFiles(FileStorageResource):
    """Locally, an empty ``path`` is the embedded sandbox's file storage."""

    sandbox_home: str = ".twinme"
    wal_archive_root: str = ""
    heartbeat_interval_s: float = DEFAULT_INTERVAL_S

    def resolved_path(self) -> Path:
        return Path(self.path) if self.path else _sandbox(self).files_dir


def sandbox_postgres_server(postgres: PostgresResource) -> PostgresServer | None:
    """The embedded sandbox's server when ``postgres`` is the sandbox (an empty URL locally),
    started if needed; None for any other server. Only a server we run may be reconfigured
    (settings, ``pg_hba.conf``, a restart) by the steps that need it."""
    if not isinstance(postgres, SandboxPostgres) or postgres.url:
        return None
    from twinme_ops.sandbox.servers import sandbox_dir
    from twinme_ops.scratch.postgres import PostgresServer

    _sandbox(postgres)
    return PostgresServer.find(sandbox_dir(Path(postgres.sandbox_home)) / "postgres")


def _sandbox(resource: SandboxPostgres | SandboxRedis | SandboxFiles) -> SandboxInfo:
    from twinme_ops.sandbox.servers import ensure_sandbox  # starts it only when first used

    return ensure_sandbox(
        Path(resource.sandbox_home),
        on_start=sandbox_archiving_hook(resource.wal_archive_root, resource.heartbeat_interval_s),
    )


def sandbox_archiving_hook(
    root: str, interval_s: float = DEFAULT_INTERVAL_S
) -> Callable[[SandboxInfo, PostgresServer], None] | None:
    """What the sandbox runs when it starts: continuous archiving into ``root`` ("": none)."""
    if not root:
        return None

    def start(info: SandboxInfo, server: PostgresServer) -> None:
        start_sandbox_archiving(info, server, root, interval_s)

    return start


def start_sandbox_archiving(
    info: SandboxInfo, server: PostgresServer, root: str, interval_s: float = DEFAULT_INTERVAL_S
) -> ArchivingReport:
    """Archive the sandbox's PostgreSQL continuously into ``root`` (receiver, first base backup,
    heartbeat writer), and register both processes so that ``stop_sandbox`` stops them."""
    from twinme_ops.sandbox.servers import register_companion

    layout = ArchiveLayout.at(Path(root))
    for process in archive_processes(layout):
        register_companion(info.home, process.name, process.pid_file, process.process_hint)
    return ensure_continuous_archiving(
        server, info.database_url, layout, heartbeat_interval_s=interval_s, log=_log
    )


def wal_archive_resource(env: str, home: str) -> WalArchive:
    """The WAL archive of ``env``: TWINME_WAL_ARCHIVE (local here, cloudnative-pg in production)
    into TWINME_WAL_ARCHIVE_ROOT (default ``<TWINME_HOME>/wal-archive``), or for cloudnative-pg
    the bucket TWINME_WAL_ARCHIVE_DESTINATION (/TWINME_WAL_ARCHIVE_SERVER_NAME)."""
    default_engine = "cloudnative-pg" if env == "production" else "local"
    return WalArchive(
        engine=(os.environ.get("TWINME_WAL_ARCHIVE") or default_engine).strip(),
        root=os.environ.get("TWINME_WAL_ARCHIVE_ROOT") or f"{home}/wal-archive",
        recovery_window_days=window_days(os.environ.get("TWINME_WAL_RECOVERY_WINDOW_DAYS", "")),
        # cloudnative-pg: the bucket the drill and recover_job restore from (barman-cloud)
        destination_path=os.environ.get("TWINME_WAL_ARCHIVE_DESTINATION", "").strip(),
        server_name=os.environ.get("TWINME_WAL_ARCHIVE_SERVER_NAME", "").strip(),
        barman_bin=os.environ.get("TWINME_BARMAN_BIN", "").strip() or "/opt/barman/bin",
    )


def settings_applier(env: str, wal_archive: WalArchive) -> SettingsApplier:
    """How postgres_settings writes the declared settings: TWINME_POSTGRES_APPLIER
    (cloudnative-pg in production, alter-system elsewhere), on the WAL archive's Cluster."""
    default = "cloudnative-pg" if env == "production" else "alter-system"
    method = (os.environ.get("TWINME_POSTGRES_APPLIER") or default).strip()
    if method not in APPLIERS:
        raise ValueError(
            redact(
                f"TWINME_POSTGRES_APPLIER={method!r} is not one of {', '.join(APPLIERS)} "
                "(cloudnative-pg where PostgreSQL runs on CloudNativePG, alter-system elsewhere)"
            )
        )
    return SettingsApplier(
        method=method,
        cluster=wal_archive.cluster,
        namespace=wal_archive.namespace,
        kubeconfig=wal_archive.kubeconfig,
    )


def sandbox_archive_root(home: str) -> str:
    """Where the sandbox under ``home`` archives its WAL ("" when the engine is not local)."""
    archive = wal_archive_resource(twinme_env(), home)
    return archive.root if archive.check_engine() == "local" else ""


def backup_store_resource(url: str) -> BackupStore:
    """The backup store at ``url`` with its Object Lock requirements (TWINME_BACKUP_LOCK_MODE,
    TWINME_BACKUP_LOCK_DAYS) and the retention role's profile (TWINME_RETENTION_AWS_PROFILE);
    a bad value refuses to load, naming the variable and the fix."""
    mode = os.environ.get(MODE_ENV, "").strip() or "GOVERNANCE"
    raw_days = os.environ.get(DAYS_ENV, "").strip() or "30"
    try:
        days = int(raw_days)
    except ValueError:
        raise ValueError(
            redact(f"{DAYS_ENV}={raw_days!r} is not a whole number of days. Fix: e.g. 30")
        ) from None
    mode, days = required_lock(mode, days)
    return BackupStore(
        url=url,
        lock_mode=mode,
        lock_days=days,
        retention_aws_profile=os.environ.get(RETENTION_PROFILE_ENV, "").strip(),
    )


def register_configured_secrets() -> None:
    """Register the configured secrets before any resource parses (and may echo) its value.

    A password is masked wherever it appears even when its URL is too malformed for anything to
    parse it (``postgresql//user:pass@host``): the redactor finds it by shape in the raw value.
    """
    for var in URL_SECRET_VARS:
        register_secrets_in(os.environ.get(var))
    for var in WHOLE_SECRET_VARS:
        value = os.environ.get(var, "")
        register_secret(value)
        register_secret(value.strip())


def build_resources() -> dict[str, Any]:
    """Resources for the current environment."""
    register_configured_secrets()
    env = twinme_env()
    home = str(twinme_home())
    if env == "production":
        missing = [
            v
            for v in ("DATABASE_URL", "REDIS_URL", "TWINME_FILES_DIR", "TWINME_BACKUP_URL")
            if not os.environ.get(v)
        ]
        if missing:
            raise ValueError(
                f"TWINME_ENV=production needs {', '.join(missing)} to be set "
                "(see docs/operator-guide.md, 'Configuring production')"
            )
    backup_url = os.environ.get("TWINME_BACKUP_URL") or f"file://{home}/backups"
    wal_archive = wal_archive_resource(env, home)
    if env == "production":
        postgres: PostgresResource = PostgresResource(url=_env_or("DATABASE_URL", ""))
        redis: RedisResource = RedisResource(url=_env_or("REDIS_URL", ""))
        files: FileStorageResource = FileStorageResource(path=_env_or("TWINME_FILES_DIR", ""))
    else:
        # the sandbox archives itself continuously when the archive's engine is local
        sandbox: dict[str, Any] = {"sandbox_home": home}
        if wal_archive.engine == "local":
            sandbox["wal_archive_root"] = wal_archive.root
            sandbox["heartbeat_interval_s"] = interval_from_env()
        postgres = SandboxPostgres(url=_env_or("DATABASE_URL", ""), **sandbox)
        redis = SandboxRedis(url=_env_or("REDIS_URL", ""), **sandbox)
        files = SandboxFiles(path=_env_or("TWINME_FILES_DIR", ""), **sandbox)
    return {
        "postgres": postgres,
        "redis": redis,
        "file_storage": files,
        # s3:// stores make their client with a default S3Resource() on first use (boto3's AWS_*)
        # Object Lock requirements and the retention role: docs/backups.md, "Backups nobody can
        # erase"
        "backup_store": backup_store_resource(backup_url),
        "backup_encryption": BackupEncryption(
            key=_env_or("TWINME_BACKUP_ENCRYPTION_KEY", ""),
            # public keys: all a backup needs; the identity only where restores run (EnvVar
            # all the same: an identity pasted there by mistake stays out of the UI)
            age_recipients=_env_or("TWINME_BACKUP_AGE_RECIPIENTS", ""),
            age_identity=_env_or("TWINME_BACKUP_AGE_IDENTITY", ""),
            age_identity_file=os.environ.get("TWINME_BACKUP_AGE_IDENTITY_FILE", ""),
        ),
        # alerts link to <TWINME_DAGSTER_URL>/runs/<run_id> (not a secret: plain value)
        "slack": SlackNotifier(
            webhook_url=_env_or("SLACK_WEBHOOK_URL", ""),
            dagster_url=os.environ.get("TWINME_DAGSTER_URL", "").strip(),
        ),
        "database_tuning": _tuning(),
        # one declared state, two appliers: ALTER SYSTEM, or the CloudNativePG Cluster's spec
        "postgres_settings_applier": settings_applier(env, wal_archive),
        "release_settings": ReleaseSettings(
            api_url=os.environ.get("TWINME_API_URL")
            or ("https://api.twinme.ai" if env == "production" else "")
        ),
        # where release images go; unset locally until a registry is configured
        "image_builder": image_builder(),
        # where the pushed commit's tests run, away from everything above
        "app_test_runner": make_app_test_runner(env, home),
        "git": GitRepoResource(
            remote=_env_or("TWINME_GIT_REMOTE", ""),
            branch=os.environ.get("TWINME_GIT_BRANCH") or "main",
            workdir_root=f"{home}/checkouts",
        ),
        # a cluster exists in production, or locally when the operator points KUBECONFIG at one
        "kubernetes": KubernetesResource(
            namespace=os.environ.get("TWINME_K8S_NAMESPACE") or "twinme-prod",
            enabled=env == "production" or bool(os.environ.get("KUBECONFIG")),
        ),
        # the two-person rule of recover_job: always in production, and wherever the
        # webserver's access control is on (twinme_ops/access)
        "recovery_approval": RecoveryApprovalResource(
            required=env == "production" or bool(os.environ.get(POLICY_ENV, "").strip()),
            approval_url=approval_url(os.environ.get("TWINME_DAGSTER_URL", "").strip()),
        ),
        # the URL may carry basic-auth userinfo: EnvVar keeps it out of the UI
        # continuous archiving of PostgreSQL's WAL (docs/backups.md, "Point-in-time recovery")
        "wal_archive": wal_archive,
        "metrics": MetricsResource(
            pushgateway_url=_env_or("TWINME_PUSHGATEWAY_URL", ""), environment=env
        ),
        # the API's JWT signing keys, in the Deployment's namespace (docs/jwt-rotation.md)
        "jwt_keys": JwtKeysResource(overlap_hours=overlap_hours_from_env()),
        # what capacity_report projects against (docs/slo-capacity.md); parsed when it runs
        "capacity_limits": capacity_limits_from_env(),
        # the weekly dependency audit and the SBOMs (docs/security-scans.md)
        "dependency_audit_settings": dependency_audit_settings(),
    }
