"""Redis drift: the declared settings against a live server, changing nothing.

:func:`redis_config_drift` reads the live values (``CONFIG GET``, or ``INFO`` where CONFIG is
renamed away: :mod:`~twinme_ops.database.redis.live`) and returns a :class:`RedisDrift`: which
method it used, the settings compared, those the method cannot show, and one sentence per
difference. The password is never read. No Dagster in this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from twinme_ops.database.redis.declared import refuse_secrets
from twinme_ops.database.redis.live import read_live
from twinme_ops.database.redis.values import normalize_value

if TYPE_CHECKING:
    import redis


@dataclass
class RedisDrift:
    """Desired settings against a live server, and how the live values were read.

    ``method`` is ``"CONFIG GET"`` or ``"INFO"`` (when CONFIG is renamed away); ``checked`` lists
    the settings compared, ``unverifiable`` those the method cannot show, ``differences`` one
    sentence per mismatch, ``differing`` maps each mismatch to ``(desired, live)``.
    """

    method: str
    differences: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    unverifiable: list[str] = field(default_factory=list)
    differing: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def drifted(self) -> bool:
        return bool(self.differences)

    def summary(self) -> str:
        """One line for logs and metadata."""
        head = "; ".join(self.differences) if self.differences else "no drift"
        tail = f" ({len(self.unverifiable)} not verifiable)" if self.unverifiable else ""
        return f"{head} [{self.method}: {len(self.checked)} settings checked{tail}]"


def redis_config_drift(client: redis.Redis, desired: Mapping[str, str]) -> RedisDrift:
    """Compare ``desired`` with the live server; change nothing.

    ``desired`` comes from :func:`~twinme_ops.database.redis.declared.desired_settings`. Reads
    with ``CONFIG GET`` when the command exists; when it is renamed away (or denied),
    falls back to ``INFO`` and lists what INFO cannot show as unverifiable.
    """
    refuse_secrets(desired)
    names = list(desired)
    live, method = read_live(client, names)
    drift = RedisDrift(method)
    for name in names:
        if name not in live:
            drift.unverifiable.append(name)
            continue
        drift.checked.append(name)
        want = normalize_value(name, desired[name])
        have = live[name]
        if want != have:
            drift.differing[name] = (want, have)
            drift.differences.append(f"{name}: desired {show_value(want)}, live {show_value(have)}")
    return drift


def show_value(value: str) -> str:
    """A normalised value as written in a config file (quoted when empty or spaced)."""
    return f'"{value}"' if value == "" or " " in value else value


__all__ = ["RedisDrift", "redis_config_drift", "show_value"]
