"""An alert a person can act on at 3 a.m., and how it is laid out for Slack.

An :class:`Alert` says what happened (the headline, the line a phone shows), where (job, backup
set or commit, step, a link to the run), why (the first line of the error, redacted) and the facts
that decide what to do next. :meth:`Alert.text` is the self-contained message (notification and
fallback); :meth:`Alert.blocks` is the same content laid out with Slack Block Kit. What each
kind of alert says is built in ``alerting/messages.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from twinme_ops.common.redact import redact

Severity = Literal["failure", "warning", "success", "info"]
_EMOJI: dict[str, str] = {
    "failure": ":red_circle:",
    "warning": ":warning:",
    "success": ":white_check_mark:",
    "info": ":information_source:",
}

# the run tag that says a step's failure was already reported: the run-failure sensor then stays
# silent, and a hook does not repeat an alert its step sent itself with richer context
ALERTED_TAG = "twinme/slack-alerted"

# Slack limits (Block Kit): a section's text, a field, the number of fields in one section
_SECTION_MAX = 3000
_FIELD_MAX = 2000
_FIELDS_PER_SECTION = 10
_ERROR_MAX = 400


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
    step_label: str = ""  # the step as people name it ("API deployment"); "" = its name

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
            label = self.step_label or self.where.step
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
    return f"{n_bytes / (1024 * 1024):,.1f} MB"
