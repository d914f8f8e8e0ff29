"""A backup set read back from the store: its manifest, its drill verdict, and its leftovers.

Every reader of sets (the drill, recovery, retention, the freshness sensor, alerts, the CLI) goes
through :func:`read_set`, so they agree on what a set is:

* **complete** when ``manifest.json`` exists and parses; the manifest names the artifacts it
  vouches for, and nothing else in the set folder counts;
* its drill verdict counts only if ``drill.json`` was written about *this* manifest (the record
  carries the manifest's sha256): a verdict about a manifest that ``force`` has since replaced is
  ``stale``, not ``passed``;
* anything the manifest does not name is a **leftover**: a losing run's artifacts, a killed
  run's partial files, old records. :func:`sweep_leftovers` removes them when it is safe: a dead
  writer's partial file at once (its lock tells), the objects of a run that failed or was
  canceled at once, any other unnamed object once it is older than a grace period (it may belong
  to a run still writing, or to a drill still reading a manifest that was just replaced).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from twinme_ops.backups.manifest import (
    DRILL,
    MANIFEST,
    ManifestError,
    manifest_digest,
    parse_manifest,
    run_object,
)
from twinme_ops.backups.store.base import ArtifactNotFoundError, BackupStore
from twinme_ops.common.log import Log

DrillVerdict = Literal["passed", "failed", "stale", "none"]
# Unnamed complete objects younger than this may belong to a run still writing (the backup job
# stops at 4 h) or be read by a drill of a manifest just replaced: kept until then.
LEFTOVER_GRACE_S = 24 * 3600.0
# run statuses whose objects nobody will ever name or read
_DEAD_RUN_STATUSES = ("FAILURE", "CANCELED")


class SetNotFoundError(LookupError):
    """The requested set does not exist, or is not complete; the message names the newest one."""


@dataclass
class SetView:
    """What the store holds for one set id."""

    set_id: str
    objects: int = 0
    manifest: dict[str, Any] | None = None
    manifest_sha256: str = ""
    unreadable: str = ""
    drill: dict[str, Any] | None = None
    # why the drill record counts as a failed drill, when it is malformed
    drill_problem: str = ""

    @property
    def complete(self) -> bool:
        return self.manifest is not None

    @property
    def verdict(self) -> DrillVerdict:
        """The drill verdict about the manifest in place."""
        if self.drill is None:
            return "none"
        about = self.drill.get("manifest_sha256")
        # records written before drills named their manifest are taken as they are
        if about and about != self.manifest_sha256:
            return "stale"
        return "passed" if self.drill.get("passed") is True else "failed"

    def verdict_line(self) -> str:
        """``restore drill passed (…)`` and the like, for a person."""
        if self.verdict == "none":
            return "not drilled yet"
        if self.verdict == "stale":
            return "its last drill verified a manifest that has since been replaced: not drilled"
        reason = (self.drill or {}).get("reason", "")
        word = "passed" if self.verdict == "passed" else "FAILED"
        return f"restore drill {word}" + (f": {reason}" if reason else "")


def read_set(store: BackupStore, set_id: str) -> SetView:
    """Read one set's manifest and drill record (a listing and at most two reads).

    A manifest that exists but does not parse leaves ``manifest`` None and says why in
    ``unreadable``. Store errors propagate.
    """
    names = store.list_artifacts(set_id)
    view = SetView(set_id, objects=len(names))
    if MANIFEST not in names:
        return view
    try:
        data = store.get_bytes(set_id, MANIFEST)
    except ArtifactNotFoundError:
        return view  # removed since the listing
    view.manifest_sha256 = manifest_digest(data)
    try:
        view.manifest = parse_manifest(data)
    except ManifestError as exc:
        view.unreadable = str(exc)
        return view
    if DRILL in names:
        try:
            drill: Any = json.loads(store.get_bytes(set_id, DRILL))
        except ArtifactNotFoundError:
            return view
        except ValueError:
            drill, view.drill_problem = None, "drill record is not valid JSON"
        if not view.drill_problem and not (
            isinstance(drill, dict) and isinstance(drill.get("passed"), bool)
        ):
            view.drill_problem = "drill record has no boolean 'passed'"
        # a malformed record counts as a failed drill
        view.drill = (
            {"passed": False, "reason": view.drill_problem} if view.drill_problem else drill
        )
    return view


def newest_complete_set(store: BackupStore) -> str | None:
    """Id of the newest set that has a manifest."""
    for set_id in sorted(store.list_sets(), reverse=True):
        if store.exists(set_id, MANIFEST):
            return set_id
    return None


def require_complete_set(store: BackupStore, set_id: str) -> SetView:
    """The set, or :class:`SetNotFoundError` naming what is there and the newest complete set.

    Reads only: asking for a set that does not exist creates nothing.
    """
    view = read_set(store, set_id)
    if view.complete:
        return view
    newest = newest_complete_set(store)
    then = (
        f"the newest complete set is {newest}"
        if newest
        else "the store holds no complete set (run nightly_backup_job first)"
    )
    where = store.describe()
    if view.unreadable:
        what = f"backup set {set_id} in {where} has an unreadable manifest ({view.unreadable})"
    elif view.objects:
        what = (
            f"backup set {set_id} in {where} is incomplete (no {MANIFEST}: a run is still "
            "writing it, or one failed): it is not a backup"
        )
    else:
        what = f"no backup set {set_id} in {where}"
    raise SetNotFoundError(f"{what}; {then}. Fix: give one of the listed set ids.")


def sweep_leftovers(
    store: BackupStore,
    set_id: str,
    manifest: dict[str, Any],
    *,
    log: Log,
    run_status: Callable[[str], str | None] | None = None,
    grace_s: float = LEFTOVER_GRACE_S,
    now: datetime | None = None,
) -> list[str]:
    """Remove what ``manifest`` does not name from its set, when it is safe; return the names.

    ``run_status(run_id)`` answers a run's status (``"FAILURE"``, ``"STARTED"``...) or None when
    the run is unknown here (another Dagster instance). Names of unknown form are kept and
    reported: a person put them there.
    """
    now = now or datetime.now(UTC)
    named = {MANIFEST, DRILL} | {art["name"] for art in manifest["artifacts"].values()}
    removed: list[str] = []
    for entry in store.list_entries(set_id):
        if entry.partial:
            if store.remove_partial(set_id, entry, grace_s):
                removed.append(entry.name)
                log.info(
                    f"set {set_id}: removed the unfinished write of {entry.name} (its writer died)"
                )
            continue
        if entry.name in named:
            continue
        owner = run_object(entry.name)
        if owner is None:
            log.info(f"set {set_id}: kept {entry.name}: not a name twinme_ops writes")
            continue
        run = owner[1]
        status = run_status(run) if run and run_status is not None else None
        age_s = (now - entry.modified).total_seconds()
        if status in _DEAD_RUN_STATUSES:
            why = f"left by run {run}, which ended in {status.lower()}"
        elif age_s >= grace_s:
            why = f"not named by the manifest, {age_s / 3600:.1f} h old"
        else:
            continue  # may belong to a run still writing or a drill still reading
        store.delete(set_id, entry.name)
        removed.append(entry.name)
        log.info(f"set {set_id}: removed leftover {entry.name} ({why})")
    return removed
