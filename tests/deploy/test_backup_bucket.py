"""deploy/backup-bucket/: the bucket's Object Lock, lifecycle and policy, the IAM policies of the
writers and of retention, the retention ServiceAccount, and the script that creates them.

The refusals are also exercised on an S3 server that enforces IAM
(tests/backups/test_store_immutability.py); what that server cannot model (deleting a version
vs adding a delete marker, the governance bypass, bucket policies) is checked here, on the files.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from dagster_k8s.job import (
    DagsterK8sJobConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)

from twinme_ops.backups.store.base import BackupStore
from twinme_ops.defs.backups.retention import (
    RETENTION_AWS_CONFIG_MAP,
    RETENTION_AWS_PROFILE,
    RETENTION_SERVICE_ACCOUNT,
    RetentionConfig,
    backup_retention,
)
from twinme_ops.defs.resources import backup_store_resource

REPO = Path(__file__).resolve().parents[2]
HERE = REPO / "deploy" / "backup-bucket"
BUCKET = "twinme-backups"
ACCOUNT = "111122223333"
RETENTION_ROLE = f"arn:aws:iam::{ACCOUNT}:role/twinme-backup-retention"
ADMIN_ROLE = f"arn:aws:iam::{ACCOUNT}:role/twinme-backup-admin"
# what would let credentials destroy a version, unlock it, or weaken the bucket's protection
DANGEROUS = {
    "s3:DeleteObjectVersion",
    "s3:BypassGovernanceRetention",
    "s3:PutObjectRetention",
    "s3:PutObjectLegalHold",
    "s3:PutBucketObjectLockConfiguration",
    "s3:PutBucketVersioning",
    "s3:PutLifecycleConfiguration",
    "s3:PutBucketPolicy",
    "s3:DeleteBucketPolicy",
    "s3:DeleteBucket",
}


def load(name: str) -> Any:
    return json.loads((HERE / name).read_text())


def allowed(policy: dict[str, Any]) -> dict[str, set[str]]:
    """Action -> resources an identity policy allows."""
    grants: dict[str, set[str]] = {}
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"]
        resources = statement["Resource"]
        for action in [actions] if isinstance(actions, str) else actions:
            assert "*" not in action, f"wildcard action {action}"
            grants.setdefault(action, set()).update(
                [resources] if isinstance(resources, str) else resources
            )
    return grants


def prefix_of(url: str) -> str:
    parts = urlsplit(url)
    assert parts.netloc == BUCKET
    return parts.path.strip("/") + "/"


def nightly_prefix() -> str:
    values = yaml.safe_load((REPO / "deploy" / "dagster" / "values.yaml").read_text())
    [dep] = values["dagster-user-deployments"]["deployments"]
    return prefix_of(dep["env"]["TWINME_BACKUP_URL"])


def wal_prefix() -> str:
    docs = yaml.safe_load_all((REPO / "deploy" / "postgres" / "20-objectstore.yaml").read_text())
    [store] = [d for d in docs if d and d["kind"] == "ObjectStore"]
    return prefix_of(store["spec"]["configuration"]["destinationPath"])


def test_every_file_parses() -> None:
    for path in HERE.glob("*.json"):
        json.loads(path.read_text())
    assert {p.name for p in HERE.iterdir()} >= {
        "README.md",
        "create-bucket.sh",
        "object-lock.json",
        "lifecycle.json",
        "bucket-policy.json",
        "writer-policy.json",
        "cnpg-writer-policy.json",
        "retention-policy.json",
        "retention-trust-policy.json",
        "retention-serviceaccount.yaml",
    }


def test_the_lock_covers_the_retention_policy_and_is_what_the_store_requires(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every set stays locked for the keep_days the default policy keeps it, and the backups
    check the bucket against that very lock."""
    rule = load("object-lock.json")
    assert rule["ObjectLockEnabled"] == "Enabled"
    default = rule["Rule"]["DefaultRetention"]
    assert default["Mode"] == "GOVERNANCE"
    assert "Years" not in default
    assert default["Days"] >= RetentionConfig().keep_days
    monkeypatch.delenv("TWINME_BACKUP_LOCK_MODE", raising=False)
    monkeypatch.delenv("TWINME_BACKUP_LOCK_DAYS", raising=False)
    store = backup_store_resource("s3://twinme-backups/production")
    assert (store.lock_mode, store.lock_days) == (default["Mode"], default["Days"])
    assert BackupStore(url="s3://x/y").lock_days == default["Days"]
    # a lock the bucket policy allows is long enough for an extension of the kept sets
    [cap] = [
        s["Condition"]["NumericGreaterThan"]
        for s in load("bucket-policy.json")["Statement"]
        if "NumericGreaterThan" in s.get("Condition", {})
    ]
    assert int(cap["s3:object-lock-remaining-retention-days"]) >= max(
        default["Days"], RetentionConfig().lock_extension_days
    )


def test_the_writers_lack_exactly_the_dangerous_actions() -> None:
    ops = allowed(load("writer-policy.json"))
    assert set(ops) == {
        "s3:ListBucket",
        "s3:ListBucketMultipartUploads",
        "s3:GetBucketLocation",
        "s3:GetBucketVersioning",
        "s3:GetBucketObjectLockConfiguration",
        "s3:PutObject",
        "s3:GetObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
        "s3:GetObjectRetention",
        "s3:GetObjectLegalHold",
    }
    cnpg = allowed(load("cnpg-writer-policy.json"))
    for grants in (ops, cnpg):
        assert not DANGEROUS & set(grants)
        assert "s3:PutObjectRetention" not in grants  # no lock headers on a PutObject either
    # each writes only under its own prefix, which the deployments use
    bucket = f"arn:aws:s3:::{BUCKET}"
    assert ops["s3:PutObject"] == {f"{bucket}/{nightly_prefix()}*"}
    assert ops["s3:GetObject"] == {f"{bucket}/{nightly_prefix()}*", f"{bucket}/{wal_prefix()}*"}
    assert cnpg["s3:PutObject"] == cnpg["s3:DeleteObject"] == {f"{bucket}/{wal_prefix()}*"}
    assert ops["s3:ListBucket"] == cnpg["s3:ListBucket"] == {bucket}


def test_retention_may_delete_versions_and_extend_locks_of_nightly_sets_only() -> None:
    ops = allowed(load("retention-policy.json"))
    assert DANGEROUS & set(ops) == {"s3:DeleteObjectVersion", "s3:PutObjectRetention"}
    assert "s3:PutObject" not in ops  # it writes nothing
    for action in ("s3:DeleteObjectVersion", "s3:PutObjectRetention", "s3:DeleteObject"):
        assert ops[action] == {f"arn:aws:s3:::{BUCKET}/{nightly_prefix()}*"}, action
    assert "s3:ListBucketVersions" in ops and "s3:GetObjectRetention" in ops


def test_the_bucket_policy_denies_the_dangerous_actions_to_all_but_two_roles() -> None:
    """Whatever IAM policy someone attaches later, the bucket refuses these."""
    denied: dict[str, set[str]] = {}
    for statement in load("bucket-policy.json")["Statement"]:
        assert statement["Effect"] == "Deny" and statement["Principal"] == "*"
        condition = statement.get("Condition", {})
        if set(condition) != {"ArnNotEquals"}:
            continue
        except_for = condition["ArnNotEquals"]["aws:PrincipalArn"]
        except_for = {except_for} if isinstance(except_for, str) else set(except_for)
        for action in statement["Action"]:
            denied[action] = except_for
    assert set(denied) >= DANGEROUS
    for action in DANGEROUS:
        assert denied[action] <= {RETENTION_ROLE, ADMIN_ROLE}, action
    assert denied["s3:DeleteObjectVersion"] == denied["s3:PutObjectRetention"]
    assert RETENTION_ROLE in denied["s3:DeleteObjectVersion"]
    assert denied["s3:BypassGovernanceRetention"] == {ADMIN_ROLE}
    assert denied["s3:PutBucketObjectLockConfiguration"] == {ADMIN_ROLE}


def test_no_lifecycle_rule_destroys_a_nightly_set() -> None:
    """Only retention, with its role and the policy, destroys nightly sets; the WAL archive's
    versions barman-cloud deleted go 7 days later (time to notice a wiped archive)."""
    rules = load("lifecycle.json")["Rules"]
    for rule in rules:
        prefix = rule["Filter"]["Prefix"]
        destroys = "NoncurrentVersionExpiration" in rule or "Days" in rule.get("Expiration", {})
        if destroys:
            assert prefix and not nightly_prefix().startswith(prefix), rule["ID"]
    [wal] = [r for r in rules if "NoncurrentVersionExpiration" in r]
    assert wal["Filter"]["Prefix"] == wal_prefix()
    assert wal["NoncurrentVersionExpiration"]["NoncurrentDays"] >= 7
    assert any(r["Filter"]["Prefix"] == "" and "AbortIncompleteMultipartUpload" in r for r in rules)


def test_only_the_retention_service_account_becomes_the_retention_role() -> None:
    [statement] = load("retention-trust-policy.json")["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    conditions = statement["Condition"]["StringEquals"]
    [sub] = [v for k, v in conditions.items() if k.endswith(":sub")]
    [aud] = [v for k, v in conditions.items() if k.endswith(":aud")]
    assert sub == f"system:serviceaccount:dagster:{RETENTION_SERVICE_ACCOUNT}"
    assert aud == "sts.amazonaws.com"
    docs = list(yaml.safe_load_all((HERE / "retention-serviceaccount.yaml").read_text()))
    account, config_map = docs
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30", strict=True)
        assert doc["metadata"]["namespace"] == "dagster"
    assert account["metadata"]["name"] == RETENTION_SERVICE_ACCOUNT
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == RETENTION_ROLE
    assert config_map["metadata"]["name"] == RETENTION_AWS_CONFIG_MAP
    profiles = configparser.ConfigParser()
    profiles.read_string(config_map["data"]["config"])
    profile = profiles[f"profile {RETENTION_AWS_PROFILE}"]
    assert profile["role_arn"] == RETENTION_ROLE
    assert profile["web_identity_token_file"].startswith("/var/run/secrets/eks.amazonaws.com/")


def test_the_retention_step_pod_runs_as_the_retention_service_account() -> None:
    """The Job dagster_k8s builds for backup_retention's step, from the launcher's settings and
    the asset's op tag: the retention ServiceAccount, the profile, its file."""
    launcher = DagsterK8sJobConfig(
        job_image="registry.twinme.ai/twinme-ops:sha",
        dagster_home="/opt/dagster/dagster_home",
        instance_config_map="dagster-instance",
        service_account_name="twinme-ops-runs",
        env_secrets=["twinme-ops-env", "twinme-ops-aws"],
    )
    job = construct_dagster_k8s_job(
        launcher,
        ["dagster", "api", "execute_step"],
        "dagster-step-retention",
        user_defined_k8s_config=get_user_defined_k8s_config(backup_retention.op.tags),
    ).to_dict()
    spec = job["spec"]["template"]["spec"]
    assert spec["service_account_name"] == RETENTION_SERVICE_ACCOUNT
    [container] = spec["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if e.get("value") is not None}
    assert env["TWINME_RETENTION_AWS_PROFILE"] == RETENTION_AWS_PROFILE
    [mount] = [m for m in container["volume_mounts"] if m["name"] == "retention-aws"]
    assert env["AWS_CONFIG_FILE"] == f"{mount['mount_path']}/config"
    [volume] = [v for v in spec["volumes"] if v["name"] == "retention-aws"]
    assert volume["config_map"]["name"] == RETENTION_AWS_CONFIG_MAP


def run_script(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """create-bucket.sh with a stand-in ``aws`` that records each call and keeps each file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    kept = tmp_path / "files"
    kept.mkdir(exist_ok=True)
    fake = bin_dir / "aws"
    fake.write_text(
        "#!/usr/bin/env bash\n"
        f'echo "$*" >> {tmp_path}/calls\n'
        'for a in "$@"; do case "$a" in file://*) cp "${a#file://}" '
        f"{kept}/ ;; esac; done\n"
        # identities do not exist yet
        'case "$2" in get-user|get-role) exit 254 ;; esac\n'
    )
    fake.chmod(0o755)
    result = subprocess.run(
        ["bash", str(HERE / "create-bucket.sh")],
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = (tmp_path / "calls").read_text().splitlines() if (tmp_path / "calls").exists() else []
    return result, calls


def test_the_script_creates_the_bucket_then_the_identities_then_the_policy(tmp_path: Path) -> None:
    result, calls = run_script(
        tmp_path,
        ACCOUNT_ID="123456789012",
        OIDC_PROVIDER="oidc.eks.eu-west-3.amazonaws.com/id/ABC123",
        LOCK_MODE="COMPLIANCE",
        LOCK_DAYS="35",
    )
    assert result.returncode == 0, result.stderr
    assert calls[0].startswith("s3api create-bucket --bucket twinme-backups")
    assert "--object-lock-enabled-for-bucket" in calls[0]
    assert calls[-1].startswith("s3api put-bucket-policy")
    kept = tmp_path / "files"
    for path in kept.iterdir():
        text = path.read_text()
        json.loads(text)
        assert ACCOUNT not in text and "EXAMPLE" not in text, path.name
    lock = json.loads((kept / "object-lock.json").read_text())
    assert lock["Rule"]["DefaultRetention"] == {"Mode": "COMPLIANCE", "Days": 35}
    trust = (kept / "retention-trust-policy.json").read_text()
    assert "oidc.eks.eu-west-3.amazonaws.com/id/ABC123:sub" in trust
    assert "arn:aws:iam::123456789012:role/twinme-backup-admin" in (
        (kept / "bucket-policy.json").read_text()
    )
    assert any(c.startswith("iam create-role --role-name twinme-backup-retention") for c in calls)


def test_the_script_refuses_a_bad_lock_mode_before_any_call(tmp_path: Path) -> None:
    result, calls = run_script(tmp_path, ACCOUNT_ID="1", OIDC_PROVIDER="x", LOCK_MODE="forever")
    assert result.returncode == 2
    assert "use GOVERNANCE or COMPLIANCE" in result.stderr
    assert calls == []
