"""An S3 endpoint that enforces IAM, for the tests of backups nobody can erase.

moto checks every request's signature and the caller's IAM policies once
``INITIAL_NO_AUTH_ACTION_COUNT`` requests have passed (its server's ``POST /moto-api/reset-auth``
sets that count, process-wide). The shared moto server of ``s3_fixtures`` must stay open to any
key, so this one is a server of its own, in its own process: the fixture starts it, creates an
admin user while no check applies yet, then turns the checks on for good. Tests create IAM users
with the policies shipped in ``deploy/backup-bucket/`` (the bucket name replaced) and buckets with
its Object Lock configuration.

moto names an S3 request's permission after the API operation (``s3:ListObjectsV2``,
``s3:HeadObject``), where AWS uses IAM actions (``s3:ListBucket``, ``s3:GetObject``): users get the
shipped policies translated through :data:`MOTO_OPERATIONS`. What moto cannot model, and tests
therefore check on the policy files (tests/deploy/test_backup_bucket.py): deleting a version is
the operation ``DeleteObject`` for it, so ``s3:DeleteObject`` alone cannot be told from
``s3:DeleteObjectVersion`` (Object Lock still refuses a locked version); it honours
``BypassGovernanceRetention`` without a permission; it never refuses to shorten a lock; it does
not apply bucket policies to IAM users; it gives a completed multipart upload no default
retention.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

BUCKET_DIR = Path(__file__).resolve().parents[2] / "deploy" / "backup-bucket"
SHIPPED_BUCKET = "twinme-backups"
REGION = "us-east-1"


# IAM action -> the operations moto checks for it (AWS: "Actions defined by Amazon S3")
MOTO_OPERATIONS: dict[str, tuple[str, ...]] = {
    "s3:ListBucket": ("ListObjects", "ListObjectsV2", "HeadBucket"),
    "s3:ListBucketMultipartUploads": ("ListMultipartUploads",),
    "s3:ListBucketVersions": ("ListObjectVersions",),
    "s3:GetBucketLocation": ("GetBucketLocation",),
    "s3:GetBucketVersioning": ("GetBucketVersioning",),
    "s3:GetBucketObjectLockConfiguration": ("GetObjectLockConfiguration",),
    "s3:PutObject": ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"),
    "s3:GetObject": ("GetObject", "HeadObject"),
    "s3:GetObjectVersion": ("GetObject", "HeadObject"),
    "s3:DeleteObject": ("DeleteObject", "DeleteObjects"),
    "s3:DeleteObjectVersion": ("DeleteObject", "DeleteObjects"),
    "s3:AbortMultipartUpload": ("AbortMultipartUpload",),
    "s3:ListMultipartUploadParts": ("ListParts",),
    "s3:GetObjectRetention": ("GetObjectRetention",),
    "s3:GetObjectLegalHold": ("GetObjectLegalHold",),
    "s3:PutObjectRetention": ("PutObjectRetention",),
}


def moto_policy(policy: dict[str, Any]) -> dict[str, Any]:
    """``policy`` with each IAM action replaced by the operations moto checks for it."""
    statements = []
    for statement in policy["Statement"]:
        actions = statement["Action"]
        actions = [actions] if isinstance(actions, str) else actions
        ops = sorted({f"s3:{op}" for a in actions for op in MOTO_OPERATIONS[a]})
        statements.append({**statement, "Action": ops})
    return {**policy, "Statement": statements}


@dataclass(frozen=True)
class Keys:
    """An IAM user's access key."""

    user: str
    access_key_id: str
    secret_access_key: str


def deploy_json(name: str, bucket: str = SHIPPED_BUCKET) -> dict[str, Any]:
    """A file of deploy/backup-bucket/, for ``bucket`` instead of the production bucket."""
    text = (BUCKET_DIR / name).read_text()
    return json.loads(text.replace(f"arn:aws:s3:::{SHIPPED_BUCKET}", f"arn:aws:s3:::{bucket}"))


class IamS3:
    """The IAM-enforcing server: clients for any user, users, buckets."""

    def __init__(self, endpoint: str, admin: Keys) -> None:
        self.endpoint = endpoint
        self.admin = admin

    def client(self, keys: Keys, service: str = "s3") -> Any:
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=keys.access_key_id,
            aws_secret_access_key=keys.secret_access_key,
            config=Config(retries={"max_attempts": 1}),
        )

    def user(self, name: str, policy: dict[str, Any], translate: bool = True) -> Keys:
        """A new IAM user with ``policy`` (translated for moto, :func:`moto_policy`) as its only
        inline policy."""
        if translate:
            policy = moto_policy(policy)
        iam = self.client(self.admin, "iam")
        user = f"{name}-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName=name, PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        return Keys(user, key["AccessKeyId"], key["SecretAccessKey"])

    def bucket(self, *, object_lock: dict[str, Any] | None = None, versioned: bool = False) -> str:
        """A new bucket: with ``object_lock`` (an ObjectLockConfiguration, versioning implied),
        else plain or only versioned."""
        s3 = self.client(self.admin)
        name = f"twinme-iam-{uuid.uuid4().hex[:12]}"
        s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock is not None)
        if object_lock is not None:
            s3.put_object_lock_configuration(Bucket=name, ObjectLockConfiguration=object_lock)
        elif versioned:
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    def shipped_bucket(self) -> str:
        """A bucket configured with deploy/backup-bucket's Object Lock and lifecycle files."""
        name = self.bucket(object_lock=deploy_json("object-lock.json"))
        self.client(self.admin).put_bucket_lifecycle_configuration(
            Bucket=name, LifecycleConfiguration=deploy_json("lifecycle.json")
        )
        return name

    def versions(self, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
        """Every version and delete marker under ``prefix`` (``Marker`` says which), as admin."""
        resp = self.client(self.admin).list_object_versions(Bucket=bucket, Prefix=prefix)
        return [{**v, "Marker": False} for v in resp.get("Versions", [])] + [
            {**m, "Marker": True} for m in resp.get("DeleteMarkers", [])
        ]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def iam_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IamS3]:
    """moto's server in a process of its own, enforcing IAM once its admin user exists."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.pop("INITIAL_NO_AUTH_ACTION_COUNT", None)
    log = tmp_path_factory.mktemp("moto-iam") / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{endpoint}/moto-api/", timeout=1)
                break
            except requests.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto server did not start: {log.read_text()}") from None
                time.sleep(0.1)
        # no check applies yet: any key may create the admin
        anyone = Keys("anyone", "setup-access-key", "setup-secret-key")
        setup = IamS3(endpoint, anyone)
        everything = {"Effect": "Allow", "Action": "*", "Resource": "*"}
        admin = setup.user(
            "admin", {"Version": "2012-10-17", "Statement": [everything]}, translate=False
        )
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=5).raise_for_status()
        server = IamS3(endpoint, admin)
        # from now on every request is checked: a key no user holds is refused
        try:
            server.client(anyone).list_buckets()
        except ClientError:
            pass
        else:
            raise RuntimeError("moto server does not enforce IAM after reset-auth")
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
