"""PostgreSQL setting values compared as the server stores them, and shown as a person reads them.

``'256MB'`` equals ``32768`` for a setting counted in 8kB pages, ``'on'`` equals ``'true'``,
``'MOD'`` equals ``'mod'``: :func:`normalize` gives the comparable form, :func:`same_value` compares
a desired value with the server's, and :func:`display_value` gives a bare number its unit back
(``'1000'`` in ms is ``'1s'``). The ``vartype`` and ``unit`` are those of ``pg_settings``.

No server and no Dagster in this module.
"""

from __future__ import annotations

import math
import re
from typing import Any

_MEMORY_UNITS = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_TIME_UNITS = {"us": 1, "ms": 1000, "s": 1_000_000, "min": 60_000_000, "h": 3_600_000_000}
_TIME_UNITS["d"] = 24 * _TIME_UNITS["h"]
_NUMBER = re.compile(r"^\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([A-Za-z]*)\s*$")
_TRUE = {"on", "true", "yes", "1", "t", "y"}
_FALSE = {"off", "false", "no", "0", "f", "n"}


def _unit_factor(unit: str) -> tuple[str, float] | None:
    """('memory'|'time', size of one unit in bytes or microseconds) for a pg_settings unit."""
    match = re.fullmatch(r"(\d*)\s*([A-Za-z]+)", unit or "")
    if not match:
        return None
    count = int(match.group(1) or 1)
    name = match.group(2)
    if name in _MEMORY_UNITS:
        return "memory", count * _MEMORY_UNITS[name]
    if name in _TIME_UNITS:
        return "time", count * _TIME_UNITS[name]
    return None


def normalize(value: str, vartype: str, unit: str | None) -> Any:
    """A comparable form of a setting value, as PostgreSQL would store it.

    Numbers with a unit ('256MB', '1s') become a count of the setting's own unit ('8kB',
    'ms', ...), rounded like PostgreSQL rounds integers; a bare number is already in that unit.
    Booleans become True/False, enums lower case. Raises ValueError on a malformed value.
    """
    text = str(value).strip()
    if vartype == "bool":
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{value!r} is not a boolean (on/off)")
    if vartype in ("integer", "real"):
        match = _NUMBER.match(text)
        if not match:
            raise ValueError(f"{value!r} is not a number with an optional unit")
        number, suffix = float(match.group(1)), match.group(2)
        if suffix:
            base = _unit_factor(unit or "")
            given = _unit_factor(suffix)
            if base is None or given is None or base[0] != given[0]:
                raise ValueError(f"{value!r}: unit {suffix!r} does not apply (the unit is {unit})")
            number = number * given[1] / base[1]
        if vartype == "integer":
            # PostgreSQL rounds half away from zero when converting units
            return int(math.floor(abs(number) + 0.5)) * (1 if number >= 0 else -1)
        return round(number, 9)
    if vartype == "enum":
        return text.lower()
    return text


def same_value(want: str, actual: str | None, vartype: str, unit: str | None) -> bool:
    """Whether the server's ``actual`` is ``want`` (text equality when either is malformed)."""
    if actual is None:
        return False
    try:
        return normalize(want, vartype, unit) == normalize(actual, vartype, unit)
    except ValueError:
        return want.strip() == actual.strip()


def display_value(value: str, vartype: str, unit: str | None) -> str:
    """A value as a person reads it: a bare number gets the setting's unit ('1000' -> '1000ms')."""
    match = _NUMBER.match(value) if vartype == "integer" else None
    factor = _unit_factor(unit or "")
    if not match or match.group(2) or factor is None:
        return value
    amount = int(float(match.group(1)) * factor[1])
    if amount <= 0:
        return value  # -1 and 0 mean "default" / "disabled": no unit
    units = _MEMORY_UNITS if factor[0] == "memory" else _TIME_UNITS
    for name, size in sorted(units.items(), key=lambda item: -item[1]):
        if amount % size == 0:
            return f"{amount // size}{name}"
    return value


__all__ = ["display_value", "normalize", "same_value"]
