"""What a signed-in person may change through GraphQL: the mutation rules of the access control.

:class:`GraphqlGuard` handles ``/graphql`` for :class:`~twinme_ops.access.middleware.AccessControl`
once the person is identified: a query passes; each mutation field is an action (mutations.py)
that the person's roles must allow (policy.py), else **403** with the reason; launches get
``twinme/launched_by``; every change is audited, with its outcome (run id, error) read back from
Dagster's response.

Over the GraphQL WebSocket, only subscriptions are accepted: a message carrying anything else
closes the socket (code 4403), so the socket cannot be used to slip a mutation past the rules.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

import anyio
from dagster import DagsterInstance

from twinme_ops.access.asgi import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    read_body,
    replay,
    send_json,
)
from twinme_ops.access.audit import AuditLog
from twinme_ops.access.mutations import (
    FORBIDDEN_WHY,
    Change,
    Judged,
    RequestRefused,
    config_digest,
    judge,
    mutation_fields,
    stamp_launches,
)
from twinme_ops.access.policy import ROLE_ACTIONS, Identity


def _roles_for(action: str) -> str:
    return " or ".join(r for r, actions in ROLE_ACTIONS.items() if action in actions) or "none"


class GraphqlGuard:
    """Judges, refuses or forwards GraphQL operations to the webserver's app, and audits them."""

    def __init__(self, app: ASGIApp, instance: DagsterInstance, audit: AuditLog) -> None:
        self.app = app
        self.instance = instance
        self.audit = audit

    # -- GraphQL over HTTP --------------------------------------------------------------------

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, who: Identity, source: str
    ) -> None:
        method = scope.get("method", "GET")
        if method == "GET":
            params = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
            body_bytes = b""
            raw: Any = params
        elif method == "POST":
            body_bytes = await read_body(receive)
            try:
                raw = json.loads(body_bytes or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError):
                await send_json(
                    send, 400, {"error": "bad_request", "reason": "the body is not JSON"}
                )
                return
        else:
            await self.app(scope, receive, send)
            return
        if not isinstance(raw, dict):
            await send_json(
                send,
                400,
                {"error": "bad_request", "reason": "send one GraphQL operation per request"},
            )
            return
        if "query" not in raw and method == "GET":
            # GraphiQL's page, not an operation
            await self.app(scope, receive, send)
            return
        try:
            judged = judge(raw)
        except RequestRefused as exc:
            if raw.get("query") and "mutation" not in str(raw.get("query")):
                # a malformed query changes nothing: let Dagster answer it with its own error
                await self.app(scope, replay(body_bytes, receive), send)
                return
            self.audit.record(
                user=who.user,
                roles=who.role_names(),
                action="mutation",
                source=source,
                outcome="denied",
                reason=str(exc),
            )
            await send_json(send, 400, {"error": "bad_request", "reason": str(exc)})
            return
        if not judged.changes:
            await self.app(scope, replay(body_bytes, receive), send)
            return
        if method == "GET":
            reason = "mutations over GET are refused (send them with POST)"
            self._audit_changes(judged, who, source, "denied", reason)
            await send_json(send, 405, {"error": "method_not_allowed", "reason": reason})
            return
        await anyio.to_thread.run_sync(self._resolve_runs, judged.changes)
        refusal = self._refusal(judged.changes, who)
        if refusal:
            self._audit_changes(judged, who, source, "denied", refusal)
            await send_json(
                send,
                403,
                {
                    "error": "forbidden",
                    "reason": refusal,
                    "user": who.user,
                    "roles": list(who.roles),
                },
            )
            return
        body = stamp_launches(judged, mutation_fields(judged), who.user)
        new_body = json.dumps(body).encode()
        scope = dict(scope)
        scope["headers"] = [
            (k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-length"
        ] + [(b"content-length", str(len(new_body)).encode())]
        chunks: list[bytes] = []

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    self._audit_outcome(judged, who, source, b"".join(chunks))
            await send(message)

        await self.app(scope, replay(new_body, receive), capture)

    def _resolve_runs(self, changes: list[Change]) -> None:
        """Fill in the job of terminations and re-executions from the runs they name."""
        for change in changes:
            if change.job or not change.run_ids:
                continue
            jobs = set()
            for run_id in change.run_ids:
                run = self.instance.get_run_by_id(run_id) if run_id else None
                if run is not None:
                    jobs.add(run.job_name)
            change.job = ",".join(sorted(jobs))

    def _refusal(self, changes: list[Change], who: Identity) -> str:
        for change in changes:
            if change.action == "unknown":
                return (
                    f"{change.field} is not classified by twinme_ops' access control "
                    "(twinme_ops/access/mutations.py): refused to everybody until it is"
                )
            if change.action == "forbidden":
                why = FORBIDDEN_WHY.get(change.field, "it is not needed to operate twinme_ops")
                return f"{change.field} is allowed to nobody through the UI: {why}"
            if not who.may(change.action):
                return (
                    f"{who.user} ({who.role_names()}) may not {change.action} "
                    f"({change.field}{' of ' + change.job if change.job else ''}): that needs "
                    f"the role {_roles_for(change.action)}"
                )
        return ""

    def _audit_changes(
        self,
        judged: Judged,
        who: Identity,
        source: str,
        outcome: str,
        reason: str,
        run_ids: dict[str, list[str]] | None = None,
    ) -> None:
        digest = config_digest(judged)
        for change in judged.changes:
            if change.action == "ui_state":
                continue  # telemetry and "seen the tour" clicks are not actions
            ids = (run_ids or {}).get(change.field) or change.run_ids
            self.audit.record(
                user=who.user,
                roles=who.role_names(),
                action=change.action,
                field=change.field,
                job=change.job,
                run_id=",".join(i for i in ids if i),
                target=change.target,
                config_digest=digest if change.action == "launch" else "",
                source=source,
                outcome=outcome,
                reason=reason,
            )

    def _audit_outcome(self, judged: Judged, who: Identity, source: str, raw: bytes) -> None:
        """One record per change, with the run it made and whether Dagster accepted it."""
        try:
            response = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            response = {}
        data = response.get("data") if isinstance(response, dict) else None
        errors = response.get("errors") if isinstance(response, dict) else None
        run_ids: dict[str, list[str]] = {}
        failures: list[str] = []
        for node in mutation_fields(judged):
            key = node.alias.value if node.alias else node.name.value
            result = data.get(key) if isinstance(data, dict) else None
            run_ids[node.name.value] = _find(result, ("runId", "backfillId"))
            if not isinstance(result, dict):
                continue
            typename = result.get("__typename", "")
            if typename and typename.endswith(("Error", "Invalid", "Conflict", "NotFound")):
                failures.append(f"{typename}: {result.get('message', '')}".strip(": "))
        if errors:
            failures += [str(e.get("message", e)) for e in errors if isinstance(e, dict)]
        outcome, reason = ("failed", "; ".join(failures)[:500]) if failures else ("allowed", "")
        self._audit_changes(judged, who, source, outcome, reason, run_ids)

    # -- GraphQL over WebSocket ---------------------------------------------------------------

    def subscriptions_only(
        self, receive: Receive, send: Send, who: Identity, source: str
    ) -> Receive:
        async def guarded() -> Message:
            message = await receive()
            if message["type"] != "websocket.receive":
                return message
            refusal = _socket_refusal(message)
            if refusal:
                self.audit.record(
                    user=who.user,
                    roles=who.role_names(),
                    action="mutation",
                    field="websocket",
                    source=source,
                    outcome="denied",
                    reason=refusal,
                )
                await send({"type": "websocket.close", "code": 4403})
                return {"type": "websocket.disconnect", "code": 4403}
            return message

        return guarded


def _socket_refusal(message: Message) -> str:
    text = message.get("text") or (message.get("bytes") or b"").decode("utf-8", "replace")
    try:
        frame = json.loads(text)
    except json.JSONDecodeError:
        return ""  # not an operation; Dagster's handler rejects it itself
    if not isinstance(frame, dict) or frame.get("type") not in ("start", "subscribe"):
        return ""
    payload = frame.get("payload") or {}
    try:
        judged = judge(payload if isinstance(payload, dict) else {})
    except RequestRefused as exc:
        return f"a WebSocket operation that cannot be judged: {exc}"
    if judged.operation != "subscription":
        return f"only subscriptions go over the WebSocket, not a {judged.operation}"
    return ""


def _find(value: Any, keys: tuple[str, ...]) -> list[str]:
    found: list[str] = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k in keys and isinstance(v, str):
                found.append(v)
            else:
                found += _find(v, keys)
    elif isinstance(value, list):
        for v in value:
            found += _find(v, keys)
    return found
