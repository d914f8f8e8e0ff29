"""Redis setting values in the form ``CONFIG GET`` reports them.

A config file may write ``maxmemory 256mb`` or ``appendonly YES``; the server reports
``268435456`` and ``yes``. :func:`normalize_value` turns either into the reported form (memory
units in bytes, as Redis reads them: ``k`` is 1000, ``kb`` 1024; yes/no and enumerations in
lowercase; whitespace collapsed), so a file and a live server compare equal.

No server and no Dagster in this module.
"""

from __future__ import annotations

import re

_MEMORY_RE = re.compile(r"^(-?\d+)(b|k|kb|m|mb|g|gb)?$", re.IGNORECASE)
_MEMORY_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1024,
    "m": 1000**2,
    "mb": 1024**2,
    "g": 1000**3,
    "gb": 1024**3,
}
# Settings whose plain numbers are byte counts (a unit suffix is converted for any setting).
_MEMORY_SETTINGS = frozenset(
    {
        "maxmemory",
        "auto-aof-rewrite-min-size",
        "repl-backlog-size",
        "client-query-buffer-limit",
        "proto-max-bulk-len",
        "stream-node-max-bytes",
        "active-defrag-ignore-bytes",
    }
)
# Enumerations Redis reports in lowercase whatever the file says.
_ENUM_SETTINGS = frozenset({"loglevel", "appendfsync", "maxmemory-policy", "supervised"})


def normalize_value(name: str, value: str) -> str:
    """A setting's value in the form ``CONFIG GET`` reports it (bytes, lowercase, one space)."""
    value = " ".join(value.split())
    memory = _MEMORY_RE.match(value)
    if memory and (memory.group(2) or name in _MEMORY_SETTINGS):
        return str(int(memory.group(1)) * _MEMORY_UNITS[(memory.group(2) or "").lower()])
    if value.lower() in ("yes", "no") or name in _ENUM_SETTINGS or name.endswith("-policy"):
        return value.lower()
    return value


__all__ = ["normalize_value"]
