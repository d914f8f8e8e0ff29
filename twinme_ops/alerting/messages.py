"""What each kind of alert says: the builders behind every Slack message.

The builders (:func:`step_failure`, :func:`release_failure`, ...) are plain functions over
plain facts: the Dagster hooks, sensors and assets gather the facts (the failing step's own
advice, the last good backup set, a rollback's outcome) and call them, the tests call them
directly. This module imports no domain and reads no store; the :class:`~.alert.Alert` they
return is laid out in ``alerting/alert.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Protocol

from twinme_ops.alerting.alert import Alert, Fact, Where, mib
from twinme_ops.common.step_advice import DEFAULT_ADVICE, StepAdvice

# why Dagster says a run failed (tag dagster/failure_reason), in words, when no step reported it
_RUN_FAILURE_REASONS = {
    "NEVER_STARTED": "the run failed before it started (launcher, pod or code location)",
    "JOB_INITIALIZATION_FAILURE": "the run failed before any step (resources or executor did "
    "not start)",
    "START_TIMEOUT": "the run never started (its worker did not come up in time)",
    "UNEXPECTED_TERMINATION": "the run's process was killed or crashed",
    "RUN_WORKER_RESTART": "the run worker restarted in the middle of the run",
    "RUN_EXCEPTION": "the run failed outside its steps",
}


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class Rollback(Protocol):
    """What :func:`release_failure` needs to know of a rollback (``release.rollback``'s
    outcome fits): where it went, whether that version is healthy, in one sentence."""

    rolled_back_to: str
    healthy: bool

    def sentence(self) -> str: ...


def step_failure(
    where: Where,
    error: str,
    facts: Sequence[Fact] = (),
    step: StepAdvice | None = None,
    *,
    stopped: bool = False,
    canceled: bool = False,
    refused: str = "",
    advice: str | None = None,
) -> Alert:
    """A step of a job failed: the component, the set or commit, the error, what to do.

    ``step`` is the failing step's own words (its label and next actions, declared beside the
    step). ``stopped``: the step was interrupted from outside (max runtime, termination); the
    advice then says what state that leaves behind. ``canceled``: stopped because someone
    terminated the run, a warning rather than a failure. ``refused``: the step refused to act,
    for the reason given, and nothing was lost (a warning). ``advice`` replaces the step's own.
    """
    step = step or StepAdvice(where.step, DEFAULT_ADVICE)
    word = "CANCELED" if canceled else "FAILED"
    if refused:
        word, canceled = f"REFUSED ({refused})", True  # a warning: nothing lost
    subject = where.subject()
    return Alert(
        headline=f"TwinMe {where.job} {word} — component: "
        f"{step.label} (step {where.step})" + (f", {subject}" if subject else ""),
        severity="warning" if canceled else "failure",
        where=where,
        error=error,
        facts=list(facts),
        advice=advice if advice is not None else step.next_step(stopped or canceled),
        step_label=step.label,
    )


def run_failure(where: Where, reason: str | None, error: str, facts: Sequence[Fact] = ()) -> Alert:
    """A run failed without any step reporting it: it never started, or crashed outside a step."""
    why = _RUN_FAILURE_REASONS.get(reason or "", "the run failed outside its steps")
    subject = where.subject()
    return Alert(
        headline=f"TwinMe {where.job} FAILED — {why}" + (f", {subject}" if subject else ""),
        where=where,
        error=error,
        facts=list(facts),
        advice="No step reported this failure: read the run's event log in Dagster (launcher, "
        "pod events, code location), fix the cause, then re-execute the run.",
    )


def run_canceled(where: Where, reason: str, facts: Sequence[Fact] = ()) -> Alert:
    """A run was canceled before any of its steps ran."""
    subject = where.subject()
    return Alert(
        headline=f"TwinMe {where.job} CANCELED — before any step ran"
        + (f", {subject}" if subject else ""),
        severity="warning",
        where=where,
        error=reason,
        facts=list(facts),
        advice="Nothing was changed by this run. Launch it again if it is still needed.",
    )


def release_failure(
    where: Where,
    reason: str,
    image: str,
    outcome: Rollback,
    previous_image: str = "",
    step: StepAdvice | None = None,
) -> Alert:
    """A deployed release failed its rollout or verification and was rolled back."""
    label = step.label if step else where.step
    sha = where.sha[:12] or "?"
    state = "rollback healthy" if outcome.healthy else "rollback NOT healthy"
    facts = [Fact("Commit", where.sha or "unknown"), Fact("Image", image or "unknown")]
    if previous_image and previous_image != outcome.rolled_back_to:
        facts.append(Fact("Previous image", previous_image))
    facts.append(Fact("Rollback", outcome.sentence()))
    advice = (
        "Production runs the previous version again and it passed verification: fix the cause "
        "and push a new commit."
        if outcome.healthy
        else "Production is NOT healthy on the previous version either: check the Deployment and "
        "the API now (kubectl rollout status, /health), or roll back further with "
        "`twinme-ops rollback --image <known-good digest>`."
    )
    return Alert(
        headline=f"TwinMe release {sha} FAILED — {label} (step {where.step}), {state}",
        severity="failure",
        emoji=":rotating_light:",
        where=where,
        error=reason,
        facts=facts,
        advice=advice,
        step_label=label,
    )


def release_success(
    where: Where,
    image: str,
    deployed: Mapping[str, Any],
    built: Mapping[str, Any],
    verification: Mapping[str, Any],
    total_s: float | None = None,
) -> Alert:
    """A release is deployed (by digest) and verified: sha, image, timings, load-test figures.

    ``deployed``, ``built`` and ``verification`` are the metadata of api_deployment,
    container_image and deployment_verification; the build time counts only if it built this sha.
    """
    timings = {
        "build": built.get("build_s") if built.get("sha") == where.sha else None,
        "rollout": deployed.get("rollout_s"),
        "load test": verification.get("load_duration_s"),
        "whole release": total_s,
    }
    parts = [f"{name} {_duration(float(s))}" for name, s in timings.items() if s is not None]
    facts = [Fact("Commit", where.sha or "unknown"), Fact("Image", image)]
    if deployed.get("previous_image"):
        facts.append(Fact("Previous image", str(deployed["previous_image"])))
    if parts:
        facts.append(Fact("Timings", ", ".join(parts)))
    if "load_p95_ms" in verification:
        facts.append(
            Fact(
                "Load test",
                f"p95 {verification['load_p95_ms']} ms (gate "
                f"{verification.get('load_p95_gate_ms', '?')} ms), error rate "
                f"{verification.get('load_error_rate_pct', '?')} %, "
                f"{verification.get('load_requests', '?')} requests",
            )
        )
    return Alert(
        headline=f"TwinMe release {where.sha[:12]} deployed and verified — image {image}",
        severity="success",
        emoji=":rocket:",
        where=replace(where, step=""),
        facts=facts,
    )


def backup_success(
    where: Where, set_id: str, total_bytes: int, sizes: Mapping[str, int], location: str
) -> Alert:
    """A backup set is complete: its id, size per component (by label) and where it is."""
    parts = ", ".join(f"{label} {mib(size)}" for label, size in sizes.items())
    return Alert(
        headline=f"TwinMe backup completed successfully — set {set_id}, {mib(total_bytes)}",
        severity="success",
        where=replace(where, step=""),
        facts=[Fact("Components", parts), Fact("Location", location)],
        advice="The restore drill of this set runs next; an alert follows only if it fails.",
    )


def recovery_success(
    where: Where,
    set_id: str,
    restored: Sequence[str],
    safety_set_id: str,
    checks: Mapping[str, Any],
    approved_by: str = "",
) -> Alert:
    """A recovery finished: which set, which components, where the pre-recovery state is, and
    the two people behind it (launcher in ``where``, approver)."""
    approval = [Fact("Approved by", approved_by)] if approved_by else []
    return Alert(
        headline=f"TwinMe recovery completed for backup: {set_id}",
        severity="success",
        emoji=":arrows_counterclockwise:",
        where=replace(where, step=""),
        facts=[
            Fact("Restored", ", ".join(restored) or "nothing"),
            Fact("Safety backup", f"set {safety_set_id}" if safety_set_id else "none"),
            Fact("Checks", ", ".join(f"{k} {'ok' if v is True else v}" for k, v in checks.items())),
            *approval,
        ],
    )


def approval_needed(
    where: Where,
    set_id: str,
    components: Sequence[str],
    target_db: str,
    approval_url: str,
    wait_s: float,
) -> Alert:
    """A recovery waits for its second person: what it would restore, where to approve."""
    place = approval_url or "the webserver's /twinme/approvals page"
    return Alert(
        headline=f"TwinMe recovery of set {set_id} waits for approval — launched by "
        f"{where.launched_by or 'unknown'}",
        severity="warning",
        emoji=":raised_hand:",
        where=replace(where, step=""),
        facts=[
            Fact("Would restore", f"{', '.join(components)} into database {target_db}"),
            Fact("Waits", f"{wait_s / 60:.0f} min, then stops with nothing changed"),
        ],
        advice=f"A recovery approver other than {where.launched_by or 'the launcher'}: check "
        f"the set and the target with them, then approve at {place}.",
    )


def backups_stale(message: str, last_good: Fact, store: str) -> Alert:
    """No recent set has passed its drill: backups stopped, or every recent set is broken."""
    return Alert(
        headline=f"TwinMe backups are stale: {message}",
        severity="warning",
        facts=[last_good, Fact("Store", store)],
        advice="Check the last runs of nightly_backup_job and restore_drill_job (and that the "
        "schedules and the daemon are running).",
    )


def backups_fresh_again(message: str) -> Alert:
    """The stale-backup alert is resolved."""
    return Alert(
        headline=f"TwinMe backups are fresh again: {message}",
        severity="info",
        emoji=":large_green_circle:",
    )


def wal_archive_behind(
    problems: Sequence[str], facts: Sequence[Fact], advice: str, *, reminder: bool = False
) -> Alert:
    """The WAL archive fell behind or its receiver died: what is wrong, the RPO facts, the fix.

    ``problems`` are sentences ("the WAL receiver is not running", "the archive is 300 s
    behind ..."); ``reminder``: the same problem, still there an hour later."""
    prefix = "still behind" if reminder else "falls behind"
    return Alert(
        headline=f"TwinMe WAL archive {prefix}: {'; '.join(problems)}",
        severity="warning",
        emoji=":hourglass_flowing_sand:",
        facts=list(facts),
        advice=advice,
    )


def wal_archive_caught_up(rpo_s: float | None, since: str) -> Alert:
    """The WAL archive alert is resolved: the receiver streams and the RPO is back under."""
    rpo = "unknown" if rpo_s is None else _duration(rpo_s)
    return Alert(
        headline=f"TwinMe WAL archive caught up: RPO {rpo}, receiver streaming (alerted {since})",
        severity="info",
        emoji=":large_green_circle:",
    )


def capacity_running_out(
    items: Sequence[tuple[str, str]], horizon_days: int, sets: int, advice: str
) -> Alert:
    """A resource reaches its limit within ``horizon_days`` at its current growth (or already
    has): ``items`` are ``(resource, "now of limit; limit reached: when")``."""
    names = ", ".join(label for label, _ in items)
    verb = "reaches its limit" if len(items) == 1 else "reach their limits"
    return Alert(
        headline=f"TwinMe capacity: {names} {verb} within {horizon_days} days",
        severity="warning",
        emoji=":chart_with_upwards_trend:",
        facts=[Fact(label, what) for label, what in items]
        + [Fact("Based on", f"{sets} nightly backup sets (linear growth)")],
        advice=advice,
    )
