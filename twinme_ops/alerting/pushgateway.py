"""Talking to a Prometheus Pushgateway: its address, basic auth taken from it, PUT or POST.

``TWINME_PUSHGATEWAY_URL`` may carry ``user:password@``: :func:`gateway_target` takes the
credentials out of the URL, registers the password for redaction, and returns a handler that
sends them as basic auth. :class:`twinme_ops.alerting.metrics.MetricsResource` decides what to
push and reports how it went; nothing here logs.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import unquote, urlsplit, urlunsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import (
    basic_auth_handler,
    default_handler,
    push_to_gateway,
    pushadd_to_gateway,
)

from twinme_ops.common.redact import redact, register_secret

# prometheus_client's handler: (url, method, timeout, headers, data) -> a callable that sends
Handler = Callable[..., Callable[[], None]]


def gateway_target(pushgateway_url: str) -> tuple[str, Handler]:
    """The URL without userinfo and a handler sending it as basic auth.

    Raises ValueError, naming the variable and the fix (password redacted), when the URL is not
    an http(s) URL with a host and a numeric port.
    """
    url = pushgateway_url.strip()
    if "://" not in url:
        url = f"http://{url}"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a non-numeric port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"TWINME_PUSHGATEWAY_URL={redact(pushgateway_url)!r} is not an http(s) URL. "
            "Fix: set it like http://pushgateway.monitoring:9091"
        )
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = f"{host}:{port}" if port else host
    bare = urlunsplit((parts.scheme, netloc, parts.path, "", ""))
    if parts.password is None:
        return bare, default_handler
    username, password = unquote(parts.username or ""), unquote(parts.password)
    register_secret(password)

    def handler(
        url: str,
        method: str,
        timeout: float | None,
        headers: list[tuple[str, str]],
        data: bytes,
    ) -> Callable[[], None]:
        return basic_auth_handler(url, method, timeout, headers, data, username, password)

    return bare, handler


def send_registry(
    gateway: str,
    handler: Handler,
    *,
    job: str,
    registry: CollectorRegistry,
    grouping_key: dict[str, str],
    timeout_s: float,
    replace: bool,
) -> None:
    """Send ``registry`` as the group ``job`` + ``grouping_key``: PUT when ``replace`` (the group
    becomes exactly these metrics), else POST (only metrics of the same name are replaced).
    Raises what the HTTP request raised."""
    send = push_to_gateway if replace else pushadd_to_gateway
    send(
        gateway,
        job=job,
        registry=registry,
        grouping_key=grouping_key,
        timeout=timeout_s,
        handler=handler,
    )
