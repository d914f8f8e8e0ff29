"""Retention of backup sets: the pure policy, then the whole thing on a local directory and S3.

The unit tests give :func:`plan_retention` hand-made :class:`SetState` lists and a fixed clock.
The integration tests write 90 days of synthetic sets (complete, incomplete, failed drills, a
corrupt manifest, a folder that is not a set) into both stores, run a dry run and a real run,
and check exactly which sets remain; then ``retention_job`` runs through Dagster.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
import yaml

from tests.support.list_log import ListLog
from twinme_ops.backups.manifest import (
    COMPONENTS,
    DRILL,
    FORMAT,
    MANIFEST,
    artifact_name,
    manifest_bytes,
    parse_manifest,
)
from twinme_ops.backups.pitr.archive import WalArchive
from twinme_ops.backups.retention import (
    Decision,
    DrillStatus,
    RetentionPolicy,
    SetState,
    parse_set_date,
    plan_retention,
)
from twinme_ops.backups.retention_apply import apply_retention, inspect_sets
from twinme_ops.backups.store.base import BackupStore, StoreError
from twinme_ops.defs.backups.retention import (
    RetentionConfig,
    backup_retention,
    retention_job,
    retention_schedule,
)
from twinme_ops.defs.backups.wal_retention import wal_archive_retention

PARIS = ZoneInfo("Europe/Paris")
EXAMPLE = Path(__file__).parents[2] / "examples" / "run_config" / "retention_job.yaml"
# 05:00 in Paris (CEST) on Tuesday 2026-09-15, when retention_schedule fires
NOW = datetime(2026, 9, 15, 3, 0, tzinfo=UTC)
TODAY = date(2026, 9, 15)


def day(offset: int, today: date = TODAY) -> str:
    """The set id ``offset`` days before ``today``."""
    return (today - timedelta(days=offset)).isoformat()


def complete(set_id: str, drill: DrillStatus = "none") -> SetState:
    return SetState(set_id, date.fromisoformat(set_id), "complete", drill)


def incomplete(set_id: str) -> SetState:
    return SetState(set_id, date.fromisoformat(set_id), "incomplete")


def by_id(decisions: list[Decision]) -> dict[str, Decision]:
    return {d.set_id: d for d in decisions}


def kept_ids(decisions: list[Decision]) -> set[str]:
    return {d.set_id for d in decisions if d.action == "keep"}


def actions(decisions: list[Decision]) -> dict[str, str]:
    return {d.set_id: d.action for d in decisions}


# --------------------------------------------------------------------------------------------
# The policy


@pytest.mark.parametrize(
    "field", ["keep_days", "keep_daily", "keep_weekly", "keep_monthly", "incomplete_grace_hours"]
)
def test_policy_rejects_negative_values_naming_the_field(field: str) -> None:
    with pytest.raises(ValueError, match=rf"{field} must be 0 or more, got -1"):
        RetentionPolicy(**{field: -1})


def test_policy_defaults_are_the_spec_30_days() -> None:
    policy = RetentionPolicy()
    assert (policy.keep_days, policy.keep_daily, policy.keep_weekly, policy.keep_monthly) == (
        30,
        0,
        0,
        0,
    )
    assert policy.incomplete_grace_hours == 24
    with pytest.raises(ValueError, match="whole number"):
        RetentionPolicy(keep_days=1.5)  # type: ignore[arg-type]


def test_set_ids_must_be_strict_dates() -> None:
    assert parse_set_date("2026-09-15") == date(2026, 9, 15)
    for bad in ("20260915", "2026-9-15", "2026-02-30", "2026-09-15x", "latest", "2026-W38-1"):
        assert parse_set_date(bad) is None, bad


def test_keep_days_boundary_in_paris_days() -> None:
    """Age 29 is kept, age 30 is not (with no other rule); today counts as age 0."""
    sets = [complete(day(n)) for n in (0, 29, 30, 31)]
    got = by_id(plan_retention(sets, RetentionPolicy(keep_days=30), NOW))
    assert got[day(29)].action == "keep"
    assert got[day(29)].reasons == ["younger than 30 days"]
    assert got[day(30)].action == "delete"
    assert got[day(30)].reasons == ["older than 30 days and not kept by any rule"]
    assert got[day(31)].action == "delete"
    assert got[day(0)].reasons == ["newest set", "newest complete set", "younger than 30 days"]


def test_age_uses_the_paris_calendar_not_utc() -> None:
    """At 22:30 UTC on 09-14 it is already 09-15 in Paris: 2026-08-16 is then 30 days old."""
    late = datetime(2026, 9, 14, 22, 30, tzinfo=UTC)
    sets = [complete("2026-09-14"), complete("2026-08-16")]
    assert actions(plan_retention(sets, RetentionPolicy(keep_days=30), late)) == {
        "2026-08-16": "delete",
        "2026-09-14": "keep",
    }
    just_before = datetime(2026, 9, 14, 21, 59, tzinfo=UTC)  # 23:59 in Paris, still 09-14
    assert actions(plan_retention(sets, RetentionPolicy(keep_days=30), just_before)) == {
        "2026-08-16": "keep",
        "2026-09-14": "keep",
    }


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_retention([], RetentionPolicy(), datetime(2026, 9, 15, 5, 0))


def test_gfs_picks_daily_weekly_monthly_beyond_the_window() -> None:
    """Daily, weekly and monthly rules count periods among the sets older than keep_days."""
    sets = [complete(day(n)) for n in range(200)]
    policy = RetentionPolicy(keep_days=30, keep_daily=7, keep_weekly=4, keep_monthly=6)
    got = by_id(plan_retention(sets, policy, NOW))
    kept = {d.set_id: d.reasons for d in got.values() if d.action == "keep"}
    beyond = {k: v for k, v in kept.items() if k < day(29)}
    # TODAY is Tuesday 2026-09-15: the window ends at 2026-08-17; 2026-08-16 is a Sunday (W33)
    assert beyond == {
        "2026-08-16": ["daily 2026-08-16", "weekly 2026-W33", "monthly 2026-08"],
        "2026-08-15": ["daily 2026-08-15"],
        "2026-08-14": ["daily 2026-08-14"],
        "2026-08-13": ["daily 2026-08-13"],
        "2026-08-12": ["daily 2026-08-12"],
        "2026-08-11": ["daily 2026-08-11"],
        "2026-08-10": ["daily 2026-08-10"],
        "2026-08-09": ["weekly 2026-W32"],
        "2026-08-02": ["weekly 2026-W31"],
        "2026-07-26": ["weekly 2026-W30"],
        "2026-07-31": ["monthly 2026-07"],
        "2026-06-30": ["monthly 2026-06"],
        "2026-05-31": ["monthly 2026-05"],
        "2026-04-30": ["monthly 2026-04"],
        "2026-03-31": ["monthly 2026-03"],
        # 2026-02 (sets from 2026-02-28, 199 days back) would be a 7th month
    }
    assert day(199) == "2026-02-28"
    assert len(kept) == 30 + len(beyond)
    assert all(d.action == "delete" for k, d in got.items() if k not in kept)


def test_gfs_skips_missing_and_incomplete_days_and_counts_periods_with_sets() -> None:
    """Daily keeps N *sets* (days that have a complete set), going further back if needed."""
    sets = [complete(day(n)) for n in (0, 30, 32, 35, 36, 40)] + [incomplete(day(31))]
    got = by_id(plan_retention(sets, RetentionPolicy(keep_days=30, keep_daily=3), NOW))
    assert kept_ids(list(got.values())) == {day(0), day(30), day(32), day(35)}
    assert got[day(31)].action == "delete"
    assert got[day(36)].action == "delete"


def test_iso_weeks_straddle_the_new_year() -> None:
    """2025-12-29 (Monday) belongs to ISO week 2026-W01, like 2026-01-04 (Sunday)."""
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    sets = [complete(d) for d in ("2025-12-28", "2025-12-29", "2026-01-05", "2026-03-01")]
    got = by_id(plan_retention(sets, RetentionPolicy(keep_days=10, keep_weekly=3), now))
    assert got["2026-01-05"].reasons == ["weekly 2026-W02"]
    assert got["2025-12-29"].reasons == ["weekly 2026-W01"]
    assert got["2025-12-28"].reasons == ["weekly 2025-W52"]


def test_gfs_prefers_a_set_that_did_not_fail_its_drill() -> None:
    """Within a period, a failed drill loses to an older set; a period of failures keeps one."""
    sets = [
        complete("2026-09-15", "passed"),
        complete("2026-07-31", "failed"),
        complete("2026-07-30", "none"),
        complete("2026-07-29", "passed"),
        complete("2026-06-30", "failed"),
        complete("2026-06-29", "failed"),
    ]
    got = by_id(plan_retention(sets, RetentionPolicy(keep_days=30, keep_monthly=3), NOW))
    assert got["2026-07-31"].action == "delete"
    assert got["2026-07-31"].reasons == [
        "older than 30 days and not kept by any rule",
        "its restore drill failed",
    ]
    assert got["2026-07-30"].reasons == ["monthly 2026-07"]
    assert got["2026-07-29"].action == "delete"
    assert got["2026-06-30"].action == "keep"
    assert got["2026-06-30"].reasons == [
        "monthly 2026-06 (every set of that period failed its drill: kept the newest)",
        "its restore drill failed",
    ]
    assert got["2026-06-29"].action == "delete"


def test_newest_passed_drill_is_never_deleted() -> None:
    sets = [complete(day(n), "failed") for n in range(0, 60)]
    sets[50] = complete(day(50), "passed")
    sets[55] = complete(day(55), "passed")
    got = by_id(plan_retention(sets, RetentionPolicy(keep_days=30), NOW))
    assert got[day(50)].action == "keep"
    assert got[day(50)].reasons == ["newest set that passed its drill"]
    assert got[day(55)].action == "delete"


def test_all_drills_failed_keeps_the_window_and_the_newest() -> None:
    sets = [complete(day(n), "failed") for n in range(0, 45)]
    got = plan_retention(sets, RetentionPolicy(keep_days=30), NOW)
    assert kept_ids(got) == {day(n) for n in range(30)}
    newest = by_id(got)[day(0)]
    assert newest.reasons == [
        "newest set",
        "newest complete set",
        "younger than 30 days",
        "its restore drill failed",
    ]


def test_only_incomplete_sets() -> None:
    """Nothing is a backup: the newest is kept, recent ones may still be written, old go."""
    sets = [incomplete(day(n)) for n in range(0, 40)]
    got = by_id(plan_retention(sets, RetentionPolicy(), NOW))
    assert got[day(0)].reasons == ["newest set", "incomplete: may still be written"]
    # day(1) ended at midnight Paris, 5 h before NOW: still within 24 h
    assert got[day(1)].action == "keep"
    assert got[day(1)].reasons == ["incomplete for less than 24 h: may still be written"]
    assert got[day(2)].action == "delete"
    assert got[day(2)].reasons == ["incomplete for more than 24 h (no manifest.json: not a backup)"]
    assert {k for k, d in got.items() if d.action == "delete"} == {day(n) for n in range(2, 40)}


def test_incomplete_grace_is_measured_from_the_end_of_the_sets_day() -> None:
    sets = [complete(day(0)), incomplete(day(1)), incomplete(day(2))]
    # 2026-09-15 00:00 Paris ended day(1); with 4 h grace it is gone at 05:00 Paris
    got = by_id(plan_retention(sets, RetentionPolicy(incomplete_grace_hours=4), NOW))
    assert got[day(1)].action == "delete"
    got = by_id(plan_retention(sets, RetentionPolicy(incomplete_grace_hours=48), NOW))
    assert got[day(2)].action == "keep"


def test_newest_set_is_kept_even_when_old_and_incomplete() -> None:
    sets = [complete(day(100)), incomplete(day(90))]
    got = by_id(plan_retention(sets, RetentionPolicy(keep_days=30), NOW))
    assert got[day(90)].reasons == ["newest set", "incomplete: may still be written"]
    # a halted backup must not leave the store empty: the newest complete set stays too
    assert got[day(100)].reasons == ["newest complete set"]


def test_unreadable_manifest_and_non_date_ids_are_reported_never_deleted() -> None:
    sets = [
        complete(day(0)),
        SetState(day(400), date.fromisoformat(day(400)), "unreadable", detail="not valid JSON"),
        SetState("manual-copy", None, "unreadable", detail="set id is not a YYYY-MM-DD date"),
        SetState("2026-02-30", None, "unreadable"),
    ]
    got = by_id(plan_retention(sets, RetentionPolicy(keep_days=0), NOW))
    assert got[day(400)].action == "report"
    assert got[day(400)].reasons == ["manifest unreadable (not valid JSON): reported, not deleted"]
    assert got["manual-copy"].action == "report"
    assert got["manual-copy"].reasons == ["set id is not a YYYY-MM-DD date: reported, not deleted"]
    assert got["2026-02-30"].action == "report"
    # keep_days=0 disables the window: the newest set still stays
    assert got[day(0)].action == "keep"


def test_future_dated_set_is_kept() -> None:
    got = by_id(plan_retention([complete(day(-3)), complete(day(0))], RetentionPolicy(), NOW))
    assert got[day(-3)].action == "keep"
    assert "dated in the future (check the clock)" in got[day(-3)].reasons


def test_decisions_come_back_sorted_with_one_per_set() -> None:
    sets = [complete(day(n)) for n in (5, 40, 1, 70)] + [SetState("zz", None, "unreadable")]
    got = plan_retention(sets, RetentionPolicy(), NOW)
    assert [d.set_id for d in got] == sorted(s.set_id for s in sets)


# --------------------------------------------------------------------------------------------
# Synthetic sets in a real store


def write_set(
    store: BackupStore, set_id: str, *, manifest: bool = True, drill: bool | None = None
) -> None:
    """A small set in the nightly layout: artifacts, then the manifest, then the drill record."""
    artifacts: dict[str, Any] = {}
    for component in COMPONENTS:
        name = artifact_name(component, False, "run-1")
        data = f"{set_id} {component}".encode()
        store.put_bytes(set_id, name, data)
        artifacts[component] = {
            "name": name,
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes_out": len(data),
        }
    if not manifest:
        return
    body = {"format": FORMAT, "set_id": set_id, "artifacts": artifacts}
    payload = manifest_bytes(body)
    parse_manifest(payload)  # the shape the backup job writes, as far as retention is concerned
    store.put_bytes(set_id, MANIFEST, payload)
    if drill is not None:
        record = {
            "passed": drill,
            "checked_at": datetime.now(UTC).isoformat(),
            "reason": "ok" if drill else "row count mismatch in messages",
        }
        store.put_bytes(set_id, DRILL, json.dumps(record).encode())


def local_root(store: BackupStore) -> Path | None:
    return Path(store.url.removeprefix("file://")) if store.url.startswith("file://") else None


def set_mtimes(root: Path, today: date, keep_days: int) -> None:
    """Make file times lie: old sets look brand new, recent sets look a year old.

    ``find -mtime +30 -delete`` would delete the recent sets and keep the old ones; retention
    must do the opposite, since it reads the age from the set id.
    """
    now = time.time()
    year_ago = now - 365 * 86400
    for set_dir in root.iterdir():
        set_date = parse_set_date(set_dir.name)
        young = set_date is not None and (today - set_date).days < keep_days
        stamp = year_ago if young else now
        for path in [*set_dir.iterdir(), set_dir]:
            os.utime(path, (stamp, stamp))


# 90 days ending 2026-09-15 (TODAY): 2026-06-18 .. 2026-09-15
INCOMPLETE = {"2026-09-15", "2026-09-14", "2026-09-13", "2026-08-12"}
FAILED = {"2026-09-10", "2026-08-16", "2026-08-09"}
PASSED = {"2026-07-01", "2026-06-25"}
CORRUPT = "2026-07-15"
NOT_A_SET = "manual-copy"


def populate_90_days(store: BackupStore) -> list[str]:
    ids = [day(n) for n in range(90)]
    for set_id in ids:
        if set_id == CORRUPT:
            write_set(store, set_id, manifest=False)
            store.put_bytes(set_id, MANIFEST, b'{"format": "twinme-backup-set/v1", "artif')
            continue
        drill = True if set_id in PASSED else False if set_id in FAILED else None
        write_set(store, set_id, manifest=set_id not in INCOMPLETE, drill=drill)
    store.put_bytes(NOT_A_SET, "postgres.dump", b"someone's manual copy")
    return ids


def expected_after_90_days() -> set[str]:
    """Worked out by hand for keep_days=30, 7 daily, 4 weekly, 6 monthly at 05:00 on 09-15."""
    window = {day(n) for n in range(30)} - {"2026-09-13"}  # incomplete for 29 h
    daily = {"2026-08-16", "2026-08-15", "2026-08-14", "2026-08-13", "2026-08-11", "2026-08-10"}
    daily |= {"2026-08-09"}  # 08-12 is incomplete: the 7th day is 08-09
    # W33's newest (08-16) and W32's (08-09) failed their drills: the day before stands in
    weekly = {"2026-08-15", "2026-08-08", "2026-08-02", "2026-07-26"}
    monthly = {"2026-08-15", "2026-07-31", "2026-06-30"}  # the store starts on 2026-06-18
    newest_passed = {"2026-07-01"}
    reported = {CORRUPT, NOT_A_SET}
    return window | daily | weekly | monthly | newest_passed | reported


POLICY_90 = RetentionPolicy(keep_days=30, keep_daily=7, keep_weekly=4, keep_monthly=6)


def test_ninety_days_dry_run_then_real_run(store: BackupStore) -> None:
    """Both stores, one code path: the dry run deletes nothing, the real run exactly the plan."""
    ids = populate_90_days(store)
    root = local_root(store)
    if root is not None:
        set_mtimes(root, TODAY, keep_days=30)
    before = store.list_sets()
    assert before == sorted([*ids, NOT_A_SET])

    states = {s.set_id: s for s in inspect_sets(store)}
    assert states[CORRUPT].status == "unreadable"
    assert "not valid JSON" in states[CORRUPT].detail
    assert states[NOT_A_SET].status == "unreadable"
    assert states["2026-08-12"].status == "incomplete"
    assert states["2026-08-16"].drill == "failed"
    assert states["2026-07-01"].drill == "passed"
    assert states["2026-07-02"] == SetState("2026-07-02", date(2026, 7, 2), "complete", "none")

    decisions = plan_retention(list(states.values()), POLICY_90, NOW)
    expected = expected_after_90_days()
    lines = ListLog()
    report = apply_retention(store, decisions, dry_run=True, log=lines)
    assert store.list_sets() == before
    assert report.dry_run
    assert {d.set_id for d in report.deleted} == set(before) - expected
    assert {d.set_id for d in report.reported} == {CORRUPT, NOT_A_SET}
    assert len(lines) == len(before)
    assert (
        "dry run, would delete 2026-09-13: delete "
        "(incomplete for more than 24 h (no manifest.json: not a backup))" in lines
    )
    assert (
        "dry run, would delete 2026-07-02: delete (older than 30 days and not kept by any rule)"
        in lines
    )
    assert "keep 2026-07-01: keep (newest set that passed its drill)" in lines
    assert "keep 2026-08-15: keep (daily 2026-08-15; weekly 2026-W33; monthly 2026-08)" in lines
    assert any(line.startswith(f"report {CORRUPT}: report (manifest unreadable") for line in lines)

    lines.clear()
    report = apply_retention(store, decisions, dry_run=False, log=lines)
    assert set(store.list_sets()) == expected
    assert len(report.deleted) == 90 + 1 - len(expected) == 47
    assert len(report.kept) == len(expected) - 2
    assert not report.failed
    assert "deleted 2026-06-18: delete (older than 30 days and not kept by any rule)" in lines
    # deleted sets are gone entirely (no orphan artifacts), kept sets are untouched
    assert store.list_artifacts("2026-06-18") == {}
    assert MANIFEST in store.list_artifacts("2026-06-30")
    assert store.get_bytes(CORRUPT, MANIFEST).startswith(b'{"format"')
    if root is not None:
        assert sorted(p.name for p in root.iterdir()) == sorted(expected)

    # a second run changes nothing
    again = apply_retention(
        store,
        plan_retention(inspect_sets(store), POLICY_90, NOW),
        dry_run=False,
        log=ListLog(),
    )
    assert again.deleted == []
    assert set(store.list_sets()) == expected


def test_a_set_completed_after_the_plan_is_not_deleted(store: BackupStore) -> None:
    write_set(store, day(0))
    write_set(store, day(5), manifest=False)
    decisions = plan_retention(inspect_sets(store), RetentionPolicy(), NOW)
    assert by_id(decisions)[day(5)].action == "delete"
    write_set(store, day(5))  # e.g. a re-run of that partition finished meanwhile
    report = apply_retention(store, decisions, dry_run=False, log=ListLog())
    assert [d.set_id for d in report.kept] == [day(5), day(0)]
    assert report.kept[0].reasons == ["became complete while retention ran: kept"]
    assert MANIFEST in store.list_artifacts(day(5))


def test_a_refused_deletion_is_listed_and_the_others_still_go(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BackupStore(url=f"file://{tmp_path}/backups")
    for n in (0, 40, 41, 42):
        write_set(store, day(n))
    real_delete = BackupStore.delete_set

    def refuse_one(self: BackupStore, set_id: str, first: tuple[str, ...] = ()) -> None:
        if set_id == day(41):
            raise StoreError("access denied while trying to delete: Fix: grant s3:DeleteObject")
        real_delete(self, set_id, first)

    monkeypatch.setattr(BackupStore, "delete_set", refuse_one)
    lines = ListLog()
    decisions = plan_retention(inspect_sets(store), RetentionPolicy(), NOW)
    report = apply_retention(store, decisions, dry_run=False, log=lines)
    assert [(d.set_id, msg) for d, msg in report.failed] == [
        (day(41), "access denied while trying to delete: Fix: grant s3:DeleteObject")
    ]
    assert {d.set_id for d in report.deleted} == {day(40), day(42)}
    assert store.list_sets() == [day(41), day(0)]
    assert any(line.startswith(f"could not delete {day(41)}") for line in lines)


def test_inspect_reads_drill_records_defensively(store: BackupStore) -> None:
    write_set(store, "2026-09-01")
    store.put_bytes("2026-09-01", DRILL, b"not json")
    write_set(store, "2026-09-02")
    store.put_bytes("2026-09-02", DRILL, b'{"passed": "yes"}')
    states = by_state(inspect_sets(store))
    assert states["2026-09-01"].drill == "failed"
    assert "not valid JSON" in states["2026-09-01"].detail
    assert states["2026-09-02"].drill == "failed"
    assert "no boolean 'passed'" in states["2026-09-02"].detail


def by_state(states: list[SetState]) -> dict[str, SetState]:
    return {s.set_id: s for s in states}


# --------------------------------------------------------------------------------------------
# Through Dagster


def retention_defs(store: BackupStore) -> dg.Definitions:
    """retention_job with the WAL archive's retention off (tests/backups/test_pitr_retention.py
    runs it against a real archive)."""
    return dg.Definitions(
        assets=[backup_retention, wal_archive_retention],
        jobs=[retention_job],
        schedules=[retention_schedule],
        resources={"backup_store": store, "wal_archive": WalArchive(engine="off")},
    )


def materialization_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    [mat] = result.asset_materializations_for_node("backup_retention")
    return {key: getattr(value, "value", value) for key, value in mat.metadata.items()}


def test_retention_job_through_dagster(store: BackupStore) -> None:
    """The example run config (a dry run) validates and deletes nothing; then a real run."""
    # real clock: the asset uses datetime.now(); only daily rules, so the counts do not depend
    # on where today falls in its week or month
    today = datetime.now(UTC).astimezone(PARIS).date()
    for n in range(40):
        set_id = day(n, today)
        if n == 5:
            write_set(store, set_id, manifest=False)
            store.put_bytes(set_id, MANIFEST, b"garbage")
        else:
            drill = True if n == 30 else False if n == 20 else None
            write_set(store, set_id, manifest=n != 2, drill=drill)
    before = store.list_sets()
    job = retention_defs(store).resolve_job_def("retention_job")
    assert job.tags["twinme/operation"] == "retention"

    example = yaml.safe_load(EXAMPLE.read_text())
    assert example["ops"]["backup_retention"]["config"]["dry_run"] is True
    config = example["ops"]["backup_retention"]["config"]
    config.update(keep_days=10, keep_daily=3, keep_weekly=0, keep_monthly=0)
    dry = job.execute_in_process(run_config=example, instance=dg.DagsterInstance.ephemeral())
    assert dry.success
    meta = materialization_metadata(dry)
    # kept: today..9 days ago except 2 (incomplete for > 24 h) and 5 (reported), 3 daily sets
    # (10, 11, 12 days ago) and the newest set that passed its drill (30 days ago)
    assert (meta["kept"], meta["to_delete"], meta["deleted"], meta["reported"]) == (12, 27, 0, 1)
    assert meta["dry_run"] is True
    assert meta["sets"] == 40
    assert store.list_sets() == before
    table = meta["decisions"]
    assert "| set | status | drill | action | reasons |" in table
    assert f"| {day(13, today)} | complete | none | **delete** | older than 10 days" in table
    assert f"| {day(30, today)} | complete | passed | keep | newest set that passed" in table
    assert f"| {day(5, today)} | unreadable | none | **report** | manifest unreadable" in table

    config["dry_run"] = False
    real = job.execute_in_process(run_config=example, instance=dg.DagsterInstance.ephemeral())
    assert real.success
    meta = materialization_metadata(real)
    assert (meta["kept"], meta["deleted"], meta["to_delete"], meta["reported"]) == (12, 27, 27, 1)
    expected = {day(n, today) for n in [*range(13), 30] if n != 2}
    assert set(store.list_sets()) == expected


def test_example_run_config_validates_and_defaults_are_production() -> None:
    example = yaml.safe_load(EXAMPLE.read_text())
    store = BackupStore(url="file:///nonexistent/twinme-retention")
    job = retention_defs(store).resolve_job_def("retention_job")
    assert dg.validate_run_config(job, example)
    defaults = RetentionConfig()
    assert example["ops"]["backup_retention"]["config"] == {
        **defaults.model_dump(),
        "dry_run": True,
    }
    assert defaults.policy() == RetentionPolicy(30, 7, 4, 6, 24)
    with pytest.raises(dg.DagsterInvalidConfigError):
        dg.validate_run_config(job, {"ops": {"backup_retention": {"config": {"keep_days": "x"}}}})


def test_negative_config_fails_the_run_before_touching_the_store(tmp_path: Path) -> None:
    store = BackupStore(url=f"file://{tmp_path}/backups")
    write_set(store, day(400))
    write_set(store, day(500))
    job = retention_defs(store).resolve_job_def("retention_job")
    result = job.execute_in_process(
        run_config={"ops": {"backup_retention": {"config": {"keep_days": -1}}}},
        raise_on_error=False,
    )
    assert not result.success
    assert store.list_sets() == [day(500), day(400)]


def test_retention_schedule() -> None:
    assert retention_schedule.name == "retention_schedule"
    assert retention_schedule.cron_schedule == "0 5 * * *"
    assert retention_schedule.execution_timezone == "Europe/Paris"
    assert retention_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert retention_schedule.job_name == "retention_job"
    store = BackupStore(url="file:///nonexistent/twinme-retention")
    defs = retention_defs(store)
    assert defs.resolve_schedule_def("retention_schedule").job_name == "retention_job"
    spec = defs.resolve_assets_def("backup_retention")
    assert spec.group_names_by_key[dg.AssetKey("backup_retention")] == "backups"
    assert not spec.partitions_def
