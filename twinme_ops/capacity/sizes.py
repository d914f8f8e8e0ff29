"""Sizes people write in settings: ``20Gi`` (Kubernetes), ``2gb`` (Redis), ``1073741824``."""

from __future__ import annotations

import re
from decimal import Decimal

from twinme_ops.common.quantity import parse_quantity

# Redis's own units (redis.conf): k = 1000, kb = 1024, and so on; case-insensitive
_REDIS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(k|kb|m|mb|g|gb|t|tb)\s*$", re.IGNORECASE)
_REDIS_FACTORS = {"k": 1000, "kb": 1024, "m": 1000**2, "mb": 1024**2, "g": 1000**3}
_REDIS_FACTORS |= {"gb": 1024**3, "t": 1000**4, "tb": 1024**4}


class SizeError(ValueError):
    """A size setting that cannot be read; the message names the variable and the fix."""


def parse_size(name: str, value: str) -> int:
    """``value`` of setting ``name`` in bytes: a Kubernetes quantity (``20Gi``, ``500M``), a
    Redis size (``2gb``, ``512mb``) or a plain number of bytes. Must be positive."""
    text = value.strip()
    bytes_: Decimal | None = None
    match = _REDIS.match(text)
    if match:
        bytes_ = Decimal(match[1]) * _REDIS_FACTORS[match[2].lower()]
    else:
        try:
            bytes_ = parse_quantity(text)
        except ValueError:
            bytes_ = None
    if bytes_ is None or not bytes_.is_finite():
        raise SizeError(
            f"{name}={value!r} is not a size. Fix: write bytes with a unit, e.g. {name}=20Gi "
            "(Kubernetes), 2gb (Redis) or 1073741824 (bytes), or unset it."
        )
    if bytes_ <= 0:
        raise SizeError(
            f"{name}={value!r} is not a positive size. Fix: set the real limit, e.g. "
            f"{name}=20Gi, or unset it to skip that projection."
        )
    return int(bytes_)


def parse_minutes(name: str, value: str) -> float:
    """A positive number of minutes (``240``, ``90.5``)."""
    try:
        minutes = float(value.strip())
    except ValueError:
        minutes = float("nan")
    if not minutes > 0 or minutes == float("inf"):
        raise SizeError(
            f"{name}={value!r} is not a positive number of minutes. Fix: e.g. {name}=240 for a "
            "backup window of 4 hours, or unset it."
        )
    return minutes


def human_bytes(n: float) -> str:
    """``1.5 GiB``, ``512.0 MiB``, ``12 B``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
