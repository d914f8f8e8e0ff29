"""The live Redis state: a server's settings, read with ``CONFIG GET``, or ``INFO`` without it.

The production file renames ``CONFIG`` away, so :func:`read_live` reads the server with
``CONFIG GET`` when the command exists and falls back to ``INFO`` when it does not (or an ACL
denies it), saying which it used; ``INFO`` shows only a few settings.
Values come back normalised (:mod:`~twinme_ops.database.redis.values`). This module changes
nothing. No Dagster in this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twinme_ops.database.redis.values import normalize_value

if TYPE_CHECKING:
    import redis

METHOD_CONFIG = "CONFIG GET"
METHOD_INFO = "INFO"

# What INFO shows of a setting: (section, field, conversion to the CONFIG GET form).
_INFO_FIELDS: dict[str, tuple[str, str, Callable[[Any], str]]] = {
    "maxmemory": ("memory", "maxmemory", str),
    "maxmemory-policy": ("memory", "maxmemory_policy", str),
    "appendonly": ("persistence", "aof_enabled", lambda v: "yes" if int(v) else "no"),
    "hz": ("server", "configured_hz", str),
    "maxclients": ("clients", "maxclients", str),
    "repl-backlog-size": ("replication", "repl_backlog_size", str),
    "cluster-enabled": ("cluster", "cluster_enabled", lambda v: "yes" if int(v) else "no"),
}


def _text(value: Any) -> str:
    """A reply as text (redis-py gives bytes unless the client decodes responses)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _config_unavailable(exc: redis.ResponseError) -> bool:
    """Whether CONFIG is renamed away (unknown command) or denied by an ACL."""
    from redis.exceptions import NoPermissionError

    message = str(exc).lower()
    return isinstance(exc, NoPermissionError) or (
        "unknown command" in message and "config" in message
    )


def _read_config(client: redis.Redis, names: list[str]) -> dict[str, str]:
    """Live values by CONFIG GET; a name the server does not know is left out."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.config_get(name)
    live: dict[str, str] = {}
    for name, reply in zip(names, pipe.execute(), strict=True):
        values = {_text(k).lower(): v for k, v in dict(reply).items()}
        if name in values:
            live[name] = normalize_value(name, _text(values[name]))
    return live


def _read_info(client: redis.Redis, names: list[str]) -> dict[str, str]:
    """Live values of the settings INFO shows (each INFO section fetched once)."""
    sections: dict[str, dict[str, Any]] = {}
    live: dict[str, str] = {}
    for name in names:
        if name not in _INFO_FIELDS:
            continue
        section, key, convert = _INFO_FIELDS[name]
        if section not in sections:
            sections[section] = dict(client.info(section))
        if key in sections[section]:
            live[name] = normalize_value(name, convert(sections[section][key]))
    return live


def read_live(client: redis.Redis, names: list[str]) -> tuple[dict[str, str], str]:
    """``(live values, method)``: by CONFIG GET, or by INFO when CONFIG is renamed away or denied.

    A setting the method cannot show (or the server does not know) is left out of the values.
    """
    import redis

    try:
        return _read_config(client, names), METHOD_CONFIG
    except redis.ResponseError as exc:
        if not _config_unavailable(exc):
            raise
        return _read_info(client, names), METHOD_INFO


def config_file(client: redis.Redis) -> str:
    """The config file the server was started from (``INFO server``), or "" when none."""
    return _text(client.info("server").get("config_file", "") or "")


__all__ = ["METHOD_CONFIG", "METHOD_INFO", "config_file", "read_live"]
