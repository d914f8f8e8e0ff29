"""The declared Redis state: a config file read the way Redis reads it, as checkable settings.

:func:`desired_settings` extracts from a rendered config the directives a live server can be
checked against, normalised the way ``CONFIG GET`` reports them
(:mod:`~twinme_ops.database.redis.values`). Left out: where the instance lives (port, bind,
dir...), secrets (requirepass...) and file-only statements (rename-command...). Lines are split
like Redis's ``sdssplitargs`` (:func:`parse_line`). ``requirepass`` is out of scope everywhere
(:func:`refuse_secrets`): the password is never read back, compared, set or logged.

No server and no Dagster in this module.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from twinme_ops.database.redis.values import normalize_value

# Directives that are not tuning: where this instance lives (tests override them, production
# mounts them), secrets, and file-level statements that CONFIG GET cannot report.
DEPLOYMENT_DIRECTIVES = frozenset(
    {
        "port",
        "bind",
        "dir",
        # with dir, names the instance's files (and CONFIG SET refuses it: protected config)
        "dbfilename",
        "appendfilename",
        "appenddirname",
        "logfile",
        "pidfile",
        "daemonize",
        "supervised",
        "unixsocket",
        "unixsocketperm",
        "syslog-enabled",
        "syslog-ident",
    }
)
SECRET_DIRECTIVES = frozenset({"requirepass", "masterauth", "masteruser", "user", "aclfile"})
FILE_ONLY_DIRECTIVES = frozenset({"rename-command", "include", "loadmodule"})


class RedisConfigError(ValueError):
    """The template, a password or an override cannot make a valid config; never shows a secret."""


def split_args(line: str) -> list[str]:
    """Split a config line like Redis's ``sdssplitargs``: quotes, and escapes inside quotes."""
    args: list[str] = []
    i, n = 0, len(line)
    escapes = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "a": "\a"}
    while True:
        while i < n and line[i].isspace():
            i += 1
        if i >= n:
            return args
        current: list[str] = []
        quote = line[i] if line[i] in "\"'" else ""
        i += 1 if quote else 0
        while True:
            if i >= n:
                if quote:
                    raise RedisConfigError("unbalanced quotes in a Redis config line")
                break
            c = line[i]
            if quote == '"' and c == "\\" and i + 1 < n:
                nxt = line[i + 1]
                if nxt == "x" and re.match(r"[0-9a-fA-F]{2}", line[i + 2 : i + 4]):
                    current.append(chr(int(line[i + 2 : i + 4], 16)))
                    i += 4
                    continue
                current.append(escapes.get(nxt, nxt))
                i += 2
                continue
            if quote == "'" and c == "\\" and line[i + 1 : i + 2] == "'":
                current.append("'")
                i += 2
                continue
            if quote and c == quote:
                i += 1
                if i < n and not line[i].isspace():
                    raise RedisConfigError("closing quote must be followed by a space")
                break
            if not quote and c.isspace():
                break
            current.append(c)
            i += 1
        args.append("".join(current))


def parse_line(line: str) -> tuple[str, list[str]] | None:
    """``(directive, args)`` of a config line, or None for a blank line or a comment."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    args = split_args(stripped)
    return args[0].lower(), args[1:]


def directives(text: str) -> Iterator[tuple[str, list[str]]]:
    """``(directive, args)`` of every directive of a config text, in order."""
    for line in text.splitlines():
        parsed = parse_line(line)
        if parsed is not None:
            yield parsed


def desired_settings(rendered: str) -> dict[str, str]:
    """The directives of a config that a live server can be checked against, normalised.

    Left out: where the instance lives (port, bind, dir, logfile, daemonize…), secrets
    (requirepass…) and file-only statements (rename-command…). Repeated ``save`` lines add up
    as in Redis (``save ""`` clears them); for any other repeated directive the last one wins.
    """
    settings: dict[str, str] = {}
    save_seen = False
    for name, args in directives(rendered):
        if name in DEPLOYMENT_DIRECTIVES | SECRET_DIRECTIVES | FILE_ONLY_DIRECTIVES:
            continue
        value = " ".join(args)
        if name == "save":
            points = [] if value.strip() == "" else value.split()
            previous = settings.get("save", "").split() if save_seen else []
            settings["save"] = " ".join(previous + points) if points else ""
            save_seen = True
            continue
        settings[name] = normalize_value(name, value)
    return settings


def refuse_secrets(names: Iterable[str]) -> None:
    """Raise :class:`RedisConfigError` when ``names`` holds a secret (``requirepass``...)."""
    secret = sorted(set(names) & SECRET_DIRECTIVES)
    if secret:
        raise RedisConfigError(f"{secret} is out of scope: the password is never read or set")


__all__ = [
    "DEPLOYMENT_DIRECTIVES",
    "FILE_ONLY_DIRECTIVES",
    "SECRET_DIRECTIVES",
    "RedisConfigError",
    "desired_settings",
    "directives",
    "parse_line",
    "refuse_secrets",
    "split_args",
]
