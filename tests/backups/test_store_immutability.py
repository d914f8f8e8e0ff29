"""Backups nobody can erase: the store, the writer and the retention role on an S3 server that
enforces IAM (``tests/support/s3_iam.py``), with the bucket configuration and the IAM policies
shipped in ``deploy/backup-bucket/``.

Locks are real: a version written now stays locked 30 days. Where a test needs a set whose lock
has ended, the admin moves the lock's end into the past (``BypassGovernanceRetention``): it stands
in for 30 days passing. What moto cannot show is checked on the files instead
(tests/deploy/test_backup_bucket.py, list in tests/support/s3_iam.py): above all, moto checks
the same permission for deleting a version as for adding a delete marker, so the writer's lack of
``s3:DeleteObjectVersion`` is shown here by credentials that cannot delete at all (``reader``),
and the writer's refusals by Object Lock itself.
"""

from __future__ import annotations

import configparser
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from botocore.exceptions import ClientError
from dagster_aws.s3 import S3Resource

from tests.support.list_log import ListLog
from tests.support.s3_iam import IamS3, Keys, deploy_json
from twinme_ops.backups.manifest import (
    COMPONENTS,
    FORMAT,
    MANIFEST,
    artifact_name,
    manifest_bytes,
)
from twinme_ops.backups.pitr.archive import WalArchive
from twinme_ops.backups.retention import RetentionPolicy, kept_beyond_window, plan_retention
from twinme_ops.backups.retention_apply import apply_retention, extend_kept_locks, inspect_sets
from twinme_ops.backups.store.base import BackupStore, ObjectLockedError, StoreError
from twinme_ops.backups.store.immutability import BucketFacts, evaluate
from twinme_ops.defs.backups.retention import RETENTION_AWS_PROFILE, backup_retention, retention_job
from twinme_ops.defs.backups.wal_retention import wal_archive_retention

PARIS = ZoneInfo("Europe/Paris")
PREFIX = "production"


def today() -> str:
    return datetime.now(UTC).astimezone(PARIS).date().isoformat()


def day(offset: int) -> str:
    """The set id ``offset`` days ago (Europe/Paris)."""
    return (datetime.now(UTC).astimezone(PARIS).date() - timedelta(days=offset)).isoformat()


def store_as(iam: IamS3, bucket: str, keys: Keys, **fields: Any) -> BackupStore:
    s3 = S3Resource(
        endpoint_url=iam.endpoint,
        region_name="us-east-1",
        aws_access_key_id=keys.access_key_id,
        aws_secret_access_key=keys.secret_access_key,
    )
    return BackupStore(url=f"s3://{bucket}/{PREFIX}", s3=s3, multipart_part_size_mb=5, **fields)


def write_set(store: BackupStore, set_id: str, *, manifest: bool = True) -> None:
    """A small set in the nightly layout, manifest last."""
    artifacts: dict[str, Any] = {}
    for component in COMPONENTS:
        name = artifact_name(component, False, "run-1")
        data = f"{set_id} {component}".encode()
        store.put_bytes(set_id, name, data)
        artifacts[component] = {"name": name, "sha256": "0" * 64, "bytes_out": len(data)}
    if manifest:
        body = {"format": FORMAT, "set_id": set_id, "artifacts": artifacts}
        store.create_bytes(set_id, MANIFEST, manifest_bytes(body))


def end_locks(iam: IamS3, bucket: str, set_id: str, until: datetime | None = None) -> None:
    """As the admin, move the end of every lock of the set (default: a minute ago)."""
    when = (until or datetime.now(UTC) - timedelta(minutes=1)).replace(microsecond=0)
    s3 = iam.client(iam.admin)
    for v in iam.versions(bucket, f"{PREFIX}/{set_id}/"):
        if not v["Marker"]:
            s3.put_object_retention(
                Bucket=bucket,
                Key=v["Key"],
                VersionId=v["VersionId"],
                Retention={"Mode": "GOVERNANCE", "RetainUntilDate": when},
                BypassGovernanceRetention=True,
            )


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return exc.value.response["Error"]["Code"]


@pytest.fixture
def bucket(iam_s3: IamS3) -> str:
    return iam_s3.shipped_bucket()


@pytest.fixture
def writer(iam_s3: IamS3, bucket: str) -> Keys:
    return iam_s3.user("writer", deploy_json("writer-policy.json", bucket))


@pytest.fixture
def retention(iam_s3: IamS3, bucket: str) -> Keys:
    return iam_s3.user("retention", deploy_json("retention-policy.json", bucket))


@pytest.fixture
def reader(iam_s3: IamS3, bucket: str) -> Keys:
    """The writer's policy without s3:DeleteObject: what moto can refuse a version delete to."""
    policy = deploy_json("writer-policy.json", bucket)
    for statement in policy["Statement"]:
        statement["Action"] = [a for a in statement["Action"] if a != "s3:DeleteObject"]
    return iam_s3.user("reader", policy)


# --------------------------------------------------------------------------------------------
# The writer


def test_a_set_written_by_the_writer_lands_locked(iam_s3: IamS3, bucket: str, writer: Keys) -> None:
    store = store_as(iam_s3, bucket, writer)
    write_set(store, today())
    admin = iam_s3.client(iam_s3.admin)
    for name in store.list_artifacts(today()):
        head = admin.head_object(Bucket=bucket, Key=f"{PREFIX}/{today()}/{name}")
        assert head["ObjectLockMode"] == "GOVERNANCE", name
        left = head["ObjectLockRetainUntilDate"] - datetime.now(UTC)
        assert timedelta(days=29, hours=23) < left <= timedelta(days=30), name
    # the writer reads its own locks (s3:GetObjectRetention), as backup_set does for metadata
    lock = store.lock_of(today(), MANIFEST)
    assert lock is not None and lock.mode == "GOVERNANCE" and lock.until is not None


def test_the_writer_cannot_destroy_a_locked_version_nor_shorten_its_lock(
    iam_s3: IamS3, bucket: str, writer: Keys
) -> None:
    store = store_as(iam_s3, bucket, writer)
    write_set(store, day(40))
    before = iam_s3.versions(bucket, PREFIX)
    s3 = iam_s3.client(writer)
    key, version = before[0]["Key"], before[0]["VersionId"]
    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=bucket, Key=key, VersionId=version)
    assert error_code(refused) == "AccessDenied"
    with pytest.raises(ClientError) as refused:
        s3.put_object_retention(
            Bucket=bucket,
            Key=key,
            VersionId=version,
            Retention={"Mode": "GOVERNANCE", "RetainUntilDate": datetime(2020, 1, 1, tzinfo=UTC)},
        )
    assert error_code(refused) == "AccessDenied"
    assert iam_s3.versions(bucket, PREFIX) == before


def test_the_store_tells_the_writer_that_deleting_a_set_is_the_retention_roles_job(
    iam_s3: IamS3, bucket: str, writer: Keys
) -> None:
    store = store_as(iam_s3, bucket, writer)
    write_set(store, day(40))
    before = iam_s3.versions(bucket, PREFIX)
    for lock_ended in (False, True):
        if lock_ended:
            end_locks(iam_s3, bucket, day(40))
        with pytest.raises(StoreError) as info:
            store.delete_set(day(40), first=(MANIFEST,))
        message = str(info.value)
        assert message.startswith("access denied while trying to list the versions under")
        assert "Fix: deleting object versions is the retention role's alone" in message
        assert "TWINME_RETENTION_AWS_PROFILE" in message
        assert iam_s3.versions(bucket, PREFIX) == before


def test_the_retention_role_is_refused_a_locked_set_and_told_until_when(
    iam_s3: IamS3, bucket: str, writer: Keys, retention: Keys
) -> None:
    write_set(store_as(iam_s3, bucket, writer), day(40))
    before = iam_s3.versions(bucket, PREFIX)
    with pytest.raises(ObjectLockedError) as info:
        store_as(iam_s3, bucket, retention).delete_set(day(40), first=(MANIFEST,))
    assert info.value.until is not None and info.value.until > datetime.now(UTC)
    assert "nothing of the set was deleted" in str(info.value)
    # S3 itself refuses it the locked version (on AWS it has no s3:BypassGovernanceRetention
    # either; moto honours the bypass header without asking for a permission)
    with pytest.raises(ClientError) as refused:
        iam_s3.client(retention).delete_object(
            Bucket=bucket, Key=before[0]["Key"], VersionId=before[0]["VersionId"]
        )
    assert error_code(refused) == "AccessDenied"
    assert iam_s3.versions(bucket, PREFIX) == before


def test_a_delete_or_an_overwrite_by_the_writer_keeps_the_old_version(
    iam_s3: IamS3, bucket: str, writer: Keys, retention: Keys
) -> None:
    store = store_as(iam_s3, bucket, writer)
    store.put_bytes("2026-01-01", "postgres.dump", b"the real dump")
    store.put_bytes("2026-01-01", "postgres.dump", b"ransom note")
    store.put_bytes("2026-01-01", "redis.rdb", b"snapshot")
    store.delete("2026-01-01", "redis.rdb")
    assert store.get_bytes("2026-01-01", "postgres.dump") == b"ransom note"
    assert "redis.rdb" not in store.list_artifacts("2026-01-01")
    admin = iam_s3.client(iam_s3.admin)
    versions = iam_s3.versions(bucket, f"{PREFIX}/2026-01-01/")
    dumps = [v for v in versions if v["Key"].endswith("postgres.dump")]
    assert len(dumps) == 2
    old = next(v for v in dumps if not v["IsLatest"])
    body = admin.get_object(Bucket=bucket, Key=old["Key"], VersionId=old["VersionId"])["Body"]
    assert body.read() == b"the real dump"
    rdb = [v for v in versions if v["Key"].endswith("redis.rdb")]
    assert sorted(v["Marker"] for v in rdb) == [False, True]  # a delete marker over the version
    # what retention sees: a name hidden by a delete marker
    assert store_as(iam_s3, bucket, retention).hidden_names("2026-01-01") == ["redis.rdb"]


def test_the_writer_cannot_weaken_the_bucket(iam_s3: IamS3, bucket: str, writer: Keys) -> None:
    s3 = iam_s3.client(writer)
    attempts = {
        "shorter default lock": lambda: s3.put_object_lock_configuration(
            Bucket=bucket,
            ObjectLockConfiguration={
                "ObjectLockEnabled": "Enabled",
                "Rule": {"DefaultRetention": {"Mode": "GOVERNANCE", "Days": 1}},
            },
        ),
        "expiring lifecycle": lambda: s3.put_bucket_lifecycle_configuration(
            Bucket=bucket,
            LifecycleConfiguration={
                "Rules": [
                    {
                        "ID": "purge",
                        "Status": "Enabled",
                        "Filter": {"Prefix": ""},
                        "NoncurrentVersionExpiration": {"NoncurrentDays": 1},
                    }
                ]
            },
        ),
        "suspended versioning": lambda: s3.put_bucket_versioning(
            Bucket=bucket, VersioningConfiguration={"Status": "Suspended"}
        ),
        "bucket policy": lambda: s3.put_bucket_policy(Bucket=bucket, Policy="{}"),
        "deleted bucket policy": lambda: s3.delete_bucket_policy(Bucket=bucket),
        "deleted bucket": lambda: s3.delete_bucket(Bucket=bucket),
    }
    for what, attempt in attempts.items():
        with pytest.raises(ClientError) as refused:
            attempt()
        assert error_code(refused) == "AccessDenied", what
    config = iam_s3.client(iam_s3.admin).get_object_lock_configuration(Bucket=bucket)
    assert config["ObjectLockConfiguration"]["Rule"]["DefaultRetention"]["Days"] == 30


# --------------------------------------------------------------------------------------------
# The store's check


def test_the_check_passes_for_the_shipped_bucket(
    iam_s3: IamS3, bucket: str, writer: Keys, reader: Keys
) -> None:
    report = store_as(iam_s3, bucket, writer).check_immutability(probe=False)
    assert report.ok, report.problems
    assert report.facts == BucketFacts("Enabled", True, "GOVERNANCE", 30, "not run")
    assert report.summary() == (
        f"s3://{bucket}/{PREFIX} is immutable: GOVERNANCE 30 days, versioning on"
    )
    # the probe: credentials without the right to delete versions are refused, and nothing is
    # created or deleted (on AWS the writer is refused alike; moto cannot tell its two deletes)
    report = store_as(iam_s3, bucket, reader).check_immutability()
    assert report.ok, report.problems
    assert report.metadata() == {
        "store_immutable": True,
        "object_lock": "GOVERNANCE 30 days",
        "versioning": "Enabled",
        "writer_can_delete_versions": "no",
    }
    assert iam_s3.versions(bucket) == []


@pytest.mark.parametrize("versioned", [False, True])
def test_the_check_fails_with_the_fix_on_a_bucket_without_object_lock(
    iam_s3: IamS3, versioned: bool
) -> None:
    bucket = iam_s3.bucket(versioned=versioned)
    writer = iam_s3.user("writer", deploy_json("writer-policy.json", bucket))
    report = store_as(iam_s3, bucket, writer).check_immutability(probe=False)
    assert not report.ok
    assert report.facts.lock_enabled is False
    text = report.summary()
    assert text.startswith(f"s3://{bucket}/{PREFIX} is NOT immutable: ")
    assert "Object Lock is not enabled" in text
    assert "Fix: enable it" in text and "deploy/backup-bucket/README.md" in text
    assert ("Versioning is" in text) is not versioned
    assert report.metadata()["store_immutable"] is False


def test_the_check_flags_credentials_that_may_delete_versions(
    iam_s3: IamS3, bucket: str, retention: Keys
) -> None:
    """The retention role as a writer would be a hole: the probe finds it, deleting nothing."""
    report = store_as(iam_s3, bucket, retention).check_immutability(probe=True)
    assert report.facts.writer_delete_probe == "allowed"
    assert not report.ok
    assert any("may delete object versions" in p and "Fix:" in p for p in report.problems)
    # retention itself checks without the probe: it may delete versions by design
    assert store_as(iam_s3, bucket, retention).check_immutability(probe=False).ok


@pytest.mark.parametrize(
    ("facts", "mode", "days", "problem"),
    [
        (BucketFacts("Enabled", True, "GOVERNANCE", 7), "GOVERNANCE", 30, "shorter than the 30"),
        (BucketFacts("Enabled", True, "GOVERNANCE", 30), "COMPLIANCE", 30, "requires COMPLIANCE"),
        (BucketFacts("Enabled", True, None, None), "GOVERNANCE", 30, "no default retention"),
        (BucketFacts("Suspended", False), "GOVERNANCE", 30, "Versioning is Suspended"),
        (
            BucketFacts(unread=("the bucket's versioning (grant s3:GetBucketVersioning).",)),
            "GOVERNANCE",
            30,
            "Could not read the bucket's versioning",
        ),
    ],
)
def test_a_weaker_lock_than_required_is_a_problem(
    facts: BucketFacts, mode: str, days: int, problem: str
) -> None:
    report = evaluate("s3://b/p", facts, mode, days)
    assert not report.ok
    assert any(problem in p for p in report.problems), report.problems
    # the same bucket is only reported, not a problem, where no lock is required
    assert evaluate("s3://b/p", facts, "off", days).problems == ()


def test_a_stronger_lock_than_required_passes() -> None:
    report = evaluate("s3://b/p", BucketFacts("Enabled", True, "COMPLIANCE", 365), "GOVERNANCE", 30)
    assert report.ok
    assert report.notes == ("COMPLIANCE mode: not even an administrator can shorten a lock",)


def test_a_local_store_is_not_applicable(tmp_path: Path) -> None:
    report = BackupStore(url=f"file://{tmp_path}").check_immutability()
    assert not report.applicable and not report.ok
    assert report.metadata() == {
        "store_immutable": False,
        "object_lock": "not applicable (local directory)",
    }


# --------------------------------------------------------------------------------------------
# Retention with its own role


def test_retention_deletes_only_what_the_policy_and_the_lock_allow(
    iam_s3: IamS3, bucket: str, writer: Keys, retention: Keys
) -> None:
    written = store_as(iam_s3, bucket, writer)
    for set_id in (day(0), day(40), day(45)):
        write_set(written, set_id)
    write_set(written, day(50), manifest=False)
    written.put_bytes(day(40), "postgres.dump", b"overwritten: a second version")
    end_locks(iam_s3, bucket, day(40))
    end_locks(iam_s3, bucket, day(50))
    locked_versions = iam_s3.versions(bucket, f"{PREFIX}/{day(45)}/")

    store = store_as(iam_s3, bucket, retention)
    decisions = plan_retention(
        inspect_sets(store), RetentionPolicy(keep_days=30), datetime.now(UTC)
    )
    assert {d.set_id for d in decisions if d.action == "delete"} == {day(40), day(45), day(50)}
    lines = ListLog()
    report = apply_retention(store, decisions, dry_run=False, log=lines)

    assert {d.set_id for d in report.deleted} == {day(40), day(50)}
    assert not report.failed
    [(locked, until)] = report.locked
    assert locked.set_id == day(45)
    assert until is not None and until - datetime.now(UTC) > timedelta(days=29)
    assert f"locked until {until:%Y-%m-%d %H:%M} UTC: deleted by a later run" in locked.reasons
    assert any(line.startswith(f"not yet deleted {day(45)}") for line in lines)
    # deleted sets are gone for good, every version; the locked set is whole
    assert iam_s3.versions(bucket, f"{PREFIX}/{day(40)}/") == []
    assert iam_s3.versions(bucket, f"{PREFIX}/{day(50)}/") == []
    assert iam_s3.versions(bucket, f"{PREFIX}/{day(45)}/") == locked_versions
    assert store.list_sets() == [day(45), day(0)]


def test_retention_extends_the_lock_of_sets_kept_beyond_the_window(
    iam_s3: IamS3, bucket: str, writer: Keys, retention: Keys
) -> None:
    written = store_as(iam_s3, bucket, writer)
    for set_id in (day(0), day(60)):
        write_set(written, set_id)
    end_locks(iam_s3, bucket, day(60), datetime.now(UTC) + timedelta(days=1))
    store = store_as(iam_s3, bucket, retention)
    now = datetime.now(UTC)
    policy = RetentionPolicy(keep_days=30, keep_monthly=6)
    report = apply_retention(
        store, plan_retention(inspect_sets(store), policy, now), dry_run=False, log=ListLog()
    )
    beyond = kept_beyond_window(report.kept, policy, now)
    assert beyond == [day(60)]
    fresh_lock = store.lock_of(day(0), MANIFEST)
    extended, failures = extend_kept_locks(store, beyond, now=now, days=7, log=ListLog())
    assert (extended, failures) == (len(COMPONENTS) + 1, [])
    lock = store.lock_of(day(60), MANIFEST)
    assert lock is not None and lock.until is not None
    assert lock.until >= (now + timedelta(days=7)).replace(microsecond=0)
    assert lock.mode == "GOVERNANCE"
    assert store.lock_of(day(0), MANIFEST) == fresh_lock  # the window's sets keep their lock
    # a lock ending later than a day before the target is left alone
    assert extend_kept_locks(store, beyond, now=now, days=7, log=ListLog()) == (0, [])


def test_retention_reports_a_set_whose_manifest_someone_deleted(
    iam_s3: IamS3, bucket: str, writer: Keys, retention: Keys
) -> None:
    """With the writer's keys an attacker can hide a manifest; retention must not take the set
    for an abandoned one and destroy it once its lock ends."""
    written = store_as(iam_s3, bucket, writer)
    write_set(written, day(0))
    write_set(written, day(40))
    written.delete(day(40), MANIFEST)
    end_locks(iam_s3, bucket, day(40))
    before = iam_s3.versions(bucket, f"{PREFIX}/{day(40)}/")
    store = store_as(iam_s3, bucket, retention)
    decisions = plan_retention(inspect_sets(store), RetentionPolicy(), datetime.now(UTC))
    lines = ListLog()
    report = apply_retention(store, decisions, dry_run=False, log=lines)
    [reported] = report.reported
    assert reported.set_id == day(40)
    assert "manifest.json was deleted by someone" in reported.reasons[0]
    assert "Fix:" in reported.reasons[0]
    assert iam_s3.versions(bucket, f"{PREFIX}/{day(40)}/") == before


def retention_defs(store: BackupStore) -> dg.Definitions:
    """The real ``retention_job``: sets' retention, and the WAL archive's (off here)."""
    return dg.Definitions(
        assets=[backup_retention, wal_archive_retention],
        jobs=[retention_job],
        resources={"backup_store": store, "wal_archive": WalArchive(engine="off")},
    )


def test_retention_job_signs_with_the_retention_profile_not_the_writers_keys(
    iam_s3: IamS3,
    bucket: str,
    writer: Keys,
    retention: Keys,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The store's own credentials are the writer's; ``retention_aws_profile`` names the
    retention user's profile, and only with it can the old set be deleted."""
    credentials = configparser.ConfigParser()
    credentials[RETENTION_AWS_PROFILE] = {
        "aws_access_key_id": retention.access_key_id,
        "aws_secret_access_key": retention.secret_access_key,
    }
    with (tmp_path / "credentials").open("w") as out:
        credentials.write(out)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    # the writer's keys in the environment, as in every production pod: the profile must win
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", writer.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", writer.secret_access_key)
    written = store_as(iam_s3, bucket, writer)
    for set_id in (day(0), day(40), day(41)):
        write_set(written, set_id)
    end_locks(iam_s3, bucket, day(40))

    store = store_as(iam_s3, bucket, writer, retention_aws_profile=RETENTION_AWS_PROFILE)
    defs = retention_defs(store)
    config = {"keep_days": 30, "keep_daily": 0, "keep_weekly": 0, "keep_monthly": 0}
    result = defs.resolve_job_def("retention_job").execute_in_process(
        run_config={"ops": {"backup_retention": {"config": config}}},
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    [mat] = result.asset_materializations_for_node("backup_retention")
    meta: dict[str, Any] = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    assert (meta["deleted"], meta["locked"], meta["failed_deletions"]) == (1, 1, 0)
    assert meta["object_lock"] == "GOVERNANCE 30 days"
    assert meta["lock_covers_policy"] is True
    assert store.list_sets() == [day(41), day(0)]
    assert "| **delete** |" in meta["decisions"] and "deleted by a later run" in meta["decisions"]

    # without the profile, the same run is the writer: nothing is destroyed, and it says why
    end_locks(iam_s3, bucket, day(41))
    as_writer = store_as(iam_s3, bucket, writer)
    defs = retention_defs(as_writer)
    result = defs.resolve_job_def("retention_job").execute_in_process(
        run_config={"ops": {"backup_retention": {"config": config}}},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert not result.success
    failure = json.dumps(
        [str(e.event_specific_data) for e in result.all_events if e.is_step_failure]
    )
    assert "the retention role's alone" in failure
    assert store.list_sets() == [day(41), day(0)]
