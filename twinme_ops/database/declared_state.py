"""The declared database state that the tuning assets converge to, as one resource."""

from __future__ import annotations

import dagster as dg
from pydantic import Field


class DatabaseTuning(dg.ConfigurableResource):
    """Declared instance resources and choices for PostgreSQL and Redis tuning.

    The defaults describe the instance the specification was written for; set the
    ``TWINME_PG_*`` variables (or this resource's config in the Launchpad) for another one.
    """

    memory_mb: int = Field(default=1024, description="RAM of the PostgreSQL instance, MiB.")
    cpus: int = Field(default=2, description="vCPUs of the PostgreSQL instance.")
    storage: str = Field(default="ssd", description="ssd, hdd or san (random_page_cost, I/O).")
    max_connections: int = Field(default=200, description="max_connections to plan for.")
    setting_overrides: dict[str, str] = Field(
        default_factory=dict, description="Explicit settings that win over the formulas."
    )
    vector_index: str = Field(default="hnsw", description="hnsw (default) or ivfflat.")
    index_lock_timeout: str = Field(default="5s", description="lock_timeout for index builds.")
    index_statement_timeout: str = Field(
        default="30min", description="statement_timeout for each CREATE INDEX CONCURRENTLY."
    )
    partitions_months_ahead: int = Field(
        default=3, description="session_events partitions created ahead of the current month."
    )
    redis_conf_path: str = Field(
        default="", description="Where the rendered Redis config is written (0600)."
    )
