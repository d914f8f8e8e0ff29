"""The WAL archive as a Dagster resource: which engine archives PostgreSQL, and where to.

Two engines, one resource (``TWINME_WAL_ARCHIVE``):

- ``local`` (the sandbox, and any server twinme_ops can reach as a replication client):
  PostgreSQL's own ``pg_receivewal`` on a physical slot and ``pg_basebackup`` (full, then
  incremental) into an archive root beside the local backup store (``layout.py``).
- ``cloudnative-pg`` (production): CloudNativePG's Barman Cloud plugin archives the WAL and takes
  the base backups into the backup bucket (``deploy/postgres/``); twinme_ops asks the operator
  for base backups (a ``Backup`` resource) and restores from barman-cloud's bucket layout
  (``destination_path``/``server_name``, with the barman-cloud tools in ``barman_bin``).
- ``off``: no continuous archiving (the nightly logical sets remain).

The recovery point objective is watched against ``rpo_alert_s`` (2 minutes by default); the
recovery window (``recovery_window_days``, 30 by default) is what retention keeps restorable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from twinme_ops.backups.pitr.layout import ArchiveLayout, PitrError
from twinme_ops.backups.pitr.receiver import DEFAULT_SLOT
from twinme_ops.backups.pitr.retention import DEFAULT_RECOVERY_WINDOW_DAYS

Engine = Literal["local", "cloudnative-pg", "off"]
ENGINES: tuple[str, ...] = ("local", "cloudnative-pg", "off")
DEFAULT_RPO_ALERT_S = 120


class WalArchive(dg.ConfigurableResource):
    """Where PostgreSQL's write-ahead log is archived continuously, and by which engine."""

    engine: str = Field(
        default="local",
        description="local (pg_receivewal + pg_basebackup), cloudnative-pg (Barman Cloud "
        "plugin), or off.",
    )
    root: str = Field(
        default="",
        description="local engine: the archive root (wal/, base/, receiver/).",
    )
    slot: str = Field(
        default=DEFAULT_SLOT, description="local engine: the physical replication slot."
    )
    cluster: str = Field(
        default="twinme-db", description="cloudnative-pg engine: the Cluster's name."
    )
    namespace: str = Field(
        default="twinme-postgres", description="cloudnative-pg engine: the Cluster's namespace."
    )
    object_store: str = Field(
        default="twinme-db-backups",
        description="cloudnative-pg engine: the Barman Cloud plugin's ObjectStore name "
        "(deploy/postgres/20-objectstore.yaml).",
    )
    kubeconfig: str = Field(
        default="",
        description="cloudnative-pg engine: kubeconfig path. Empty: $KUBECONFIG, else the pod's "
        "service account.",
    )
    destination_path: str = Field(
        default="",
        description="cloudnative-pg engine: the ObjectStore's destinationPath "
        "(s3://bucket/prefix), where restores read barman-cloud's layout.",
    )
    server_name: str = Field(
        default="",
        description="cloudnative-pg engine: the folder under destination_path (the plugin's "
        "serverName parameter). Empty: the Cluster's name, the plugin's default.",
    )
    barman_bin: str = Field(
        default="/opt/barman/bin",
        description="cloudnative-pg engine: where barman-cloud-restore and "
        "barman-cloud-wal-restore are (barman[cloud] 3.19; the restored server runs them).",
    )
    rpo_alert_s: int = Field(
        default=DEFAULT_RPO_ALERT_S,
        description="Alert when the recovery point falls further behind than this (seconds).",
    )
    recovery_window_days: int = Field(
        default=DEFAULT_RECOVERY_WINDOW_DAYS,
        ge=1,
        description="Any second of this many last days stays restorable: retention keeps the "
        "base backups and WAL it needs (local engine), and checks the ObjectStore's "
        "retentionPolicy covers it (cloudnative-pg).",
    )

    def check_engine(self) -> Engine:
        """The configured engine, or an error naming the choices."""
        if self.engine not in ENGINES:
            raise PitrError(
                f"WAL archive engine {self.engine!r} is not one of {', '.join(ENGINES)}. Fix: "
                "TWINME_WAL_ARCHIVE"
            )
        return self.engine  # type: ignore[return-value]

    @property
    def enabled(self) -> bool:
        return self.check_engine() != "off"

    def layout(self) -> ArchiveLayout:
        """The local engine's archive root."""
        if self.check_engine() != "local":
            raise PitrError(
                f"the WAL archive engine is {self.engine}, not local: it has no local archive root"
            )
        if not self.root:
            raise PitrError(
                "the local WAL archive has no root. Fix: set TWINME_WAL_ARCHIVE_ROOT (by default "
                "<TWINME_HOME>/wal-archive)"
            )
        return ArchiveLayout.at(Path(self.root))


def window_days(text: str) -> int:
    """``TWINME_WAL_RECOVERY_WINDOW_DAYS``: empty means the default (30)."""
    text = text.strip()
    if not text:
        return DEFAULT_RECOVERY_WINDOW_DAYS
    if not text.isdigit() or int(text) < 1:
        raise ValueError(
            f"TWINME_WAL_RECOVERY_WINDOW_DAYS={text!r} is not a whole number of days. Fix: set "
            f"it to 1 or more (default {DEFAULT_RECOVERY_WINDOW_DAYS}), or unset it"
        )
    return int(text)
