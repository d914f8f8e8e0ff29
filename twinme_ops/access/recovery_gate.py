"""The wait of recover_job's ``recovery_approval`` step: no safety backup, no scale-down, no
restore until a recovery approver other than the launcher has approved this very run.

The resource says whether the rule applies: always in production, and wherever the webserver's
access control is on (``TWINME_ACCESS_POLICY``); on a developer's sandbox without sign-in there
is nobody to tell apart, and the step says so in the run's log.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import dagster as dg
from pydantic import Field

from twinme_ops.access import approvals
from twinme_ops.common.log import Log


class ApprovalTimeout(Exception):
    """Nobody approved in time: the recovery stops before touching anything."""


class RecoveryApprovalResource(dg.ConfigurableResource):
    """Whether recover_job needs a second person, and where that person approves."""

    required: bool = Field(
        default=False,
        description="Wait for an approval (production and access-controlled webservers).",
    )
    approval_url: str = Field(
        default="", description="The webserver's approval page, for the Slack message."
    )
    poll_interval_s: float = Field(default=2.0, gt=0, description="How often the run looks.")


def wait_for_approval(
    run_id: str,
    read_tags: Callable[[], Mapping[str, str]],
    timeout_s: float,
    poll_interval_s: float,
    log: Log,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> approvals.Approval:
    """Poll the run's tags until :func:`approvals.check` passes, or :class:`ApprovalTimeout`.

    A run that names no launcher fails at once: nobody could be told apart from it.
    """
    deadline = clock() + timeout_s
    last_said = ""
    next_progress = clock() + 60
    while True:
        tags = read_tags()
        try:
            return approvals.check(run_id, tags, datetime.now(UTC))
        except approvals.ApprovalRefused as exc:
            why = str(exc)
            if approvals.LAUNCHED_BY_TAG not in tags:
                raise
        if why != last_said or clock() >= next_progress:
            remaining = max(0.0, deadline - clock())
            log.info(f"waiting for a recovery approver: {why} ({remaining / 60:.1f} min left)")
            last_said, next_progress = why, clock() + 60
        if clock() >= deadline:
            raise ApprovalTimeout(
                f"no valid approval within {timeout_s / 60:.1f} min: {why}. Nothing was "
                "changed: no safety backup, no scale-down, no restore."
            )
        sleep(poll_interval_s)
