"""The nightly point-in-time drill: the WAL archive restored to a random second and to now.

Whichever engine archives (``TWINME_WAL_ARCHIVE``): the local archive root, or in production the
bucket CloudNativePG's Barman Cloud plugin writes (restored with barman-cloud's own tools)."""

import secrets
from collections.abc import Iterator

import dagster as dg
from pydantic import Field

from twinme_ops.alerting.metrics import MetricsResource
from twinme_ops.backups.pitr.archive import WalArchive
from twinme_ops.backups.pitr.engine import pitr_engine
from twinme_ops.backups.pitr.layout import PitrError
from twinme_ops.backups.pitr_drill import PitrDrillResult, run_pitr_drill
from twinme_ops.backups.store.base import BackupStore
from twinme_ops.servers.postgres import PostgresResource

PITR_DRILL_OP = "point_in_time_drill"


class PitrDrillConfig(dg.Config):
    """How the drill picks its random target."""

    seed: int = Field(
        default=-1,
        description="Seed of the random target inside the recovery window; -1: a new one each "
        "run (recorded in the metadata, so a run can be replayed with the same target).",
    )
    timeout_minutes: float = Field(
        default=30, gt=0, description="Longest time one restore may take (copy + replay)."
    )
    archive_wait_seconds: float = Field(
        default=180,
        gt=0,
        description="Longest wait for the newest heartbeat to be archived (the local receiver "
        "flushes within milliseconds; CloudNativePG's plugin within archive_timeout, 60 s).",
    )


def pitr_metadata(result: PitrDrillResult) -> dict[str, dg.MetadataValue]:
    """Numbers a person wants over time: RTO per restore, replay speed, RPO, heartbeats."""
    meta: dict[str, dg.MetadataValue] = {
        "passed": dg.MetadataValue.bool(result.passed),
        "reason": dg.MetadataValue.text(result.reason),
        "seed": dg.MetadataValue.int(result.seed if result.seed is not None else -1),
        "engine": dg.MetadataValue.text(result.engine),
        "target": dg.MetadataValue.text(result.target or ""),
        "window_start": dg.MetadataValue.text(result.window_start or ""),
        "window_end": dg.MetadataValue.text(result.window_end or ""),
    }
    for name, figures in result.restores.items():
        for key in ("restore_s", "replay_s", "total_s", "replay_mb_s"):
            meta[f"{name}_{key}"] = dg.MetadataValue.float(float(figures[key]))
        meta[f"{name}_wal_bytes"] = dg.MetadataValue.int(int(figures["wal_bytes"]))
        meta[f"{name}_reached_lsn"] = dg.MetadataValue.text(figures["reached_lsn"])
        meta[f"{name}_reached_time"] = dg.MetadataValue.text(figures["reached_time"] or "")
    for name, check in result.heartbeats.items():
        meta[f"{name}_heartbeats_expected"] = dg.MetadataValue.int(int(check["expected"]))
        meta[f"{name}_heartbeats_present"] = dg.MetadataValue.int(int(check["present"]))
    if result.rpo_s is not None:
        meta["achieved_rpo_s"] = dg.MetadataValue.float(result.rpo_s)
    if result.logical_set:
        meta["logical_set"] = dg.MetadataValue.json(result.logical_set)
    if result.failures:
        meta["problems"] = dg.MetadataValue.json(result.failures)
    meta["details"] = dg.MetadataValue.json(
        {"restores": result.restores, "heartbeats": result.heartbeats}
    )
    return meta


@dg.op(
    name=PITR_DRILL_OP,
    description="Restore the WAL archive (local root, or the Barman Cloud plugin's bucket) onto "
    "scratch servers to a random second inside the recovery window and to the latest point; "
    "check the heartbeats exactly and the nearest nightly set's tables. A failed drill fails "
    "the step.",
)
def point_in_time_drill(
    context: dg.OpExecutionContext,
    config: PitrDrillConfig,
    wal_archive: WalArchive,
    postgres: PostgresResource,
    backup_store: BackupStore,
    metrics: MetricsResource,
) -> Iterator[dg.Output[None]]:
    if not wal_archive.enabled:  # nothing is archived: nothing to drill
        context.log.warning(
            "point-in-time drill skipped: the WAL archive is off (TWINME_WAL_ARCHIVE=off)"
        )
        yield dg.Output(None, metadata={"skipped": dg.MetadataValue.text("off")})
        return
    try:
        engine = pitr_engine(wal_archive)
    except PitrError as exc:
        raise dg.Failure(description=f"point-in-time drill FAILED: {exc}") from None
    context.log.info(f"point-in-time drill of the {engine.name} archive {engine.where}")
    result = run_pitr_drill(
        engine,
        postgres,
        seed=_seed(config.seed),
        store=backup_store,
        rpo_alert_s=wal_archive.rpo_alert_s,
        flush_timeout_s=config.archive_wait_seconds,
        timeout_s=config.timeout_minutes * 60,
        log=context.log,
    )
    metrics.push_pitr_drill(
        passed=result.passed, rto_s=result.rto_s, rpo_s=result.rpo_s, log=context.log
    )
    if not result.passed:
        raise dg.Failure(
            description=f"point-in-time drill FAILED: {result.reason}",
            metadata=pitr_metadata(result),
        )
    context.log.info(f"point-in-time drill passed: {result.reason}")
    yield dg.Output(None, metadata=pitr_metadata(result))


def _seed(configured: int) -> int:
    return configured if configured >= 0 else secrets.randbelow(2**31)
