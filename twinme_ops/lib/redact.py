"""Keep secrets out of logs, errors, metadata and alerts.

Every string that may carry a URL or a tool's stderr passes through :func:`redact` before it is
shown to a person: userinfo and query strings of URLs are masked, and any registered secret value
(a password, a key, a webhook URL) is replaced wherever it appears.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import urlsplit, urlunsplit

_MASK = "***"
_URL_RE = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+)")
# libpq keyword/value strings and tool messages such as "password=secret"
_KV_RE = re.compile(r"(?i)\b(password|passwd|pwd|token|secret|key)=([^\s'\"&]+)")

_lock = threading.Lock()
_secrets: set[str] = set()


def register_secret(value: str | None) -> None:
    """Remember a secret value so that :func:`redact` masks it wherever it appears."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.add(value)


def redact_url(url: str) -> str:
    """Mask the password (keep the user), query and fragment of a URL; other text is unchanged."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return _MASK
    if not parts.scheme or not parts.netloc and not parts.query:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        # a user name alone is not a secret; a password is
        netloc = f"{user}:{_MASK}@{host}" if ":" in userinfo else f"{user}@{host}"
    query = _MASK if parts.query else ""
    path = parts.path
    # Slack webhook URLs carry their token in the path
    if parts.hostname and parts.hostname.endswith("hooks.slack.com"):
        path = "/services/" + _MASK
    return urlunsplit((parts.scheme, netloc, path, query, ""))


def redact(text: object) -> str:
    """``str(text)`` with URL secrets, ``key=value`` secrets and registered secrets masked."""
    s = str(text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        s = s.replace(secret, _MASK)
    s = _URL_RE.sub(lambda m: redact_url(m.group(1)), s)
    return _KV_RE.sub(lambda m: f"{m.group(1)}={_MASK}", s)
