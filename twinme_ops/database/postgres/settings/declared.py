"""PostgreSQL settings, declared: PGTune's formulas applied to the declared instance.

The values come from the declared instance (:class:`InstanceResources`) through PGTune's "web
application" formulas, so another instance size gets consistent values, and
:data:`SPEC_INSTANCE` gives exactly the specification's numbers. ``shared_preload_libraries`` is
never managed (:func:`refuse_unmanaged`): pgvector does not need it (the spec's
``shared_preload_libraries = 'vector'`` is a trap).

No server and no Dagster in this module: plain functions the tests call directly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

STORAGE_TYPES = ("ssd", "hdd", "san")
# Never managed: a wrong value keeps the server from starting, and pgvector does not need it.
UNMANAGED_SETTINGS = frozenset({"shared_preload_libraries"})

_KB = 1
_MB = 1024 * _KB
_GB = 1024 * _MB


@dataclass(frozen=True)
class InstanceResources:
    """What the PostgreSQL instance has: the inputs of the tuning formulas.

    ``storage`` is ``ssd``, ``hdd`` or ``san`` (it sets ``random_page_cost`` and
    ``effective_io_concurrency``); ``max_connections`` is what the application plans for.
    """

    memory_mb: int
    cpus: int
    storage: str
    max_connections: int

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.memory_mb, int) or self.memory_mb < 256:
            problems.append(f"memory_mb must be an integer >= 256 (MiB), got {self.memory_mb!r}")
        if not isinstance(self.cpus, int) or self.cpus < 1:
            problems.append(f"cpus must be an integer >= 1, got {self.cpus!r}")
        if self.storage not in STORAGE_TYPES:
            problems.append(
                f"storage must be one of {', '.join(STORAGE_TYPES)}, got {self.storage!r}"
            )
        if not isinstance(self.max_connections, int) or not 1 <= self.max_connections <= 262_143:
            problems.append(
                f"max_connections must be an integer in 1..262143, got {self.max_connections!r}"
            )
        if problems:
            raise ValueError("invalid instance resources: " + "; ".join(problems))


SPEC_INSTANCE = InstanceResources(memory_mb=1024, cpus=2, storage="ssd", max_connections=200)
"""The instance the specification's values were written for: 1 GiB RAM, 2 vCPUs, SSD, 200
connections (the size of an AWS db.t4g.micro). 1 GiB is the only size for which PGTune's
shared_buffers = RAM/4 and maintenance_work_mem = RAM/16 give the spec's 256MB and 64MB; the
CPU count does not appear in the spec's values (2 keeps PostgreSQL's worker defaults)."""

SPEC_LOGGING: dict[str, str] = {
    "log_statement": "mod",
    "log_min_duration_statement": "1000ms",
    "log_checkpoints": "on",
    "log_connections": "on",
    "log_disconnections": "on",
    "log_lock_waits": "on",
}


def _fmt_kb(kb: int) -> str:
    """PostgreSQL memory syntax, in the largest unit that divides exactly (as PGTune prints)."""
    if kb % _GB == 0:
        return f"{kb // _GB}GB"
    if kb % _MB == 0:
        return f"{kb // _MB}MB"
    return f"{kb}kB"


def refuse_unmanaged(names: Iterable[str]) -> None:
    """Raise ValueError when ``names`` holds a setting this tool never manages."""
    bad = sorted(n for n in names if n.lower() in UNMANAGED_SETTINGS)
    if bad:
        raise ValueError(
            f"{', '.join(bad)} is not managed by this tool: pgvector does not need it, and a "
            "wrong value keeps the server from starting. Fix: leave it out of the desired "
            "settings, and set it in the server's own configuration (or the managed service's "
            "parameter group) if another extension needs it."
        )


def desired_settings(
    res: InstanceResources, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Server settings for ``res`` (PGTune, "web application" profile), then ``overrides``.

    Formulas (RAM in kB; PGTune = github.com/le0pard/pgtune, configurationSlice.js):

    - ``max_connections`` = the declared value.
    - ``shared_buffers`` = RAM/4; ``maintenance_work_mem`` = RAM/16, capped at 8GB (PGTune).
    - ``effective_cache_size`` = RAM. **Not PGTune** (3/4 RAM, 768MB for the spec's instance):
      the spec asks 1GB on a 1 GiB instance, and no instance size gives both RAM/4 = 256MB and
      3/4 RAM = 1GB. It is a planner estimate of shared_buffers plus the OS page cache, which
      on a dedicated database server approaches all of RAM; nothing is allocated from it.
    - ``wal_buffers`` = shared_buffers/16, capped at 16MB (one WAL segment), at least 32kB.
      **Not PGTune** (3% of shared_buffers, i.e. 7864kB for 256MB; 16MB only from 534MB of
      shared_buffers): the spec asks 16MB with 256MB of shared_buffers. It is twice
      PostgreSQL's own auto-tuning (shared_buffers/32, same 16MB cap) and costs at most 16MB.
    - ``checkpoint_completion_target`` 0.9, ``default_statistics_target`` 100,
      ``min_wal_size`` 1GB, ``max_wal_size`` 4GB (PGTune, web).
    - ``random_page_cost``: hdd 4, ssd/san 1.1; ``effective_io_concurrency``: hdd 2, ssd 200,
      san 300 (PGTune, Linux).
    - Parallelism from CPUs: ``max_parallel_workers`` = CPUs, ``max_parallel_workers_per_gather``
      and ``max_parallel_maintenance_workers`` = ceil(CPUs/2) capped at 4 (0 on one CPU),
      ``max_worker_processes`` = max(8, CPUs). PGTune sets these only from 4 CPUs, with
      ``max_worker_processes`` = CPUs; we keep PostgreSQL's floor of 8 because that pool also
      serves logical replication and extensions' background workers, and changing it needs a
      restart.
    - ``work_mem`` = (RAM - shared_buffers) / ((max_connections + max_worker_processes) * 3),
      at least 4MB (PGTune, web).
    - The spec's logging: ``log_statement`` mod, ``log_min_duration_statement`` 1000ms,
      ``log_checkpoints``, ``log_connections``, ``log_disconnections``, ``log_lock_waits`` on.

    ``overrides`` win over the formulas. ``shared_preload_libraries`` is never part of the
    result and is refused as an override: pgvector does not need it.
    """
    ram_kb = res.memory_mb * _MB
    shared_buffers = ram_kb // 4
    max_worker_processes = max(8, res.cpus)
    per_gather = 0 if res.cpus < 2 else min(4, math.ceil(res.cpus / 2))
    work_mem = (ram_kb - shared_buffers) // ((res.max_connections + max_worker_processes) * 3)
    settings: dict[str, str] = {
        "max_connections": str(res.max_connections),
        "shared_buffers": _fmt_kb(shared_buffers),
        "effective_cache_size": _fmt_kb(ram_kb),
        "maintenance_work_mem": _fmt_kb(min(ram_kb // 16, 8 * _GB)),
        "checkpoint_completion_target": "0.9",
        "wal_buffers": _fmt_kb(max(32, min(16 * _MB, shared_buffers // 16))),
        "default_statistics_target": "100",
        "random_page_cost": "4" if res.storage == "hdd" else "1.1",
        "effective_io_concurrency": {"hdd": "2", "ssd": "200", "san": "300"}[res.storage],
        "work_mem": _fmt_kb(max(4 * _MB, work_mem)),
        "min_wal_size": "1GB",
        "max_wal_size": "4GB",
        "max_worker_processes": str(max_worker_processes),
        "max_parallel_workers": str(res.cpus),
        "max_parallel_workers_per_gather": str(per_gather),
        "max_parallel_maintenance_workers": str(per_gather),
        **SPEC_LOGGING,
    }
    overrides = overrides or {}
    refuse_unmanaged(overrides)
    settings.update((name, str(value)) for name, value in overrides.items())
    return settings


__all__ = [
    "SPEC_INSTANCE",
    "SPEC_LOGGING",
    "STORAGE_TYPES",
    "UNMANAGED_SETTINGS",
    "InstanceResources",
    "desired_settings",
    "refuse_unmanaged",
]
