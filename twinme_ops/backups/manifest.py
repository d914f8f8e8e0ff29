"""Backup sets: names, component records and the manifest that makes a set a backup.

A set is a folder (or S3 prefix) per set id. Each component writes its artifact, then a small
record, both under names that carry the writing run's id (``postgres.<run>.dump.zst``,
``postgres.<run>.json``), so two runs of one partition never write the same name.
``manifest.json`` is written last, create-only, from the records of one run (and of the runs it
re-executes), and names exactly the artifacts it vouches for: a set without a manifest is, by
construction, not a backup, and nothing another run writes can change one that has a manifest.
Unnamed objects (a losing run's artifacts, a killed run's partial files) are leftovers that
:mod:`twinme_ops.backups.sets` removes.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

MANIFEST = "manifest.json"
# Written into a set by every restore drill, after the manifest: {"passed": bool, "checked_at":
# ISO-8601 UTC, "reason": str, "rto_s": {...}, "rpo_s": float}. Retention and the freshness
# sensor read it from the store, so they work the same on local directories and S3.
DRILL = "drill.json"
FORMAT = "twinme-backup-set/v1"
COMPONENTS = ("postgres", "redis", "files")
# PostgreSQL's roles and memberships (pg_dumpall --globals-only): written with the postgres
# component, restored before its dump. Sets written before it have no such artifact.
GLOBALS = "globals"
# what a set holds, in restore order
SET_PARTS = (GLOBALS, *COMPONENTS)
ARTIFACT_SUFFIXES = {
    "postgres": "dump.zst",
    "redis": "rdb.zst",
    "files": "tar.zst",
    GLOBALS: "sql.zst",
}
COMPONENT_LABELS = {
    "postgres": "PostgreSQL",
    "redis": "Redis",
    "files": "file storage",
    GLOBALS: "PostgreSQL roles",
}
_SET_ID = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_RUN_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z-]{0,63}")
# what a backup run writes into a set: <component>.<run id>.<suffix or json>[.enc|.age]; the
# names of sets written before run ids were part of names (postgres.dump.zst, postgres.json) too
_RUN_OBJECT = re.compile(
    r"^(?P<component>postgres|redis|files|globals)(?:\.(?P<run>[0-9A-Za-z][0-9A-Za-z-]{0,63}))?"
    r"\.(?:dump\.zst|rdb\.zst|tar\.zst|sql\.zst|json)(?:\.enc|\.age)?$"
)


class ManifestError(ValueError):
    """A manifest or component record is missing or malformed."""


def _check_run_id(run_id: str) -> str:
    if not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"run id {run_id!r} cannot be part of an artifact name")
    return run_id


def artifact_name(component: str, encrypted: bool | str, run_id: str) -> str:
    """Stored name of a component's artifact written by run ``run_id``:
    ``postgres.<run>.dump.zst``, plus ``encrypted`` when it is a suffix (``.age``), or ``.enc``
    when it is True (AES-256-GCM)."""
    extra = encrypted if isinstance(encrypted, str) else (".enc" if encrypted else "")
    suffix = ARTIFACT_SUFFIXES[component] + extra
    return f"{component}.{_check_run_id(run_id)}.{suffix}"


def record_name(component: str, run_id: str) -> str:
    """Stored name of the record run ``run_id`` writes after a component's artifact."""
    return f"{component}.{_check_run_id(run_id)}.json"


def run_object(name: str) -> tuple[str, str | None] | None:
    """``(component, run id or None for the old unsuffixed names)`` of an artifact or record a
    backup run writes; ``None`` for any other name (the manifest, the drill record, unknown)."""
    match = _RUN_OBJECT.match(name)
    return (match["component"], match["run"]) if match else None


def manifest_digest(data: bytes) -> str:
    """The sha256 a drill record carries to say which manifest it verified."""
    return hashlib.sha256(data).hexdigest()


def set_id_for_partition(partition_key: str) -> str:
    """Set ids are the partition date: re-running a partition targets the same set."""
    if not _SET_ID.match(partition_key):
        raise ManifestError(f"partition key {partition_key!r} is not a YYYY-MM-DD date")
    return partition_key


@dataclass
class ComponentRecord:
    """One component's artifact and the source facts a restore drill verifies."""

    component: str
    artifact: dict[str, Any]
    source: dict[str, Any]
    tool: dict[str, Any]
    # the run that wrote it, and whether it was told to replace a complete set (force)
    run_id: str = ""
    replace: bool = False

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "component": self.component,
                "artifact": self.artifact,
                "source": self.source,
                "tool": self.tool,
                "run_id": self.run_id,
                "replace": self.replace,
            },
            indent=2,
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ComponentRecord:
        try:
            obj = json.loads(data)
            return cls(
                obj["component"],
                obj["artifact"],
                obj["source"],
                obj["tool"],
                str(obj.get("run_id", "")),
                bool(obj.get("replace", False)),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ManifestError(f"unreadable component record: {exc}") from None


def build_manifest(
    set_id: str,
    records: dict[str, ComponentRecord],
    stored_sizes: dict[str, int],
    *,
    environment: str,
    run_id: str,
    location: str,
    created_at: datetime | None = None,
) -> dict[str, Any]:
    """Assemble the manifest, refusing a set whose artifacts are missing or of the wrong size."""
    missing = [c for c in COMPONENTS if c not in records]
    if missing:
        raise ManifestError(f"set {set_id} lacks component records for: {', '.join(missing)}")
    artifacts: dict[str, Any] = {}
    # globals: every set taken since they exist; optional for the records of older runs
    for component in (*COMPONENTS, *((GLOBALS,) if GLOBALS in records else ())):
        rec = records[component]
        if rec.component != component:
            raise ManifestError(f"set {set_id}: the record for {component} is {rec.component}'s")
        name = rec.artifact["name"]
        if stored_sizes.get(name) != rec.artifact["bytes_out"]:
            raise ManifestError(
                f"set {set_id}: artifact {name} is {stored_sizes.get(name, 'missing')} bytes in "
                f"the store, its record says {rec.artifact['bytes_out']}; re-run the partition"
            )
        artifacts[component] = {**rec.artifact, "source": rec.source, "tool": rec.tool}
    total = sum(a["bytes_out"] for a in artifacts.values())
    return {
        "format": FORMAT,
        "set_id": set_id,
        "created_at": (created_at or datetime.now(UTC)).isoformat(),
        "environment": environment,
        "run_id": run_id,
        "location": location,
        "total_bytes": total,
        "durations_s": {c: a["duration_s"] for c, a in artifacts.items()},
        "artifacts": artifacts,
    }


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return json.dumps(manifest, indent=2, sort_keys=True).encode()


def parse_manifest(data: bytes) -> dict[str, Any]:
    """Parse and sanity-check a manifest."""
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise ManifestError(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ManifestError(f"manifest format is not {FORMAT}")
    for component in COMPONENTS:
        art = manifest.get("artifacts", {}).get(component)
        if not art or not {"name", "sha256", "bytes_out"} <= set(art):
            raise ManifestError(f"manifest lacks a complete entry for {component}")
    return manifest
