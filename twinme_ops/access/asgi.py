"""The ASGI plumbing the access control's handlers share: types, headers, bodies, responses.

Used by the middleware (middleware.py), its GraphQL guard (graphql_guard.py) and the approval
page (approval_page.py), which all sit on the Dagster webserver's own request path.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY = 16 * 1024 * 1024


def request_header(scope: Scope, name: bytes) -> str | None:
    """The value of the request header ``name`` (lower case), or None."""
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


async def read_body(receive: Receive) -> bytes:
    """The whole request body; raises ValueError beyond :data:`MAX_BODY` bytes."""
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


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` (already read) first, then what ``receive`` gives."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def send_response(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    extra: tuple[tuple[bytes, bytes], ...] = (),
) -> None:
    """A whole response: ``status``, ``body`` of ``content_type``, and ``extra`` headers."""
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_json(
    send: Send, status: int, payload: dict[str, Any], extra: tuple[tuple[bytes, bytes], ...] = ()
) -> None:
    """A JSON response (errors carry ``error``, ``reason`` and, when there is one, ``fix``)."""
    await send_response(send, status, json.dumps(payload).encode(), b"application/json", extra)
