"""Access control on the Dagster webserver's own request path (an ASGI middleware).

In front of every request but the health probes (``/server_info``, ``/dagit_info``):

1. identity: the ``Authorization: Bearer`` ID token verified against the identity provider's
   JWKS (tokens.py); none, expired, forged or unverifiable -> **401**, and an audit record;
2. GraphQL: a query or subscription passes; each mutation field is an action (mutations.py)
   that the person's roles must allow (policy.py), else **403** with the reason; launches get
   ``twinme/launched_by``; the outcome (run id, error) is read back from the response;
3. other writes (``/report_asset_*``) are refused; reads (the UI, logs) pass;
4. ``/twinme/approvals``: the two-person rule's page and endpoint (approval_page.py).

Over the GraphQL WebSocket, only subscriptions are accepted: a message carrying anything else
closes the socket (code 4403), so the socket cannot be used to slip a mutation past step 2.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qs

import anyio
from dagster import DagsterInstance

from twinme_ops.access.approval_page import ApprovalPage
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
from twinme_ops.access.policy import ROLE_ACTIONS, AccessPolicy, Identity
from twinme_ops.access.tokens import TokenVerifier, Unauthenticated

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# load-balancer and kubelet probes: no identity, and they reveal only the Dagster version
OPEN_PATHS = frozenset({"/server_info", "/dagit_info"})
MAX_BODY = 16 * 1024 * 1024
SIGN_IN_FIX = "sign in through the single sign-on proxy (https://dagster.twinme.ai)"


def _roles_for(action: str) -> str:
    return " or ".join(r for r, actions in ROLE_ACTIONS.items() if action in actions) or "none"


class AccessControl:
    """Wraps the webserver's ASGI app; see the module docstring for what it enforces."""

    def __init__(
        self,
        app: ASGIApp,
        policy: AccessPolicy,
        instance: DagsterInstance,
        audit: AuditLog | None = None,
        verifier: TokenVerifier | None = None,
        path_prefix: str = "",
    ) -> None:
        self.app = app
        self.policy = policy
        self.instance = instance
        self.audit = audit or AuditLog(policy.audit_log or None)
        self.verifier = verifier or TokenVerifier(policy)
        self.prefix = path_prefix.rstrip("/")
        self.approvals = ApprovalPage(policy, instance, self.audit, self.prefix)
        self._trusted = [ipaddress.ip_network(n, strict=False) for n in policy.trusted_proxies]

    # -- the request path ---------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        rel = path[len(self.prefix) :] if self.prefix and path.startswith(self.prefix) else path
        method = scope.get("method", "GET")
        if scope["type"] == "http" and method in ("GET", "HEAD") and rel in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        source = self.source(scope)
        header = _header(scope, b"authorization")
        try:
            identity = await anyio.to_thread.run_sync(self.verifier.identity, header)
        except Unauthenticated as exc:
            self.audit.record(
                user="anonymous",
                action="sign_in",
                field=f"{method} {rel}",
                source=source,
                outcome="denied",
                reason=str(exc),
            )
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 4401})
                return
            await _json(
                send,
                401,
                {"error": "unauthenticated", "reason": str(exc), "fix": SIGN_IN_FIX},
                ((b"www-authenticate", b"Bearer"),),
            )
            return
        if not identity.roles:
            reason = (
                f"{identity.user}'s groups grant no twinme_ops role; ask for one of the groups "
                "in deploy/dagster/access.yaml"
            )
            self.audit.record(
                user=identity.user,
                action="sign_in",
                field=f"{method} {rel}",
                source=source,
                outcome="denied",
                reason=reason,
            )
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 4403})
                return
            await _json(send, 403, {"error": "forbidden", "reason": reason})
            return
        if scope["type"] == "websocket":
            await self.app(scope, self._subscriptions_only(receive, send, identity, source), send)
        elif rel == "/graphql":
            await self._graphql(scope, receive, send, identity, source)
        elif rel == "/twinme/approvals" or rel.startswith("/twinme/approvals/"):
            await self.approvals(scope, receive, send, identity, source, rel)
        elif method in ("GET", "HEAD"):
            await self.app(scope, receive, send)
        else:
            reason = f"{method} {rel} changes state outside GraphQL: not allowed through the UI"
            if rel.startswith("/report_asset"):
                reason = "a reported asset event would forge a backup, a drill or a release"
            self.audit.record(
                user=identity.user,
                roles=identity.role_names(),
                action="write",
                field=f"{method} {rel}",
                source=source,
                outcome="denied",
                reason=reason,
            )
            await _json(send, 403, {"error": "forbidden", "reason": reason})

    def source(self, scope: Scope) -> str:
        """The client's address: X-Forwarded-For's last hop not among the trusted proxies."""
        peer = (scope.get("client") or ("", 0))[0]
        if not self._is_trusted(peer):
            return peer
        forwarded = _header(scope, b"x-forwarded-for") or ""
        hops = [h.strip() for h in forwarded.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop
        return hops[0] if hops else peer

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self._trusted)

    # -- GraphQL over HTTP --------------------------------------------------------------------

    async def _graphql(
        self, scope: Scope, receive: Receive, send: Send, who: Identity, source: str
    ) -> None:
        method = scope.get("method", "GET")
        if method == "GET":
            params = {k: v[0] for k, v in parse_qs(scope.get("query_string", b"").decode()).items()}
            body_bytes = b""
            raw: Any = params
        elif method == "POST":
            body_bytes = await _read_body(receive)
            try:
                raw = json.loads(body_bytes or b"{}")
            except (json.JSONDecodeError, UnicodeDecodeError):
                await _json(send, 400, {"error": "bad_request", "reason": "the body is not JSON"})
                return
        else:
            await self.app(scope, receive, send)
            return
        if not isinstance(raw, dict):
            await _json(
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
                await self.app(scope, _replay(body_bytes, receive), send)
                return
            self.audit.record(
                user=who.user,
                roles=who.role_names(),
                action="mutation",
                source=source,
                outcome="denied",
                reason=str(exc),
            )
            await _json(send, 400, {"error": "bad_request", "reason": str(exc)})
            return
        if not judged.changes:
            await self.app(scope, _replay(body_bytes, receive), send)
            return
        if method == "GET":
            reason = "mutations over GET are refused (send them with POST)"
            self._audit_changes(judged, who, source, "denied", reason)
            await _json(send, 405, {"error": "method_not_allowed", "reason": reason})
            return
        await anyio.to_thread.run_sync(self._resolve_runs, judged.changes)
        refusal = self._refusal(judged.changes, who)
        if refusal:
            self._audit_changes(judged, who, source, "denied", refusal)
            await _json(
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

        await self.app(scope, _replay(new_body, receive), capture)

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

    def _subscriptions_only(
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


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def _read_body(receive: Receive) -> bytes:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        body += message.get("body", b"")
        if len(body) > MAX_BODY:
            raise ValueError("request body too large")
        if not message.get("more_body"):
            break
    return body


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _json(
    send: Send, status: int, payload: dict[str, Any], extra: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    body = json.dumps(payload).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
