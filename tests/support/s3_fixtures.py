"""A real S3 endpoint for tests: moto's server on 127.0.0.1, spoken to over HTTP by boto3.

Registered for every test module by ``tests/conftest.py``:

"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import boto3
import pytest

from twinme_ops.backups.store.base import BackupStore

# Everything boto3 would otherwise pick up from the developer's machine or CI runner: a real
# profile or session token must never leak into tests that talk to the fake endpoint.
_ENV_KEYS = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)


class _SharedServer:
    """One moto server per test process, however many modules import the fixture.

    A fixture imported into a test module *and* into conftest.py is registered twice, and each
    registration of a session fixture runs its own setup; both must see the same endpoint, or
    a bucket created on one server would be looked for on the other through the environment.
    """

    users = 0
    endpoint = ""
    server: Any = None
    saved: ClassVar[dict[str, str | None]] = {}

    @classmethod
    def acquire(cls) -> str:
        if cls.users == 0:
            from moto.server import ThreadedMotoServer

            server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            server.start()
            host, port = server.get_host_and_port()
            cls.server = server
            cls.endpoint = f"http://{host}:{port}"
            cls.saved = {key: os.environ.get(key) for key in _ENV_KEYS}
            for key in _ENV_KEYS:
                os.environ.pop(key, None)
            os.environ.update(
                {
                    "AWS_ENDPOINT_URL_S3": cls.endpoint,
                    "AWS_ACCESS_KEY_ID": "testing-access-key",
                    "AWS_SECRET_ACCESS_KEY": "testing-secret-key",
                    "AWS_DEFAULT_REGION": "us-east-1",
                    # no real profile or credentials file can interfere
                    "AWS_CONFIG_FILE": os.devnull,
                    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                }
            )
        cls.users += 1
        return cls.endpoint

    @classmethod
    def release(cls) -> None:
        cls.users -= 1
        if cls.users:
            return
        for key, value in cls.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        cls.server.stop()
        cls.server = None


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """Start moto's S3 server on a free local port and point boto3 at it; yield the endpoint URL.

    The AWS environment variables are set for the whole session (boto3 reads them when a client is
    created, including the one inside dagster-aws' ``S3Resource``) and restored afterwards.
    """
    endpoint = _SharedServer.acquire()
    try:
        yield endpoint
    finally:
        _SharedServer.release()


@pytest.fixture
def s3_bucket(s3_server: str) -> Iterator[str]:
    """A fresh, empty bucket per test, emptied and removed afterwards (moto keeps data in RAM)."""
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    name = f"twinme-test-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    try:
        yield name
    finally:
        for upload in client.list_multipart_uploads(Bucket=name).get("Uploads", []):
            client.abort_multipart_upload(
                Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"]
            )
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=obj["Key"])
        client.delete_bucket(Bucket=name)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> BackupStore:
    """The same tests against both backends: a local directory, and S3 with 5 MiB parts."""
    if request.param == "local":
        return BackupStore(url=f"file://{tmp_path}/backups")
    bucket = request.getfixturevalue("s3_bucket")
    return BackupStore(url=f"s3://{bucket}/nightly", multipart_part_size_mb=5)
