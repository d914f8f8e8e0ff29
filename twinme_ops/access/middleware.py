"""Access control on the Dagster webserver's own request path (an ASGI middleware).

In front of every request but the health probes (``/server_info``, ``/dagit_info``):

1. identity: the ``Authorization: Bearer`` ID token verified against the identity provider's
   JWKS (tokens.py); none, expired, forged or unverifiable -> **401**, and an audit record;
2. GraphQL: a query or subscription passes; each mutation field is an action (mutations.py)
   that the person's roles must allow (policy.py), else **403** with the reason; launches get
   ``twinme/launched_by``; the outcome (run id, error) is read back from the response
   (graphql_guard.py);
3. other writes (``/report_asset_*``) are refused; reads (the UI, logs) pass;
4. ``/twinme/approvals``: the two-person rule's page and endpoint (approval_page.py).

Over the GraphQL WebSocket, only subscriptions are accepted: a message carrying anything else
closes the socket (code 4403), so the socket cannot be used to slip a mutation past step 2.

This module identifies the person and routes the request; the GraphQL rules are in
graphql_guard.py, the ASGI plumbing in asgi.py.
"""

from __future__ import annotations

import ipaddress

import anyio
from dagster import DagsterInstance

from twinme_ops.access.approval_page import ApprovalPage
from twinme_ops.access.asgi import ASGIApp, Receive, Scope, Send, request_header, send_json
from twinme_ops.access.audit import AuditLog
from twinme_ops.access.graphql_guard import GraphqlGuard
from twinme_ops.access.policy import AccessPolicy
from twinme_ops.access.tokens import TokenVerifier, Unauthenticated

# load-balancer and kubelet probes: no identity, and they reveal only the Dagster version
OPEN_PATHS = frozenset({"/server_info", "/dagit_info"})
SIGN_IN_FIX = "sign in through the single sign-on proxy (https://dagster.twinme.ai)"


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
        self.graphql = GraphqlGuard(app, instance, self.audit)
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
        header = request_header(scope, b"authorization")
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
            await send_json(
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
            await send_json(send, 403, {"error": "forbidden", "reason": reason})
            return
        if scope["type"] == "websocket":
            await self.app(
                scope, self.graphql.subscriptions_only(receive, send, identity, source), send
            )
        elif rel == "/graphql":
            await self.graphql(scope, receive, send, identity, source)
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
            await send_json(send, 403, {"error": "forbidden", "reason": reason})

    def source(self, scope: Scope) -> str:
        """The client's address: X-Forwarded-For's last hop not among the trusted proxies."""
        peer = (scope.get("client") or ("", 0))[0]
        if not self._is_trusted(peer):
            return peer
        forwarded = request_header(scope, b"x-forwarded-for") or ""
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
