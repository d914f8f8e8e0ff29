"""The limits capacity is measured against, from the environment (see docs/slo-capacity.md)."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg
from pydantic import Field

from twinme_ops.capacity.projection import DEFAULT_HORIZON_DAYS
from twinme_ops.capacity.sizes import parse_minutes, parse_size

# setting names, as operators set them
BACKUP_WINDOW = "TWINME_BACKUP_WINDOW_MINUTES"
POSTGRES_VOLUME = "TWINME_POSTGRES_VOLUME_SIZE"
FILES_VOLUME = "TWINME_FILES_VOLUME_SIZE"
REDIS_MAXMEMORY = "TWINME_REDIS_MAXMEMORY"


@dataclass(frozen=True)
class Limits:
    """Parsed limits; ``None``: not set, that resource is projected without a date."""

    backup_window_s: float | None
    postgres_bytes: int | None
    files_bytes: int | None
    redis_bytes: int | None
    horizon_days: int


class CapacityLimits(dg.ConfigurableResource):
    """What capacity_report projects against: the volumes, Redis's maxmemory, the nightly backup
    window. Strings as operators write them; read (with a clear error) when the report runs, so a
    typo fails that run, not the code location."""

    backup_window_minutes: str = Field(
        default="",
        description=f"{BACKUP_WINDOW}: minutes the nightly backup may take (e.g. 240). Empty: "
        "no window projection.",
    )
    postgres_volume_size: str = Field(
        default="", description=f"{POSTGRES_VOLUME}: PostgreSQL's data volume (e.g. 50Gi)."
    )
    files_volume_size: str = Field(
        default="", description=f"{FILES_VOLUME}: the file storage volume (e.g. 100Gi)."
    )
    redis_maxmemory: str = Field(
        default="", description=f"{REDIS_MAXMEMORY}: Redis's maxmemory (e.g. 2gb or 2Gi)."
    )
    horizon_days: int = Field(
        default=DEFAULT_HORIZON_DAYS,
        gt=0,
        description="Alert on Slack when a limit is reached within this many days.",
    )

    def resolve(self) -> Limits:
        """The limits in bytes and seconds; ``SizeError`` names a bad setting and its fix."""

        def size(name: str, value: str) -> int | None:
            return parse_size(name, value) if value.strip() else None

        window = self.backup_window_minutes
        return Limits(
            backup_window_s=parse_minutes(BACKUP_WINDOW, window) * 60 if window.strip() else None,
            postgres_bytes=size(POSTGRES_VOLUME, self.postgres_volume_size),
            files_bytes=size(FILES_VOLUME, self.files_volume_size),
            redis_bytes=size(REDIS_MAXMEMORY, self.redis_maxmemory),
            horizon_days=self.horizon_days,
        )
