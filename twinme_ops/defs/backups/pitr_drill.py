"""The nightly point-in-time drill: the WAL archive restored to a random second and to now."""

import secrets
from collections.abc import Iterator

import dagster as dg
from pydantic import Field

from twinme_ops.alerting.metrics import MetricsResource
from twinme_ops.backups.pitr.archive import WalArchive
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


def pitr_metadata(result: PitrDrillResult) -> dict[str, dg.MetadataValue]:
    """Numbers a person wants over time: RTO per restore, replay speed, RPO, heartbeats."""
    meta: dict[str, dg.MetadataValue] = {
        "passed": dg.MetadataValue.bool(result.passed),
        "reason": dg.MetadataValue.text(result.reason),
        "seed": dg.MetadataValue.int(result.seed if result.seed is not None else -1),
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
    description="Restore the WAL archive (local engine) onto scratch servers to a random second "
    "inside the recovery window and to the latest point; check the heartbeats exactly and the "
    "nearest nightly set's tables. A failed drill fails the step.",
)
def point_in_time_drill(
    context: dg.OpExecutionContext,
    config: PitrDrillConfig,
    wal_archive: WalArchive,
    postgres: PostgresResource,
    backup_store: BackupStore,
    metrics: MetricsResource,
) -> Iterator[dg.Output[None]]:
    engine = wal_archive.check_engine()
    if engine != "local":
        # nothing archived here to drill (off), or archived by CloudNativePG, whose drill is a
        # Cluster bootstrapped from the ObjectStore (docs/runbooks.md)
        context.log.warning(
            f"point-in-time drill skipped: the WAL archive engine is {engine}, the drill needs "
            "the local engine (TWINME_WAL_ARCHIVE=local)"
        )
        yield dg.Output(None, metadata={"skipped": dg.MetadataValue.text(engine)})
        return
    result = run_pitr_drill(
        wal_archive.layout(),
        postgres,
        seed=_seed(config.seed),
        store=backup_store,
        slot=wal_archive.slot,
        rpo_alert_s=wal_archive.rpo_alert_s,
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
