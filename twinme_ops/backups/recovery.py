"""Production recovery, step by step (no Dagster): each function does one step and raises a
:class:`RecoveryError` whose message says what was restored, what was not, and where to return.

PostgreSQL is restored into a fresh database that then takes the live one's name, so the result
equals the backup exactly; Redis keys are replayed with DUMP/RESTORE from a scratch server loaded
with the RDB (no FLUSHALL or CONFIG needed); files are extracted safely, then swapped in.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twinme_ops.backups.artifacts import read_manifest_artifact, verify_artifact
from twinme_ops.backups.keys import BackupKeys, as_keys, require_readable
from twinme_ops.backups.manifest import COMPONENTS, GLOBALS, MANIFEST, parse_manifest
from twinme_ops.backups.recovery_databases import (
    check_maintenance_access,
    drop_restore_leftovers,
    maintenance_url,
    pre_recovery_name,
    restore_database_name,
    restore_lock,
)
from twinme_ops.backups.restore.common import RestoreError
from twinme_ops.backups.restore.files import replace_tree, safe_extract, staging_dir_for
from twinme_ops.backups.restore.postgres import pg_restore_stream
from twinme_ops.backups.restore.postgres_databases import create_database, drop_database
from twinme_ops.backups.restore.postgres_globals import restore_globals
from twinme_ops.backups.restore.postgres_swap import swap_databases
from twinme_ops.backups.restore.redis import replay_redis, scratch_redis_from_rdb
from twinme_ops.backups.sets import SetNotFoundError, read_set, require_complete_set
from twinme_ops.backups.store.base import BackupStore
from twinme_ops.common.log import Log
from twinme_ops.common.redact import redact
from twinme_ops.servers.files import FileStorageResource
from twinme_ops.servers.postgres import PostgresResource
from twinme_ops.servers.redis import RedisResource

LATEST_VERIFIED = "latest-verified"


class RecoveryError(RuntimeError):
    """A recovery step failed or was refused; the message says what state production is in."""


@dataclass(frozen=True)
class RecoveryTargets:
    """The servers a recovery restores onto: the configured ones unless the run config names others.

    Holds the run config's overrides only (``""`` keeps the configured server), never a resource:
    it travels in :class:`RecoveryState` from step to step through the run's storage, and a
    configured server's URL may carry its password. Each step asks it for the server it needs.
    """

    database_url: str = ""
    redis_url: str = ""
    files_dir: str = ""

    def postgres(self, configured: PostgresResource) -> PostgresResource:
        """The PostgreSQL server to restore: ``database_url`` if set, else ``configured``."""
        return PostgresResource(url=self.database_url) if self.database_url else configured

    def redis(self, configured: RedisResource) -> RedisResource:
        """The Redis server to restore: ``redis_url`` if set, else ``configured``."""
        return RedisResource(url=self.redis_url) if self.redis_url else configured

    def files(self, configured: FileStorageResource) -> FileStorageResource:
        """The file tree to restore: ``files_dir`` if set, else ``configured``."""
        return FileStorageResource(path=self.files_dir) if self.files_dir else configured


@dataclass
class RecoveryState:
    """What the recovery has done so far; every step adds to it and reports it on failure.

    ``targets`` says where it restores, the same for every step.
    """

    set_id: str
    components: list[str]
    target_database: str
    targets: RecoveryTargets = field(default_factory=RecoveryTargets)
    # point-in-time recovery of PostgreSQL from the WAL archive: ISO 8601 or "latest"; "" = set
    target_time: str = ""
    manifest: dict[str, Any] = field(default_factory=dict)
    safety_set_id: str = ""
    replicas_found: int | None = None
    restored: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    stamp: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ"))

    @property
    def from_set(self) -> list[str]:
        """The components restored from the backup set: PostgreSQL comes from the WAL archive
        when a ``target_time`` is given."""
        return [c for c in self.components if not (c == "postgres" and self.target_time)]

    def source_label(self) -> str:
        """What the recovery restores from, for messages and the report: the set id, or the
        point in time (and the point reached once restored)."""
        if not self.target_time:
            return self.set_id
        reached = self.details.get("postgres", {}).get("reached_time")
        at = f"PostgreSQL at {self.target_time}" + (f" (reached {reached})" if reached else "")
        others = ", ".join(self.from_set)
        return f"{at}; {others} from set {self.set_id}" if others else at

    def summary(self) -> str:
        """Restored / not restored / where to return: the line every failure message carries."""
        pending = [c for c in self.components if c not in self.restored]
        parts = [
            f"restored: {', '.join(self.restored) or 'nothing'}",
            f"not restored: {', '.join(pending) or 'nothing'}",
        ]
        if self.safety_set_id:
            parts.append(
                f"safety backup of the pre-recovery state: set {self.safety_set_id} "
                f"(recover_job with set_id {self.safety_set_id} returns to it)"
            )
        else:
            parts.append("no safety backup was taken yet: production was not modified")
        return "; ".join(parts)


def resolve_set(store: BackupStore, requested: str) -> str:
    """The set to restore: an id with a manifest, or the newest set whose drill passed (a
    verdict about a manifest since replaced does not count)."""
    if requested == LATEST_VERIFIED:
        for set_id in sorted(store.list_sets(), reverse=True):
            if read_set(store, set_id).verdict == "passed":
                return set_id
        raise RecoveryError(
            f"no set in {store.describe()} has passed a restore drill. Fix: run "
            "restore_drill_job, or name a set_id explicitly."
        )
    try:
        require_complete_set(store, requested)
    except SetNotFoundError as exc:
        raise RecoveryError(f"{exc} Or use latest-verified.") from None
    return requested


def check_request(components: list[str], confirm: str, target_database: str) -> None:
    """Refuse before touching anything unless the operator typed the target database's name."""
    unknown = sorted(set(components) - set(COMPONENTS))
    if unknown or not components:
        raise RecoveryError(
            f"components must be a non-empty subset of {', '.join(COMPONENTS)}; got {components}"
        )
    if confirm != target_database:
        raise RecoveryError(
            f"refusing to recover: confirm must equal the target database name "
            f"({target_database!r}), got {confirm!r}. Nothing was touched. Fix: set "
            f"confirm: {target_database} in the run config once you are sure."
        )


def set_parts(state: RecoveryState) -> list[str]:
    """What the recovery reads from the set: PostgreSQL's roles (when the set has them) before
    its dump, then the other components."""
    parts = list(state.from_set)
    if "postgres" in parts and GLOBALS in state.manifest.get("artifacts", {}):
        parts.insert(parts.index("postgres"), GLOBALS)
    return parts


def verify_set(
    store: BackupStore,
    state: RecoveryState,
    log: Log,
    key: bytes | BackupKeys | None = None,
) -> None:
    """Load the manifest and check every artifact the recovery restores from the set (its sha256,
    and that ``key`` decrypts it) before anything changes."""
    if not state.from_set:
        return
    state.manifest = parse_manifest(store.get_bytes(state.set_id, MANIFEST))
    keys = as_keys(key)
    for component in set_parts(state):
        art = state.manifest["artifacts"][component]
        try:
            require_readable(state.set_id, art["name"], art.get("encryption"), keys)
        except ValueError as exc:
            raise RecoveryError(f"{redact(exc)}. Nothing was touched.") from None
        try:
            size = verify_artifact(store, state.set_id, art["name"], art["sha256"])
        except Exception as exc:
            raise RecoveryError(
                f"set {state.set_id}: {art['name']} failed verification ({redact(exc)}); "
                "nothing was touched. Fix: recover from another set (latest-verified)."
            ) from None
        log.info(f"{component}: {art['name']} verified ({size:,} bytes, sha256 ok)")


def check_postgres_target(pg: PostgresResource, log: Log) -> None:
    """Preflight: the restore's CREATE/RENAME DATABASE can run (see recovery_databases)."""
    live = pg.database_name
    admin = maintenance_url(pg.tool_dsn(), live)
    try:
        check_maintenance_access(admin, live, pg.tool_env())
    except RestoreError as exc:
        raise RecoveryError(f"{exc} Nothing was touched.") from None
    log.info(
        f"postgres: {live} can be swapped from the maintenance database {urlsplit(admin).path[1:]}"
    )


def restore_postgres(
    store: BackupStore,
    state: RecoveryState,
    pg: PostgresResource,
    key: bytes | BackupKeys | None,
    log: Log,
) -> None:
    """Bring back the set's roles that the server lacks (existing roles are kept as they are),
    then pg_restore the set's dump into a fresh database and swap it in under the live name."""
    roles = state.manifest["artifacts"].get(GLOBALS)
    if roles is not None:
        admin = maintenance_url(pg.tool_dsn(), pg.database_name)
        outcome = restore_globals(
            read_manifest_artifact(store, state.set_id, roles, key), admin, pg.tool_env()
        )
        state.details.setdefault("postgres", {})["roles_created"] = outcome.created
        log.info(
            f"postgres: roles of set {state.set_id}: {len(outcome.created)} created "
            f"({', '.join(outcome.created[:10]) or 'none missing'}), {len(outcome.kept)} kept"
        )
    art = state.manifest["artifacts"]["postgres"]
    swap_in_dump(
        state, pg, lambda: read_manifest_artifact(store, state.set_id, art, key), log,
        what=f"set {state.set_id}",
    )  # fmt: skip


def swap_in_dump(
    state: RecoveryState,
    pg: PostgresResource,
    dump: Callable[[], Iterable[bytes]],
    log: Log,
    *,
    what: str,
) -> None:
    """pg_restore ``dump()`` (a custom-format dump's bytes) into a fresh database, then swap it
    in under the live name (old one kept).

    First drops the restore databases of earlier recoveries that were killed (never a
    ``__pre_recovery_`` copy, never one a running recovery holds).
    """
    live = pg.database_name
    restored_db = restore_database_name(live, state.stamp)
    keep_old = pre_recovery_name(live, state.stamp)
    admin = maintenance_url(pg.tool_dsn(), live)
    env = pg.tool_env()
    with restore_lock(admin, restored_db, env):
        leftovers = drop_restore_leftovers(admin, live, state.stamp, env)
        for name in leftovers.dropped:
            log.info(f"postgres: dropped {name}, left by a recovery that did not finish")
        for name, why in leftovers.kept.items():
            log.info(f"postgres: kept {name}: {why}")
        log.info(
            f"postgres: restoring into {restored_db}, swapped in from the maintenance database "
            f"{urlsplit(admin).path[1:]}"
        )
        create_database(admin, restored_db, env)
        try:
            dsn = urlunsplit(urlsplit(pg.tool_dsn())._replace(path=f"/{restored_db}"))
            pg_restore_stream(dump(), dsn, env, no_owner=True)
        except Exception:
            drop_database(admin, restored_db, env)
            raise
        swap_databases(admin, live, restored_db, keep_old, env)
    state.details.setdefault("postgres", {})["previous_database_kept_as"] = keep_old
    log.info(f"postgres: {live} now holds {what}; the previous one is kept as {keep_old}")


def restore_redis(
    store: BackupStore,
    state: RecoveryState,
    res: RedisResource,
    key: bytes | BackupKeys | None,
    log: Log,
) -> None:
    """Load the RDB into a scratch server and replay every key into the live Redis."""
    art = state.manifest["artifacts"]["redis"]
    workdir = Path(tempfile.mkdtemp(prefix="twinme-recover-redis-"))
    try:
        chunks = read_manifest_artifact(store, state.set_id, art, key)
        scratch = scratch_redis_from_rdb(chunks, workdir)
        try:
            target = res.get_client()
            counts = replay_redis(scratch.client(), target, delete_extra=True)
        finally:
            scratch.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    state.details["redis"] = counts
    log.info(f"redis: replayed {counts}")


def restore_files(
    store: BackupStore,
    state: RecoveryState,
    storage: FileStorageResource,
    key: bytes | BackupKeys | None,
    log: Log,
) -> None:
    """Extract safely next to the target (same file system), then make the target equal to it."""
    art = state.manifest["artifacts"]["files"]
    target = storage.resolved_path()
    target.mkdir(parents=True, exist_ok=True)
    # inside the target's file system (even when it is a mount point), so the swap is renames
    staging = staging_dir_for(target)
    try:
        chunks = read_manifest_artifact(store, state.set_id, art, key)
        counts = safe_extract(chunks, staging / "files")
        replace_tree(staging / "files", target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    state.details["files"] = counts
    log.info(f"files: {target} now holds {counts['files']:,} files from set {state.set_id}")


def verify_services(
    pg: PostgresResource, res: RedisResource, api_url: str, log: Log, timeout_s: float = 120
) -> dict[str, Any]:
    """SELECT 1, PING and, when an API URL is configured, /health and /ready answering 200."""
    with pg.get_connection() as conn:
        conn.execute("SELECT 1")
    client = res.get_client()
    try:
        client.ping()
    finally:
        client.close()
    checks: dict[str, Any] = {"select_1": True, "ping": True}
    for path in ("/health", "/ready") if api_url else ():
        url = api_url.rstrip("/") + path
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 (configured URL)
                    checks[path] = resp.status
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError) as exc:
                checks[path] = redact(exc)
            if time.monotonic() > deadline:
                raise RecoveryError(f"{redact(url)} did not answer 200 within {timeout_s:.0f} s")
            time.sleep(2)
    log.info(f"verification: {checks}")
    return checks
