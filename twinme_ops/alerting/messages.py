"""Alerts a person can act on at 3 a.m.: the one formatter behind every Slack message.

An :class:`Alert` says what happened (the headline, the line a phone shows), where (job, backup
set or commit, step, a link to the run), why (the first line of the error, redacted) and the facts
that decide what to do next: the last good backup set, whether a rollback left production healthy,
what a recovery restored. :meth:`Alert.text` is the self-contained message (notification and
fallback); :meth:`Alert.blocks` is the same content laid out with Slack Block Kit.

The builders below (:func:`step_failure`, :func:`release_failure`, ...) are plain functions: the
Dagster hooks, sensors and assets gather the facts and call them, the tests call them directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from twinme_ops.backups.drill import backup_freshness
from twinme_ops.backups.manifest import COMPONENT_LABELS, MANIFEST, parse_manifest
from twinme_ops.backups.store.base import MIB, BackupStore
from twinme_ops.common.redact import redact
from twinme_ops.release.rollback import RollbackOutcome

Severity = Literal["failure", "warning", "success", "info"]
_EMOJI: dict[str, str] = {
    "failure": ":red_circle:",
    "warning": ":warning:",
    "success": ":white_check_mark:",
    "info": ":information_source:",
}

# a backup set older than this without a passed drill means backups have stopped working
FRESHNESS_MAX_AGE_HOURS = 26.0
# the run tag that says a step's failure was already reported: the run-failure sensor then stays
# silent, and a hook does not repeat an alert its step sent itself with richer context
ALERTED_TAG = "twinme/slack-alerted"
BACKUP_JOBS = ("nightly_backup_job", "restore_drill_job", "retention_job")

# Slack limits (Block Kit): a section's text, a field, the number of fields in one section
_SECTION_MAX = 3000
_FIELD_MAX = 2000
_FIELDS_PER_SECTION = 10
_ERROR_MAX = 400

STEP_LABELS = {
    "postgres_backup": "PostgreSQL",
    "redis_backup": "Redis",
    "files_backup": "file storage",
    "backup_set": "backup set manifest",
    "backup_set_restore_drill": "restore drill",
    "restore_drill_op": "restore drill",
    "backup_retention": "backup retention",
    "source_checkout": "release checkout",
    "app_tests": "release app tests",
    "container_image": "release image build",
    "api_deployment": "API deployment",
    "api_deployment_deployment_verification": "deployment verification",
    "deployment_tests": "deployment tests",
    "recovery_preflight": "recovery preflight",
    "recovery_approval": "recovery approval (two-person rule)",
    "recovery_safety_backup": "recovery safety backup",
    "recovery_scale_down": "recovery: API scale down",
    "recovery_restore": "recovery restore",
    "recovery_scale_up_and_verify": "recovery: API scale up and verification",
}

_NO_MANIFEST = (
    "No manifest was written for this set: it is not a backup. Fix the cause and re-run the "
    "partition."
)
_SET_COMPLETE = (
    "Nothing is lost: the set named above is complete and was not touched, and this run kept "
    "nothing of its own. To replace the set, re-run with force: true."
)
_DRILL_FAILED = (
    "This set did not restore: do not rely on it. Read the drill's failures in the run, then "
    "re-run the backup and restore_drill_job."
)
_NOT_DEPLOYED = "Production is unchanged: nothing was deployed."
ADVICE = {
    "postgres_backup": _NO_MANIFEST,
    "redis_backup": _NO_MANIFEST,
    "files_backup": _NO_MANIFEST,
    "backup_set": _NO_MANIFEST,
    "backup_set_restore_drill": _DRILL_FAILED,
    "restore_drill_op": _DRILL_FAILED,
    "backup_retention": "Nothing unsafe happened: retention never deletes the newest verified "
    "set. Fix the store access, then re-run retention_job (dry_run: true to preview).",
    "source_checkout": f"{_NOT_DEPLOYED} Check TWINME_GIT_REMOTE and the commit.",
    "app_tests": f"{_NOT_DEPLOYED} The release stopped before any build: fix the tests and "
    "push again.",
    "container_image": f"{_NOT_DEPLOYED} Fix the image build (Dockerfile, registry), then "
    "re-run release_job.",
    "deployment_tests": "Production was not changed by this job: look at the failing check "
    "and the API's dashboards.",
    "recovery_preflight": "Nothing was touched.",
    "recovery_approval": "Nothing was touched: no safety backup, no scale-down, no restore. A "
    "recovery approver other than the launcher approves on the webserver's /twinme/approvals "
    "page; re-execute recover_job and have it approved (a re-execution needs its own approval).",
    "recovery_safety_backup": "Nothing was restored and the API was not scaled down: "
    "production is as it was.",
    "recovery_scale_down": "Nothing was restored yet: check the Deployment's replica count.",
    "recovery_restore": "Production may be partly restored and the API is scaled down: read the "
    "state above, then re-run recover_job or return to the safety backup.",
    "recovery_scale_up_and_verify": "Data is restored but the API is not confirmed healthy: "
    "check the Deployment and the services.",
}
_DEFAULT_ADVICE = "Fix the cause, then re-run the job."
# a step stopped from outside (its run terminated, or past its max runtime) leaves what its own
# failure would not: a release's failures roll back by themselves, a stopped release does not
STOPPED_ADVICE = {
    **ADVICE,
    "api_deployment": "The rollout was stopped halfway and NOT rolled back: check the API now "
    "(Deployment, /health), and run `twinme-ops rollback` if the new version is unhealthy.",
    "api_deployment_deployment_verification": "The new version is deployed but its verification "
    "was stopped, and nothing was rolled back: run deployment_tests_job, or `twinme-ops "
    "rollback`.",
}

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


@dataclass(frozen=True)
class Fact:
    """One labelled fact of an alert, such as ``Last good set: 2026-11-23, 12.3 MB, 5.1 h old``."""

    label: str
    value: str


def launcher_of(tags: Mapping[str, str]) -> str:
    """Who started a run: the signed-in person (``twinme/launched_by``), else its schedule or
    sensor, else ``""``."""
    if tags.get("twinme/launched_by"):
        return tags["twinme/launched_by"]
    if tags.get("dagster/schedule_name"):
        return f"schedule {tags['dagster/schedule_name']}"
    if tags.get("dagster/sensor_name"):
        return f"sensor {tags['dagster/sensor_name']}"
    return ""


@dataclass(frozen=True)
class Where:
    """Where an alert comes from: the job, its run, the failing step, and what it was about."""

    job: str = ""
    run_id: str = ""
    step: str = ""
    partition: str = ""
    sha: str = ""
    launched_by: str = ""

    @classmethod
    def from_tags(cls, job: str, run_id: str, tags: Mapping[str, str], step: str = "") -> Where:
        """Read the backup set (partition) and release commit from a run's tags."""
        return cls(
            job=job,
            run_id=run_id,
            step=step,
            partition=tags.get("dagster/partition", ""),
            sha=tags.get("twinme/sha", ""),
            launched_by=launcher_of(tags),
        )

    def subject(self) -> str:
        """What the run was about: ``set 2026-11-24``, ``commit 0123456789ab``, or nothing."""
        if self.partition:
            return f"set {self.partition}"
        if self.sha:
            return f"commit {self.sha[:12]}"
        return ""


@dataclass
class Alert:
    """Everything one Slack message says; render it with :meth:`text` and :meth:`blocks`."""

    headline: str
    severity: Severity = "failure"
    where: Where = field(default_factory=Where)
    error: str = ""
    facts: list[Fact] = field(default_factory=list)
    advice: str = ""
    emoji: str = ""

    def run_url(self, dagster_url: str) -> str:
        """The run's page in the Dagster UI, or ``""`` without a UI URL or a run."""
        if not dagster_url or not self.where.run_id:
            return ""
        return f"{dagster_url.rstrip('/')}/runs/{self.where.run_id}"

    def _emoji(self) -> str:
        return self.emoji or _EMOJI[self.severity]

    def text(self, dagster_url: str = "") -> str:
        """The whole alert as one message: what a phone notification and the fallback show."""
        lines = [f"{self._emoji()} {_esc(self.headline)}"]
        if self.error:
            lines.append(f"Error: {_esc(self.error)}")
        lines += [f"{_esc(f.label)}: {_esc(f.value)}" for f in self.facts]
        url = self.run_url(dagster_url)
        if url:
            lines.append(f"Run: {url}")
        elif self.where.run_id:
            lines.append(f"Run: {self.where.run_id[:8]} (job {_esc(self.where.job)})")
        if self.where.launched_by:
            lines.append(f"Launched by: {_esc(self.where.launched_by)}")
        if self.advice:
            lines.append(f"Next: {_esc(self.advice)}")
        return redact("\n".join(lines))

    def blocks(self, dagster_url: str = "") -> list[dict[str, Any]]:
        """The alert laid out with Block Kit: headline, where, error, facts, next step, link."""
        url = self.run_url(dagster_url)
        blocks: list[dict[str, Any]] = [_section(f"{self._emoji()} *{_esc(self.headline)}*")]
        where: list[str] = []
        if self.where.job:
            where.append(f"*Job*\n{_esc(self.where.job)}")
        if self.where.partition:
            where.append(f"*Set*\n{_esc(self.where.partition)}")
        elif self.where.sha:
            where.append(f"*Commit*\n`{_esc(self.where.sha[:12])}`")
        if self.where.step:
            label = STEP_LABELS.get(self.where.step, self.where.step)
            where.append(f"*Step*\n{_esc(label)} (`{_esc(self.where.step)}`)")
        if self.where.run_id:
            short = self.where.run_id[:8]
            where.append(f"*Run*\n<{url}|{short}>" if url else f"*Run*\n{short}")
        if self.where.launched_by:
            where.append(f"*Launched by*\n{_esc(self.where.launched_by)}")
        blocks += _field_sections(where)
        if self.error:
            safe = _esc(self.error).replace("```", "'''")
            blocks.append(_section("*Error*\n```" + _clip(safe, _SECTION_MAX - 20) + "```"))
        blocks += _field_sections([f"*{_esc(f.label)}*\n{_esc(f.value)}" for f in self.facts])
        if self.advice:
            blocks.append(_section(f"*Next:* {_esc(self.advice)}"))
        if url:
            button = {"type": "plain_text", "text": "Open the run in Dagster"}
            blocks.append(
                {"type": "actions", "elements": [{"type": "button", "text": button, "url": url}]}
            )
        return _redact_tree(blocks)


def _esc(text: str) -> str:
    """Slack mrkdwn control characters (&, <, >) escaped, as Slack requires."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": _clip(text, _SECTION_MAX)}}


def _field_sections(fields: Sequence[str]) -> list[dict[str, Any]]:
    return [
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": _clip(f, _FIELD_MAX)}
                for f in fields[i : i + _FIELDS_PER_SECTION]
            ],
        }
        for i in range(0, len(fields), _FIELDS_PER_SECTION)
    ]


def _redact_tree(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redact_tree(v) for v in value]
    if isinstance(value, dict):
        return {k: _redact_tree(v) for k, v in value.items()}
    return value


def first_line(text: object, limit: int = _ERROR_MAX) -> str:
    """The first non-empty line of ``text``, redacted and clipped."""
    lines = [ln.strip() for ln in redact(text).splitlines() if ln.strip()]
    return _clip(lines[0], limit) if lines else ""


def first_error_line(exc: BaseException | None) -> str:
    """The first meaningful line of an exception (a ``dg.Failure``'s description), redacted."""
    if exc is None:
        return "unknown error"
    text = getattr(exc, "description", None) or str(exc) or type(exc).__name__
    return first_line(text) or type(exc).__name__


def mib(n_bytes: float) -> str:
    """A size as people read it in these alerts: ``12.3 MB`` (MiB, like the backup metadata)."""
    return f"{n_bytes / MIB:,.1f} MB"


def _hours(age_h: float) -> str:
    return f"{age_h * 60:.0f} min" if age_h < 1 else f"{age_h:.1f} h"


def _duration(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def last_good_set(store: BackupStore, now: datetime | None = None) -> Fact:
    """The newest set that passed its restore drill, with its size and age, read from the store.

    Never raises: an unreadable store is itself the fact (the alert must still go out).
    """
    now = now or datetime.now(UTC)
    try:
        status = backup_freshness(store, now, FRESHNESS_MAX_AGE_HOURS)
        if status.newest_verified is None or status.age_hours is None:
            return Fact("Last good set", "none: no backup set has passed its restore drill")
        set_id = status.newest_verified
        total = parse_manifest(store.get_bytes(set_id, MANIFEST))["total_bytes"]
    except Exception as exc:
        return Fact(
            "Last good set", f"unknown: the backup store could not be read ({first_line(exc)})"
        )
    stale = "" if status.fresh else f" (older than {FRESHNESS_MAX_AGE_HOURS:g} h)"
    return Fact("Last good set", f"{set_id}, {mib(total)}, {_hours(status.age_hours)} old{stale}")


def _plain(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: getattr(v, "value", v) for k, v in (metadata or {}).items()}


def failure_facts(metadata: Mapping[str, Any] | None) -> list[Fact]:
    """Facts a failing step left in its ``dg.Failure`` metadata: a recovery's state, a drill's
    failed components."""
    values = _plain(metadata)
    facts: list[Fact] = []
    if "safety_set_id" in values:  # recover_job
        restored = list(values.get("restored") or [])
        facts.append(Fact("Restored", ", ".join(restored) or "nothing"))
        if "components" in values:
            pending = [c for c in values["components"] or [] if c not in restored]
            facts.append(Fact("Not restored", ", ".join(pending) or "nothing"))
        safety = values.get("safety_set_id") or ""
        facts.append(
            Fact(
                "Safety backup",
                f"set {safety} (recover_job with set_id {safety} returns to it)"
                if safety
                else "none taken yet: production data was not modified",
            )
        )
    elif values.get("failures"):  # a restore drill
        failed = values["failures"]
        names = list(failed) if isinstance(failed, dict | list) else [str(failed)]
        facts.append(Fact("Did not restore", ", ".join(map(str, names))))
        if values.get("restored"):
            facts.append(Fact("Restored fine", ", ".join(map(str, values["restored"]))))
    return facts


def step_failure(
    where: Where,
    error: str,
    facts: Sequence[Fact] = (),
    advice: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    stopped: bool = False,
    canceled: bool = False,
) -> Alert:
    """A step of a job failed: the component, the set or commit, the error, what to do.

    ``metadata`` is the failing step's ``dg.Failure`` metadata: it adds the facts of
    :func:`failure_facts`, and names the set when the job itself is not partitioned (a drill).
    ``stopped``: the step was interrupted from outside (max runtime, termination); the advice
    then says what state that leaves behind. ``canceled``: stopped because someone terminated the
    run, a warning rather than a failure.
    """
    values = _plain(metadata)
    set_id = values.get("set_id")
    if not where.partition and isinstance(set_id, str) and set_id:
        where = replace(where, partition=set_id)
    word = "CANCELED" if canceled else "FAILED"
    if values.get("set_complete"):
        # refused to overwrite a complete set: that set is fine, say so rather than "no manifest"
        advice = _SET_COMPLETE if advice is None else advice
        word, canceled = "REFUSED (the set is already complete)", True  # a warning: nothing lost
    if "safety_set_id" in values:
        # a recovery's error ends with its state, which the facts below lay out line by line
        error = error.split(". State: ")[0]
    label = STEP_LABELS.get(where.step, where.step)
    subject = where.subject()
    return Alert(
        headline=f"TwinMe {where.job} {word} — component: "
        f"{label} (step {where.step})" + (f", {subject}" if subject else ""),
        severity="warning" if canceled else "failure",
        where=where,
        error=error,
        facts=[*facts, *failure_facts(metadata)],
        advice=advice
        if advice is not None
        else (STOPPED_ADVICE if stopped or canceled else ADVICE).get(where.step, _DEFAULT_ADVICE),
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
    where: Where, reason: str, image: str, outcome: RollbackOutcome, previous_image: str = ""
) -> Alert:
    """A deployed release failed its rollout or verification and was rolled back."""
    label = STEP_LABELS.get(where.step, where.step)
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


def backup_success(where: Where, manifest: Mapping[str, Any]) -> Alert:
    """A backup set is complete: its id, size per component and where it is."""
    arts = manifest["artifacts"]
    sizes = ", ".join(f"{COMPONENT_LABELS.get(c, c)} {mib(arts[c]['bytes_out'])}" for c in arts)
    total = mib(manifest["total_bytes"])
    return Alert(
        headline=f"TwinMe backup completed successfully — set {manifest['set_id']}, {total}",
        severity="success",
        where=replace(where, step=""),
        facts=[Fact("Components", sizes), Fact("Location", str(manifest["location"]))],
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
