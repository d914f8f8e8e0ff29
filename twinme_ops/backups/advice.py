"""What an alert tells a person when a backup, drill, retention or recovery step fails.

Each entry is the step's name for people and its next action (``common/step_advice.py``); the
alert formatter lays them out, ``defs/alerts/steps.py`` gathers them by step name. The facts a
failing step leaves in its metadata (a recovery's state, a drill's failures) are read here too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twinme_ops.common.step_advice import StepAdvice

_NO_MANIFEST = (
    "No manifest was written for this set: it is not a backup. Fix the cause and re-run the "
    "partition."
)
# a backup step refused to overwrite a complete set: that set is fine, say so, not "no manifest"
SET_COMPLETE_ADVICE = (
    "Nothing is lost: the set named above is complete and was not touched, and this run kept "
    "nothing of its own. To replace the set, re-run with force: true."
)
_DRILL_FAILED = (
    "This set did not restore: do not rely on it. Read the drill's failures in the run, then "
    "re-run the backup and restore_drill_job."
)

STEPS: dict[str, StepAdvice] = {
    "postgres_backup": StepAdvice("PostgreSQL", _NO_MANIFEST),
    "redis_backup": StepAdvice("Redis", _NO_MANIFEST),
    "files_backup": StepAdvice("file storage", _NO_MANIFEST),
    "backup_set": StepAdvice("backup set manifest", _NO_MANIFEST),
    "backup_set_restore_drill": StepAdvice("restore drill", _DRILL_FAILED),
    "restore_drill_op": StepAdvice("restore drill", _DRILL_FAILED),
    "postgres_base_backup": StepAdvice(
        "PostgreSQL base backup",
        "No new base backup: the WAL archive still holds every segment since the previous base "
        "backup, so point-in-time recovery still works from it (slower to replay). Read the "
        "error's fix, then re-execute base_backup_job; if the previous base backup is old, do it "
        "today with force_full: true.",
    ),
    "point_in_time_drill": StepAdvice(
        "point-in-time drill",
        "The WAL archive did not restore to the point asked: do not count on point-in-time "
        "recovery until a drill passes. Read the failures above (a missing or damaged WAL "
        "segment needs a new full base backup; a stopped receiver needs restarting, or with "
        "CloudNativePG the plugin's archiving checking), then re-run pitr_drill_job. The nightly "
        "logical sets are not affected.",
    ),
    "backup_retention": StepAdvice(
        "backup retention",
        "Nothing unsafe happened: retention never deletes the newest verified set. Fix the store "
        "access, then re-run retention_job (dry_run: true to preview).",
    ),
    "wal_archive_retention": StepAdvice(
        "WAL archive retention",
        "The archive is still restorable: retention deletes oldest first and only what no kept "
        "base backup needs. Read the error's fix, then re-run retention_job (it finishes what a "
        "stopped run left; dry_run: true to preview). Production: fix the ObjectStore's "
        "retentionPolicy.",
    ),
    "recovery_preflight": StepAdvice("recovery preflight", "Nothing was touched."),
    "recovery_approval": StepAdvice(
        "recovery approval (two-person rule)",
        "Nothing was touched: no safety backup, no scale-down, no restore. A recovery approver "
        "other than the launcher approves on the webserver's /twinme/approvals page; re-execute "
        "recover_job and have it approved (a re-execution needs its own approval).",
    ),
    "recovery_safety_backup": StepAdvice(
        "recovery safety backup",
        "Nothing was restored and the API was not scaled down: production is as it was.",
    ),
    "recovery_scale_down": StepAdvice(
        "recovery: API scale down",
        "Nothing was restored yet: check the Deployment's replica count.",
    ),
    "recovery_restore": StepAdvice(
        "recovery restore",
        "Production may be partly restored and the API is scaled down: read the state above, "
        "then re-run recover_job or return to the safety backup.",
    ),
    "recovery_scale_up_and_verify": StepAdvice(
        "recovery: API scale up and verification",
        "Data is restored but the API is not confirmed healthy: check the Deployment and the "
        "services.",
    ),
}


def failure_facts(values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The facts a failing backup step left in its ``dg.Failure`` metadata, as (label, value):
    a recovery's state (what it restored, what not, its safety backup), a drill's failed
    components."""
    facts: list[tuple[str, str]] = []
    if "safety_set_id" in values:  # recover_job
        restored = list(values.get("restored") or [])
        facts.append(("Restored", ", ".join(restored) or "nothing"))
        if "components" in values:
            pending = [c for c in values["components"] or [] if c not in restored]
            facts.append(("Not restored", ", ".join(pending) or "nothing"))
        safety = values.get("safety_set_id") or ""
        facts.append(
            (
                "Safety backup",
                f"set {safety} (recover_job with set_id {safety} returns to it)"
                if safety
                else "none taken yet: production data was not modified",
            )
        )
    elif values.get("failures"):  # a restore drill
        failed = values["failures"]
        names = list(failed) if isinstance(failed, dict | list) else [str(failed)]
        facts.append(("Did not restore", ", ".join(map(str, names))))
        if values.get("restored"):
            facts.append(("Restored fine", ", ".join(map(str, values["restored"]))))
    return facts


def short_error(error: str, values: Mapping[str, Any]) -> str:
    """A recovery's error ends with its state, which :func:`failure_facts` lays out line by
    line: keep only the error."""
    return error.split(". State: ")[0] if "safety_set_id" in values else error


# wal_archive_rpo_sensor's alert (docs/runbooks.md, "The WAL archive falls behind")
WAL_ARCHIVE_ADVICE = (
    "Commits after the recovery point are not archived yet: a point-in-time restore now would "
    "lose them. Read the receiver's log (receiver/pg_receivewal.log in the archive above), then "
    "restart it: `twinme-ops sandbox up` (idempotent). The slot keeps the WAL meanwhile: watch "
    "its safe_wal_size, and if it nears 0 free disk on the server before the slot is lost."
)
