"""Restore drills: prove that a backup set restores, on scratch servers, never on production.

A drill fetches each artifact (sha256 verified, decrypted, decompressed while streaming),
restores it (PostgreSQL's roles then ``pg_restore`` into a scratch PostgreSQL, a scratch
``redis-server`` on the RDB, safe extraction of the tar), and compares what came back with the
facts the manifest recorded at backup time: rows, roles and grants, keys, files. Every scratch
server and directory is removed, whatever happens.
"""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twinme_ops.backups.artifacts import read_manifest_artifact, verify_artifact
from twinme_ops.backups.drill_postgres import (
    DRILL_DB,
    SCRATCH_SETTINGS,
    DrillRefused,
    RolesFailed,
    same_database,
    verify_postgres,
)
from twinme_ops.backups.keys import BackupKeys
from twinme_ops.backups.manifest import COMPONENTS, DRILL, GLOBALS, MANIFEST, parse_manifest
from twinme_ops.backups.restore.files import safe_extract
from twinme_ops.backups.restore.redis import scratch_redis_from_rdb
from twinme_ops.backups.sets import read_set, require_complete_set
from twinme_ops.backups.store.base import MIB, BackupStore
from twinme_ops.common.log import DEFAULT_LOG, Log
from twinme_ops.common.redact import redact

# a backup set older than this without a passed drill means backups have stopped working
FRESHNESS_MAX_AGE_HOURS = 26.0


@dataclass
class DrillResult:
    """Outcome of one drill; ``to_record()`` is what ``drill.json`` holds."""

    set_id: str
    passed: bool = False
    reason: str = ""
    checked_at: str = ""
    # which manifest was drilled: a verdict counts only for the manifest it verified
    manifest_sha256: str = ""
    manifest_run_id: str = ""
    rto_s: dict[str, float] = field(default_factory=dict)
    rpo_s: float = 0.0
    failures: dict[str, str] = field(default_factory=dict)
    restored: dict[str, Any] = field(default_factory=dict)

    @property
    def total_rto_s(self) -> float:
        return round(float(sum(self.rto_s.values())), 3)

    def to_record(self) -> dict[str, Any]:
        return {**asdict(self), "total_rto_s": self.total_rto_s}


@contextmanager
def _scratch_dir(base: str | None) -> Iterator[Path]:
    # 0755: as root, the scratch PostgreSQL runs as another user that must reach its data dir
    path = Path(tempfile.mkdtemp(prefix="twinme-drill-", dir=base))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_drill(
    store: BackupStore,
    set_id: str,
    *,
    key: bytes | BackupKeys | None,
    production_database_url: str | None = None,
    scratch_base: str | None = None,
    log: Log = DEFAULT_LOG,
    record: bool = True,
) -> DrillResult:
    """Restore every component of ``set_id`` on scratch servers and verify it.

    ``key``: :class:`~twinme_ops.backups.keys.BackupKeys` (or AES key bytes) that read the set.
    PostgreSQL's roles (the ``globals`` artifact, when the set has one) are restored first, then
    the dump with its owners and grants. Never raises for a failing backup: the result says what
    failed and why (and is written to the set as ``drill.json`` when ``record``). Raises
    :class:`DrillRefused` only when the drill itself would be unsafe, and
    :class:`~twinme_ops.backups.sets.SetNotFoundError` (writing nothing) when ``set_id`` is not
    a set with a manifest. Only what the manifest names is read.
    """
    result = DrillResult(set_id=set_id)
    started = datetime.now(UTC)
    view = read_set(store, set_id)
    result.manifest_sha256 = view.manifest_sha256
    if view.unreadable:
        result.reason = f"manifest of set {set_id} unreadable: {redact(view.unreadable)}"
        result.failures["manifest"] = result.reason
        return _finish(store, result, started, record)
    manifest = view.manifest or require_complete_set(store, set_id).manifest or {}
    result.manifest_run_id = str(manifest.get("run_id", ""))
    created = datetime.fromisoformat(manifest["created_at"])
    result.rpo_s = round((started - created).total_seconds(), 1)
    with _scratch_dir(scratch_base) as workdir:
        for component in COMPONENTS:
            art = manifest["artifacts"][component]
            t0 = time.monotonic()
            roles = manifest["artifacts"].get(GLOBALS) if component == "postgres" else None
            try:
                chunks = read_manifest_artifact(store, set_id, art, key)
                verify = _VERIFIERS[component]
                if roles is not None:
                    read = functools.partial(read_manifest_artifact, store, set_id, roles, key)
                    verify = functools.partial(verify, roles=(read, roles["source"]))
                result.restored[component] = verify(
                    chunks, art["source"], workdir, production_database_url, log
                )
                log.info(f"drill {set_id}: {component} restored and verified")
            except DrillRefused:
                raise
            except RolesFailed as exc:
                assert roles is not None
                cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
                why = _integrity_first(store, set_id, roles, cause)
                message = f"{roles['name']}: {redact(why)}"
                result.failures[GLOBALS] = message
                log.info(f"drill {set_id}: PostgreSQL roles FAILED: {message}")
            except Exception as exc:
                message = f"{art['name']}: {redact(_integrity_first(store, set_id, art, exc))}"
                result.failures[component] = message
                log.info(f"drill {set_id}: {component} FAILED: {message}")
            finally:
                result.rto_s[component] = round(time.monotonic() - t0, 3)
    if result.failures:
        result.reason = "; ".join(f"{c}: {m}" for c, m in result.failures.items())
    else:
        result.passed = True
        result.reason = (
            f"all components restored and verified in {result.total_rto_s:.1f} s "
            f"(RPO {result.rpo_s / 3600:.1f} h)"
        )
    return _finish(store, result, started, record)


def _integrity_first(
    store: BackupStore, set_id: str, art: dict[str, Any], exc: Exception
) -> Exception | str:
    """A restore tool that fails on corrupt bytes (pg_restore stops before the stream ends, so
    the sha256 is never checked) must not hide the cause: hash the stored artifact, and report a
    checksum mismatch first when it is one."""
    if "checksum mismatch" in str(exc):
        return exc
    try:
        verify_artifact(store, set_id, art["name"], art["sha256"])
    except ValueError as mismatch:
        return f"{mismatch} (the restore also failed: {exc})"
    except Exception:  # unreadable now: the original error says more
        return exc
    return exc


def _finish(
    store: BackupStore, result: DrillResult, started: datetime, record: bool
) -> DrillResult:
    result.checked_at = started.isoformat()
    if record:
        store.put_bytes(
            result.set_id, DRILL, json.dumps(result.to_record(), indent=2, sort_keys=True).encode()
        )
    return result


def _verify_redis(
    chunks: Iterator[bytes],
    source: dict[str, Any],
    workdir: Path,
    production_database_url: str | None,
    log: Log,
) -> dict[str, Any]:
    server = scratch_redis_from_rdb(chunks, workdir / "redis")
    try:
        client = server.client()
        keyspace = client.info("keyspace")
        got = {db: int(info["keys"]) for db, info in keyspace.items() if isinstance(info, dict)}
        expected = {db: int(n) for db, n in source["keys"].items() if int(n)}
        # INFO counts keys whose TTL has passed but that Redis has not evicted yet; loading the
        # RDB drops them. Fewer keys are fine up to the number that carry a TTL, never more.
        expires = {db: int(n) for db, n in source.get("expires", {}).items()}
        wrong = {
            db
            for db in set(got) | set(expected)
            if not expected.get(db, 0) - expires.get(db, 0) <= got.get(db, 0) <= expected.get(db, 0)
        }
        if wrong:
            raise RuntimeError(
                f"key counts differ: restored {got}, manifest says {expected} "
                f"({expires} with a TTL)"
            )
        log.info(f"redis: {sum(got.values()):,} keys match on redis-server {server.version}")
        return {"keys": sum(got.values()), "redis_version": server.version}
    finally:
        server.stop()


def _verify_files(
    chunks: Iterator[bytes],
    source: dict[str, Any],
    workdir: Path,
    production_database_url: str | None,
    log: Log,
) -> dict[str, Any]:
    counts = safe_extract(chunks, workdir / "files")
    if (counts["files"], counts["bytes"]) != (source["files"], source["bytes"]):
        raise RuntimeError(
            f"restored {counts['files']} files / {counts['bytes']} bytes, manifest says "
            f"{source['files']} / {source['bytes']}"
        )
    log.info(f"files: {counts['files']:,} files, {counts['bytes']:,} bytes match")
    return dict(counts)


_VERIFIERS: dict[str, Callable[..., dict[str, Any]]] = {
    "postgres": verify_postgres,
    "redis": _verify_redis,
    "files": _verify_files,
}


@dataclass
class Freshness:
    """Whether a recent set has passed its drill: what the freshness sensor alerts on."""

    fresh: bool
    message: str
    newest_verified: str | None = None
    age_hours: float | None = None


def backup_freshness(store: BackupStore, now: datetime, max_age_hours: float) -> Freshness:
    """Find the newest set whose drill passed and say whether it is younger than the limit."""
    for set_id in sorted(store.list_sets(), reverse=True):
        view = read_set(store, set_id)
        # a verdict about a manifest that force has since replaced does not count
        if view.manifest is None or view.verdict != "passed":
            continue
        created = datetime.fromisoformat(view.manifest["created_at"])
        age = (now - created).total_seconds() / 3600
        if age <= max_age_hours:
            return Freshness(True, f"set {set_id} passed its drill, {age:.1f} h old", set_id, age)
        return Freshness(
            False,
            f"no backup set younger than {max_age_hours:g} h has passed its restore drill: the "
            f"newest verified set is {set_id}, {age:.1f} h old",
            set_id,
            age,
        )
    return Freshness(
        False,
        f"no backup set in {store.describe()} has ever passed its restore drill",
    )


def last_good_set(store: BackupStore, now: datetime | None = None) -> str:
    """The newest set that passed its restore drill, with its size and age, as alerts show it:
    ``2026-11-23, 12.3 MB, 5.1 h old``.

    Never raises: an unreadable store is itself the answer (the alert must still go out).
    """
    now = now or datetime.now(UTC)
    try:
        status = backup_freshness(store, now, FRESHNESS_MAX_AGE_HOURS)
        if status.newest_verified is None or status.age_hours is None:
            return "none: no backup set has passed its restore drill"
        set_id = status.newest_verified
        total = parse_manifest(store.get_bytes(set_id, MANIFEST))["total_bytes"]
    except Exception as exc:
        lines = [ln.strip() for ln in redact(exc).splitlines() if ln.strip()]
        why = (lines[0] if lines else type(exc).__name__)[:400]
        return f"unknown: the backup store could not be read ({why})"
    age = status.age_hours
    stale = "" if status.fresh else f" (older than {FRESHNESS_MAX_AGE_HOURS:g} h)"
    age_text = f"{age * 60:.0f} min" if age < 1 else f"{age:.1f} h"
    return f"{set_id}, {total / MIB:,.1f} MB, {age_text} old{stale}"


__all__ = [
    "DRILL_DB",
    "SCRATCH_SETTINGS",
    "DrillRefused",
    "DrillResult",
    "run_drill",
    "same_database",
]
