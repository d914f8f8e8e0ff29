"""What ``capacity_report`` projects against, from the environment (docs/slo-capacity.md): the
capacity part of ``defs/resources.py``'s ``build_resources``. Parsed when the report runs, so a
bad size fails that run with its fix instead of the code location's load."""

import os

from twinme_ops.capacity.limits import (
    BACKUP_WINDOW,
    FILES_VOLUME,
    POSTGRES_VOLUME,
    REDIS_MAXMEMORY,
    CapacityLimits,
)


def capacity_limits_from_env() -> CapacityLimits:
    """``TWINME_BACKUP_WINDOW_MINUTES``, ``TWINME_POSTGRES_VOLUME_SIZE``,
    ``TWINME_FILES_VOLUME_SIZE`` and ``TWINME_REDIS_MAXMEMORY``, unparsed."""
    return CapacityLimits(
        backup_window_minutes=os.environ.get(BACKUP_WINDOW, ""),
        postgres_volume_size=os.environ.get(POSTGRES_VOLUME, ""),
        files_volume_size=os.environ.get(FILES_VOLUME, ""),
        redis_maxmemory=os.environ.get(REDIS_MAXMEMORY, ""),
    )
