"""The two-person rule of ``recover_job``: an approval is a recorded, expiring action.

A recovery overwrites production's data, so the run that does it needs two people: the
operator who launched it (``twinme/launched_by``, written by the webserver from a verified
token) and a recovery approver who is somebody else. The approver's click on the webserver's
approval page writes the approval into the run's own tags, in the instance's run storage, beside
the run it approves:

- ``twinme/approved_by``: who approved (verified token), ``twinme/approval_roles``: their roles;
- ``twinme/approved_run``: the run id approved, so a re-execution (which copies the parent's
  tags) needs its own approval;
- ``twinme/approved_at`` and ``twinme/approval_expires_at`` (UTC, ISO 8601).

The run's ``recovery_approval`` step waits for such an approval, checks it again (another
person, this run, not expired) and only then lets the safety backup start. A client can never
set these tags: the webserver strips them from every launch (mutations.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# who launched the run, written by the webserver from the verified token (mutations.py); defined
# here, beside the approval's tags, so that the code location reads it without the GraphQL parser
LAUNCHED_BY_TAG = "twinme/launched_by"
APPROVED_BY = "twinme/approved_by"
APPROVAL_ROLES = "twinme/approval_roles"
APPROVED_RUN = "twinme/approved_run"
APPROVED_AT = "twinme/approved_at"
APPROVAL_EXPIRES_AT = "twinme/approval_expires_at"

APPROVAL_JOBS = frozenset({"recover_job"})


class ApprovalRefused(Exception):
    """Why an approval cannot be given (to the approver) or is not valid (to the run)."""


@dataclass(frozen=True)
class Approval:
    """An approval read back from a run's tags."""

    run_id: str
    approved_by: str
    roles: str
    approved_at: datetime
    expires_at: datetime

    def tags(self) -> dict[str, str]:
        """The run tags that record it."""
        return {
            APPROVED_BY: self.approved_by,
            APPROVAL_ROLES: self.roles,
            APPROVED_RUN: self.run_id,
            APPROVED_AT: self.approved_at.isoformat(timespec="seconds"),
            APPROVAL_EXPIRES_AT: self.expires_at.isoformat(timespec="seconds"),
        }


def grant(
    run_id: str,
    job: str,
    tags: Mapping[str, str],
    approver: str,
    roles: str,
    valid_for: timedelta,
    now: datetime | None = None,
) -> Approval:
    """The approval ``approver`` gives run ``run_id``, or :class:`ApprovalRefused` with why."""
    if job not in APPROVAL_JOBS:
        raise ApprovalRefused(f"run {run_id} is a {job} run: only recover_job needs an approval")
    launcher = tags.get(LAUNCHED_BY_TAG, "")
    if not launcher:
        raise ApprovalRefused(
            f"run {run_id} names no launcher ({LAUNCHED_BY_TAG}): it was not launched through "
            "the access-controlled webserver and cannot be approved. Launch recover_job again "
            "from the UI."
        )
    if launcher == approver:
        raise ApprovalRefused(
            f"you ({approver}) launched run {run_id}: a recovery needs a second person. Ask "
            "another recovery approver to approve it."
        )
    at = now or datetime.now(UTC)
    return Approval(run_id, approver, roles, at, at + valid_for)


def read(tags: Mapping[str, str]) -> Approval | None:
    """The approval recorded in a run's tags, if any (malformed records count as none)."""
    if APPROVED_BY not in tags:
        return None
    try:
        return Approval(
            run_id=tags.get(APPROVED_RUN, ""),
            approved_by=tags[APPROVED_BY],
            roles=tags.get(APPROVAL_ROLES, ""),
            approved_at=datetime.fromisoformat(tags[APPROVED_AT]),
            expires_at=datetime.fromisoformat(tags[APPROVAL_EXPIRES_AT]),
        )
    except (KeyError, ValueError):
        return None


def check(run_id: str, tags: Mapping[str, str], now: datetime | None = None) -> Approval:
    """The run's valid approval, or :class:`ApprovalRefused` saying what is missing."""
    launcher = tags.get(LAUNCHED_BY_TAG, "")
    if not launcher:
        raise ApprovalRefused(
            f"this run names no launcher ({LAUNCHED_BY_TAG}): launch recover_job from the "
            "access-controlled webserver, which records who launched it"
        )
    approval = read(tags)
    if approval is None:
        raise ApprovalRefused(
            f"no recovery approver has approved this run (launched by {launcher})"
        )
    if approval.run_id != run_id:
        raise ApprovalRefused(
            f"the approval by {approval.approved_by} was for run {approval.run_id[:8]}, not this "
            "one (a re-execution needs its own approval)"
        )
    if approval.approved_by == launcher:
        raise ApprovalRefused(f"{launcher} launched this run and cannot approve it")
    if (now or datetime.now(UTC)) > approval.expires_at:
        raise ApprovalRefused(
            f"the approval by {approval.approved_by} expired at "
            f"{approval.expires_at.isoformat(timespec='seconds')}"
        )
    return approval
