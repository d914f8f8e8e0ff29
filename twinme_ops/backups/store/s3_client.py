"""The S3 client of an ``s3://`` backup store, made on first use.

:class:`~twinme_ops.backups.store.base.BackupStore` takes its S3 client configuration as a nested
resource (``s3``, dagster-aws' ``S3Resource``). Its field is typed as any Dagster resource, not
as ``S3Resource``: pydantic needs a field's class when the model is defined, and importing
``dagster_aws.s3`` (boto3, botocore and every dagster-aws integration, about 0.6 s) with the
definitions would make every process that loads the code location pay for it, whether or not its
store is on S3. dagster-aws is imported here, when an ``s3://`` store makes its first client.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import dagster as dg


@runtime_checkable
class S3ClientSource(Protocol):
    """What the store needs of its ``s3`` resource: dagster-aws' ``S3Resource.get_client``."""

    def get_client(self) -> Any: ...


def s3_client_factory(s3: dg.ConfigurableResource | None) -> Callable[[], Any]:
    """The function that makes the store's boto3 S3 client: ``s3.get_client``, or, without an
    ``s3`` resource, that of a default ``S3Resource()`` (boto3's environment: ``AWS_*``,
    including ``AWS_ENDPOINT_URL_S3`` for S3-compatible stores)."""
    if s3 is None:
        from dagster_aws.s3 import S3Resource

        s3 = S3Resource()
    if not isinstance(s3, S3ClientSource):
        raise TypeError(
            f"BackupStore.s3 must be dagster-aws' S3Resource (or a resource with get_client()), "
            f"not {type(s3).__name__}"
        )
    return s3.get_client


# S3Resource's settings that say where and how to connect, not who connects
_CONNECTION_FIELDS = ("region_name", "max_attempts", "endpoint_url", "use_ssl", "verify")


def with_profile(s3: dg.ConfigurableResource | None, profile: str) -> dg.ConfigurableResource:
    """An ``S3Resource`` like ``s3`` (same endpoint, region, TLS) that signs with the AWS profile
    ``profile`` instead of ``s3``'s credentials. botocore ignores the ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY`` environment variables when a profile is named, so the writer's
    keys in a pod's environment cannot stand in for the retention role's."""
    from dagster_aws.s3 import S3Resource

    base = s3 if isinstance(s3, S3Resource) else S3Resource()
    settings = {f: getattr(base, f) for f in _CONNECTION_FIELDS if getattr(base, f) is not None}
    return S3Resource(profile_name=profile, **settings)
