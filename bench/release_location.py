"""The code location ``bench/release.py`` runs ``release_job`` from, as a run worker would.

It is the real one (``twinme_ops.definitions``: every definition, resources built from the
environment by ``build_resources``, so production's defaults such as the rollout poll interval),
with two resources replaced for a machine without a TLS registry or npm registry access:

- ``image_builder``: buildah against the bench's plain-HTTP registry, with the offline Node base
  image as ``BASE_IMAGE`` (``TWINME_REGISTRY``, ``TWINME_BENCH_BASE_IMAGE``);
- ``release_settings``: the load test of the direct steps (``TWINME_BENCH_LOAD_USERS``,
  ``TWINME_BENCH_LOAD_S``) instead of the spec's 30 s, so both sides verify alike.

It is a module of its own, importing only what the code location imports, so that a step process
of a multiprocess executor pays what a production step process pays, and not the bench's imports.
"""

from __future__ import annotations

import os

import dagster as dg

from twinme_ops.definitions import build_definitions
from twinme_ops.release.images.local import ImageBuilderResource
from twinme_ops.release.rollback import ReleaseSettings


def bench_definitions() -> dg.Definitions:
    """``build_definitions()`` with the bench's image builder and load test."""
    base = build_definitions()
    users = int(os.environ.get("TWINME_BENCH_LOAD_USERS", "10"))
    resources = {
        **(base.resources or {}),
        "image_builder": ImageBuilderResource(
            registry=os.environ["TWINME_REGISTRY"],
            tls_verify=False,
            build_args={"BASE_IMAGE": os.environ["TWINME_BENCH_BASE_IMAGE"]},
        ),
        "release_settings": ReleaseSettings(
            api_url=os.environ["TWINME_API_URL"],
            load_users=users,
            load_spawn_rate=users,
            load_duration_s=int(os.environ.get("TWINME_BENCH_LOAD_S", "5")),
        ),
    }
    return dg.Definitions(
        assets=base.assets,
        asset_checks=base.asset_checks,
        jobs=base.jobs,
        schedules=base.schedules,
        sensors=base.sensors,
        resources=resources,
    )


def release_job() -> dg.JobDefinition:
    """``release_job`` of :func:`bench_definitions` (the target of ``dg.reconstructable``)."""
    return bench_definitions().resolve_job_def("release_job")
