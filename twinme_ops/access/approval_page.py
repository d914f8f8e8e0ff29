"""The approval page of the two-person rule: ``/twinme/approvals`` on the webserver.

``GET /twinme/approvals`` lists the recover_job runs that have not finished, who launched each,
and its approval; ``POST /twinme/approvals/<run_id>`` (JSON, so a cross-site form cannot send
it) approves one, for a recovery approver who did not launch it. The approval is written into
the run's tags (approvals.py), announced in the run's own event log, and audited.
"""

from __future__ import annotations

import html
from datetime import timedelta
from typing import Any

import anyio
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter

from twinme_ops.access import approvals
from twinme_ops.access.approvals import LAUNCHED_BY_TAG
from twinme_ops.access.asgi import Receive, Scope, Send, send_json, send_response
from twinme_ops.access.audit import AuditLog
from twinme_ops.access.policy import AccessPolicy, Identity

OPEN_STATUSES = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


class ApprovalPage:
    """Serves the page and the approve endpoint."""

    def __init__(
        self, policy: AccessPolicy, instance: DagsterInstance, audit: AuditLog, prefix: str
    ) -> None:
        self.policy = policy
        self.instance = instance
        self.audit = audit
        self.prefix = prefix

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, who: Identity, source: str, rel: str
    ) -> None:
        method = scope.get("method", "GET")
        run_id = rel.removeprefix("/twinme/approvals").strip("/")
        if method == "GET" and not run_id:
            page = await anyio.to_thread.run_sync(self._page, who)
            await send_response(send, 200, page.encode(), b"text/html; charset=utf-8")
            return
        if method != "POST" or not run_id:
            await send_json(
                send,
                405,
                {
                    "error": "method_not_allowed",
                    "reason": "POST /twinme/approvals/<run id> approves",
                },
            )
            return
        content_type = ""
        for key, value in scope.get("headers", []):
            if key.lower() == b"content-type":
                content_type = value.decode("latin-1")
        if not content_type.startswith("application/json"):
            await send_json(
                send,
                415,
                {
                    "error": "unsupported_media_type",
                    "reason": "send the approval as application/json",
                },
            )
            return
        status, payload = await anyio.to_thread.run_sync(self._approve, who, source, run_id)
        await send_json(send, status, payload)

    def _approve(self, who: Identity, source: str, run_id: str) -> tuple[int, dict[str, Any]]:
        run = self.instance.get_run_by_id(run_id)
        job = run.job_name if run else ""
        audit = {
            "user": who.user,
            "roles": who.role_names(),
            "action": "approve",
            "field": "POST /twinme/approvals",
            "job": job,
            "run_id": run_id,
            "source": source,
        }
        if not who.may("approve"):
            reason = (
                f"{who.user} ({who.role_names()}) may not approve a recovery: that needs "
                "the role recovery_approver"
            )
            self.audit.record(**audit, outcome="denied", reason=reason)
            return 403, {"error": "forbidden", "reason": reason}
        if run is None:
            reason = f"no run {run_id}"
            self.audit.record(**audit, outcome="denied", reason=reason)
            return 404, {"error": "not_found", "reason": reason}
        if run.status not in OPEN_STATUSES:
            reason = f"run {run_id} is {run.status.value}: there is nothing left to approve"
            self.audit.record(**audit, outcome="denied", reason=reason)
            return 409, {"error": "conflict", "reason": reason}
        valid_for = timedelta(minutes=self.policy.approvals.valid_for_minutes)
        try:
            approval = approvals.grant(run_id, job, run.tags, who.user, who.role_names(), valid_for)
        except approvals.ApprovalRefused as exc:
            self.audit.record(**audit, outcome="denied", reason=str(exc))
            return 403, {"error": "forbidden", "reason": str(exc)}
        self.instance.add_run_tags(run_id, approval.tags())
        expires = approval.expires_at.isoformat(timespec="seconds")
        self.instance.report_engine_event(
            f"recovery approved by {who.user} (launched by {run.tags.get(LAUNCHED_BY_TAG)}); "
            f"the approval expires at {expires}",
            run,
        )
        self.audit.record(**audit, outcome="allowed", reason=f"expires {expires}")
        return 200, {"approved": run_id, "approved_by": who.user, "expires_at": expires}

    def _page(self, who: Identity) -> str:
        records = self.instance.get_run_records(
            RunsFilter(job_name="recover_job", statuses=OPEN_STATUSES), limit=50
        )
        rows = []
        for record in records:
            run = record.dagster_run
            approval = approvals.read(run.tags)
            state = (
                f"approved by {approval.approved_by} until {approval.expires_at:%H:%M:%S} UTC"
                if approval and approval.run_id == run.run_id
                else "waiting for a second person"
            )
            button = (
                f"<button onclick=\"approve('{html.escape(run.run_id)}')\">Approve</button>"
                if who.may("approve") and run.tags.get(LAUNCHED_BY_TAG) != who.user
                else ""
            )
            rows.append(
                f"<tr><td><a href='{self.prefix}/runs/{html.escape(run.run_id)}'>"
                f"{html.escape(run.run_id[:8])}</a></td>"
                f"<td>{html.escape(run.tags.get(LAUNCHED_BY_TAG, '?'))}</td>"
                f"<td>{html.escape(run.status.value)}</td><td>{html.escape(state)}</td>"
                f"<td>{button}</td></tr>"
            )
        table = "".join(rows) or "<tr><td colspan=5>No recovery is waiting.</td></tr>"
        return f"""<!doctype html><html><head><meta charset="utf-8">
<title>twinme_ops — recovery approvals</title></head><body>
<h1>Recovery approvals</h1>
<p>Signed in as {html.escape(who.user)} ({html.escape(who.role_names())}). A recovery
overwrites production: approve only a run you have checked (its set, its target database) with
the person who launched it.</p>
<table border=1 cellpadding=4><tr><th>Run</th><th>Launched by</th><th>Status</th>
<th>Approval</th><th></th></tr>{table}</table>
<p id="result"></p>
<script>
async function approve(runId) {{
  const r = await fetch("{self.prefix}/twinme/approvals/" + runId,
    {{method: "POST", headers: {{"Content-Type": "application/json"}}, body: "{{}}"}});
  const body = await r.json();
  document.getElementById("result").textContent = body.reason || ("approved until " +
    body.expires_at);
  if (r.ok) setTimeout(() => location.reload(), 1000);
}}
</script></body></html>"""


def approval_url(policy_url: str, prefix: str = "") -> str:
    """Where an approver approves (for the Slack message of a waiting recovery)."""
    return f"{policy_url.rstrip('/')}{prefix}/twinme/approvals" if policy_url else ""
