"""The S3 client of an s3:// BackupStore: dagster-aws' S3Resource, imported on first use.

The store's ``s3`` field is typed as any resource so that loading the definitions does not import
dagster-aws (tests/test_architecture.py); these tests check that it still behaves as the
``S3Resource`` field did: the resource given is the one whose client the store uses, none means a
default ``S3Resource()`` configured by boto3's environment, and anything else is refused with the
fix.
"""

from __future__ import annotations

import boto3
import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource

from twinme_ops.backups.store.base import BackupStore
from twinme_ops.backups.store.s3_client import s3_client_factory


def test_the_given_s3_resource_makes_the_client() -> None:
    s3 = S3Resource(endpoint_url="http://127.0.0.1:9", region_name="eu-west-3")
    client = s3_client_factory(s3)()
    assert client.meta.endpoint_url == "http://127.0.0.1:9"
    assert client.meta.region_name == "eu-west-3"


def test_without_one_a_default_s3_resource_reads_boto3s_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:8")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    factory = s3_client_factory(None)
    assert isinstance(getattr(factory, "__self__", None), S3Resource)
    assert factory().meta.endpoint_url == "http://127.0.0.1:8"


def test_a_store_uses_the_s3_resource_it_was_given(s3_bucket: str) -> None:
    """Through the store, on the moto endpoint: an explicit S3Resource, as tests and operators
    pass it (``BackupStore(url=..., s3=S3Resource(...))``)."""
    store = BackupStore(url=f"s3://{s3_bucket}/given", s3=S3Resource())
    store.put_bytes("s1", "a", b"payload")
    assert store.get_bytes("s1", "a") == b"payload"
    listed = boto3.client("s3").list_objects_v2(Bucket=s3_bucket, Prefix="given/s1/")
    assert [o["Key"] for o in listed.get("Contents", [])] == ["given/s1/a"]


class NotAnS3Resource(dg.ConfigurableResource):
    """A resource without ``get_client``."""

    name: str = "x"


def test_a_resource_without_get_client_is_refused_with_the_fix() -> None:
    store = BackupStore(url="s3://bucket/prefix", s3=NotAnS3Resource())
    with pytest.raises(TypeError, match="dagster-aws' S3Resource") as info:
        store.describe()
    assert "NotAnS3Resource" in str(info.value)
