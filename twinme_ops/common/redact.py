"""Keep secrets out of logs, errors, metadata and alerts.

Every string that may carry a URL, a configuration value or a tool's stderr passes through
:func:`redact` before it is shown to a person. The rule, from the most to the least specific:

* every registered secret (a password, a key, a webhook URL, see :func:`register_secret`) is
  replaced verbatim wherever it appears, also percent-encoded, JSON/repr-escaped or HTML-escaped;
* in anything shaped like ``user:password@host``, whatever its scheme and however malformed
  (``postgresql//u:p@h``, ``redis:/u:p@h``, ``u:p@h:5432/db``, ``:p@h``, an ``@``, ``/``, ``#``
  or ``?`` inside the password, a password with spaces inside quotes), everything between the
  first ``:`` of the user info and the last ``@`` before the host is masked: the scheme, the user
  and the host stay readable. Where the separator is malformed and no ``:`` tells the user from
  the password, the whole user info is masked;
* ``scheme://user:word`` with no ``@`` (a cut or space-broken URL) masks ``word`` unless it is a
  port number;
* ``password=…``, ``token=…``, ``secret=…``, ``key=…`` (libpq keyword strings, quoted values
  included), ``'password': '…'`` in dict/JSON text, pydantic's ``input_value=…`` when it holds
  something URL-shaped, ``Bearer …``, any Slack webhook path and any age identity
  (``AGE-SECRET-KEY-1…``);
* in well-formed URLs, the query string and fragment.

Masking too much is preferred to masking too little.
"""

from __future__ import annotations

import html
import json
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote, unquote, urlsplit, urlunsplit

_MASK = "***"
# a placeholder in documentation ("postgresql://user:password@host") is not a secret
_PLACEHOLDERS = frozenset({"password", "<password>", _MASK})

_URL_RE = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>]+)")
# a scheme and its separator, well-formed ("://") or not (":/", "//", ":///"); it starts a word
_SCHEME_RE = re.compile(r"(?<![A-Za-z0-9+.\-:@%])([A-Za-z][A-Za-z0-9+.\-]*)(:/{1,3}|/{2,3})")
_WELL_FORMED = ("://", ":///")
# "@sha256:<hex>" is an image digest, not a host after a password
_DIGEST_RE = re.compile(r"[A-Za-z0-9]+:[0-9a-fA-F]{32,}")
_PORT_RE = re.compile(r"\d{1,5}(?:$|[/?#'\"),;\].\s]|:(?:\s|$))")
_QUOTED = r"'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\""
_SECRET_KEY = (
    r"[\w-]*(?:password|passwd|pwd|secret|token)[\w-]*"
    r"|(?:[\w-]*[_-])?(?:api|private|encryption|access|signing)[_-]?key|key"
)
# libpq keyword/value strings and tool messages: password=secret, password = 'a b', token="x"
_KV_RE = re.compile(rf"(?i)(?<![\w-])({_SECRET_KEY})(\s*=\s*)({_QUOTED}|['\"]?[^\s'\"]+)")
# dict reprs and JSON (JSON inside JSON too): 'password': 'x', "client_secret": "y"
_KV_QUOTED_RE = re.compile(rf"(?i)(\\?['\"])({_SECRET_KEY})\1(\s*:\s*)({_QUOTED}|[^\s,}}\]]+)")
# pydantic's ValidationError repeats the rejected input
_INPUT_VALUE_RE = re.compile(rf"(input_value=)({_QUOTED}|\{{[^\n]*?\}}|[^\s,]+)")
_BEARER_RE = re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")
_SLACK_HOOK_RE = re.compile(r"(hooks\.slack\.com/services/)[^\s'\"<>)]+")
# an age identity (private key), wherever it appears: the prefix stays readable
_AGE_SECRET_RE = re.compile(r"(?i)(AGE-SECRET-KEY-1)[0-9A-Z]{8,}")

_lock = threading.Lock()
_secrets: set[str] = set()


def _variants(value: str) -> set[str]:
    """The forms a secret takes when a URL, repr(), JSON or Slack's escaping shows it."""
    forms = {value, unquote(value), quote(value, safe=""), quote(value, safe="/:@")}
    forms.add(json.dumps(value)[1:-1])
    forms.add(repr(value)[1:-1])
    forms.add(html.escape(value, quote=False))
    return {f for f in forms if len(f) >= 4}


def register_secret(value: str | None) -> None:
    """Remember a secret value so that :func:`redact` masks it wherever it appears."""
    if value and len(value) >= 4:
        with _lock:
            _secrets.update(_variants(value))


def register_secrets_in(value: str | None) -> None:
    """Register every secret :func:`redact` would find in a configuration value.

    For a URL-shaped variable (``DATABASE_URL``, ``REDIS_URL``, a remote): its password, however
    malformed the URL, so that a library that echoes the raw value in its own words, or a part
    of it, is masked too.
    """
    if not value:
        return
    for secret in secrets_in(value):
        register_secret(secret)
        register_secret(secret.strip("'\""))


def _line_bounds(s: str, pos: int) -> tuple[int, int]:
    start = s.rfind("\n", 0, pos) + 1
    end = s.find("\n", pos)
    return start, len(s) if end < 0 else end


def _word_start(s: str, start: int, pos: int) -> int:
    """Where the whitespace-delimited word that ends at ``pos`` starts."""
    i = pos
    while i > start and not s[i - 1].isspace():
        i -= 1
    return i


def _scheme_in(s: str, start: int, end: int) -> re.Match[str] | None:
    """The first scheme in ``s[start:end]`` with no ``:`` or ``@`` before it (so not inside a
    password)."""
    for m in _SCHEME_RE.finditer(s, start, end):
        before = s[start : m.start()]
        return None if ":" in before or "@" in before else m
    return None


def _userinfo_span(s: str, start: int, at: int, quoted: bool) -> tuple[int, int] | None:
    """The secret part of the user info ``s[start:at]`` (what precedes an ``@``)."""
    m = _scheme_in(s, start, at)
    if m is not None:
        info = m.end()
        if info >= at:
            return None
        colon = s.find(":", info, at)
        if colon >= 0:
            return (colon + 1, at) if colon + 1 < at else None
        if m.group(2) in _WELL_FORMED:
            return None  # scheme://user@host: a user name alone is not a secret
        return info, at  # redis:/word@host: a user or a password, nobody can tell
    colon = s.find(":", start, at)
    if colon < 0 or colon + 1 >= at:
        return None  # user@host, an e-mail address, git@github.com
    # inside quotes with spaces: only a value that starts like user:password counts
    if quoted and (any(c.isspace() for c in s[start:colon]) or s[colon + 1].isspace()):
        return None
    return colon + 1, at


def _credential_spans(s: str) -> list[tuple[int, int]]:
    """Spans of ``user:password@host`` passwords in ``s``, whatever the scheme."""
    spans: list[tuple[int, int]] = []
    at = s.find("@")
    while at >= 0:
        if not _DIGEST_RE.match(s, at + 1):
            line_start, line_end = _line_bounds(s, at)
            word = _word_start(s, line_start, at)
            span = _userinfo_span(s, word, at, quoted=False)
            if span is None:
                # a quoted value with spaces in it: 'postgresql://u:p ss@h', "u:p ss@h"
                quote_at = max(s.rfind("'", line_start, word), s.rfind('"', line_start, word))
                if quote_at >= 0 and s.find(s[quote_at], at, line_end) >= 0:
                    span = _userinfo_span(s, quote_at + 1, at, quoted=True)
            if span is not None:
                spans.append(span)
        at = s.find("@", at + 1)
    return spans


def _cut_url_spans(s: str) -> list[tuple[int, int]]:
    """``scheme://user:word`` with no ``@`` after it: ``word`` is a password unless a port.

    This is a URL cut short (pydantic shortens long inputs) or broken by a space in the
    password; the password runs to the next ``@`` on the line when there is one close by.
    """
    spans: list[tuple[int, int]] = []
    for m in _SCHEME_RE.finditer(s):
        i = m.end()
        j = i
        while j < len(s) and s[j] not in ":/@'\"" and not s[j].isspace():
            j += 1
        if j >= len(s) or s[j] != ":" or s[i : i + 1] == "[":
            continue
        k = j + 1
        _, line_end = _line_bounds(s, k)
        token_end = k
        while token_end < line_end and not s[token_end].isspace():
            token_end += 1
        if "@" in s[k:token_end] or _PORT_RE.match(s, k) or k >= token_end:
            continue
        window = s[k : min(line_end, k + 128)]
        at = window.find("@")
        if at > 0 and "://" not in window[:at]:
            spans.append((k, k + at))
        else:
            # keep a closing quote and its punctuation: input_value='postgresql//u:p...',
            end = token_end
            while end > k + 1 and s[end - 1] in ",;)]}":
                end -= 1
            if s[end - 1] in "'\"":
                token_end = end - 1
            spans.append((k, token_end))
    return spans


def _pattern_spans(s: str) -> list[tuple[int, int]]:
    spans = [(m.start(3), m.end(3)) for m in _KV_RE.finditer(s)]
    spans += [(m.start(4), m.end(4)) for m in _KV_QUOTED_RE.finditer(s)]
    spans += [
        (m.start(2), m.end(2))
        for m in _INPUT_VALUE_RE.finditer(s)
        if "@" in m.group(2) or "//" in m.group(2)
    ]
    spans += [(m.end(1), m.end()) for m in _BEARER_RE.finditer(s)]
    spans += [(m.end(1), m.end()) for m in _SLACK_HOOK_RE.finditer(s)]
    spans += [(m.end(1), m.end()) for m in _AGE_SECRET_RE.finditer(s)]
    return spans


def _spans(s: str) -> list[tuple[int, int]]:
    """Every secret span in ``s``, merged and sorted."""
    raw = _credential_spans(s) + _cut_url_spans(s) + _pattern_spans(s)
    merged: list[tuple[int, int]] = []
    for start, end in sorted(raw):
        if end <= start or s[start:end] in _PLACEHOLDERS:
            continue
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def secrets_in(text: str) -> list[str]:
    """The substrings of ``text`` that :func:`redact` masks by shape (not the registered ones)."""
    return [text[a:b] for a, b in _spans(text)]


def _mask_spans(s: str, spans: Iterable[tuple[int, int]]) -> str:
    out, last = [], 0
    for start, end in spans:
        out += [s[last:start], _MASK]
        last = end
    out.append(s[last:])
    return "".join(out)


def _mask_registered(s: str) -> str:
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        if secret in s:
            s = s.replace(secret, _MASK)
    return s


def _redact_well_formed_url(url: str) -> str:
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
        user, colon, password = userinfo.partition(":")
        # a user name alone is not a secret; a password is (a placeholder is not)
        if colon and password not in _PLACEHOLDERS:
            netloc = f"{user}:{_MASK}@{host}"
    query = _MASK if parts.query else ""
    path = parts.path
    # Slack webhook URLs carry their token in the path
    if parts.hostname and parts.hostname.endswith("hooks.slack.com"):
        path = "/services/" + _MASK
    return urlunsplit((parts.scheme, netloc, path, query, ""))


def redact(text: object) -> str:
    """``str(text)`` with every secret masked (see the module's docstring for the rule)."""
    s = _mask_registered(str(text))
    s = _mask_spans(s, _spans(s))
    return _URL_RE.sub(lambda m: _redact_well_formed_url(m.group(1)), s)


def redact_url(url: str) -> str:
    """A URL (or what was meant to be one) for display: :func:`redact` applied to it alone."""
    return redact(url)
