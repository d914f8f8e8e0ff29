"""What an alert says about one step, written beside the step that knows it.

Each domain declares, for the Dagster steps that run its work, a :class:`StepAdvice`: the step's
name as a person reads it, and what to do when it fails or is stopped from outside. The alert
formatter (``twinme_ops.alerting.messages``) only lays it out; ``defs/alerts/steps.py`` gathers
the domains' tables, so the formatter never imports a domain.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_ADVICE = "Fix the cause, then re-run the job."


@dataclass(frozen=True)
class StepAdvice:
    """One step's words for alerts.

    ``failed`` is the next action when the step fails; ``stopped`` when it was interrupted from
    outside (run terminated, or past its maximum runtime), which can leave a different state (a
    rollout stopped halfway is not rolled back); empty means the same as ``failed``.
    """

    label: str
    failed: str = DEFAULT_ADVICE
    stopped: str = ""

    def next_step(self, stopped: bool = False) -> str:
        """What to do next, for a failure or for a stop from outside."""
        return (self.stopped or self.failed) if stopped else self.failed
