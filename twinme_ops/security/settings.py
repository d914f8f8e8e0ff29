"""Where the dependency audit looks: the lock files and the advisory databases."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from twinme_ops.security.npm_audit import DEFAULT_NPM_REGISTRY
from twinme_ops.security.python_audit import DEFAULT_OSV_URL

# the repository's lock, or the copy the code location image installed from
# (deploy/dagster/Dockerfile: WORKDIR /opt/twinme-ops, COPY ... ./requirements.lock)
_PYTHON_LOCKS = ("deploy/dagster/requirements.lock", "/opt/twinme-ops/requirements.lock")


class DependencyAuditSettings(dg.ConfigurableResource):
    """The lock files the weekly audit scans and the advisory endpoints it asks."""

    python_lock: str = Field(
        default="",
        description="The hash-pinned requirements of the code location image "
        "(TWINME_AUDIT_PYTHON_LOCK). Empty: deploy/dagster/requirements.lock, else "
        "/opt/twinme-ops/requirements.lock (the image's copy).",
    )
    npm_project: str = Field(
        default="examples/twinme-api",
        description="The API's folder with package.json and package-lock.json "
        "(TWINME_AUDIT_NPM_PROJECT). Without a package-lock.json there, the head of the Git "
        "resource's branch (TWINME_GIT_REMOTE, TWINME_GIT_BRANCH) is checked out and audited.",
    )
    npm_subdir: str = Field(
        default="",
        description="The folder of the API's Git repository holding package-lock.json "
        "(TWINME_AUDIT_NPM_SUBDIR), when the lock is read from Git. Empty: the repository root.",
    )
    osv_url: str = Field(
        default=DEFAULT_OSV_URL,
        description="OSV's query endpoint pip-audit asks (TWINME_AUDIT_OSV_URL): a mirror "
        "speaking the OSV API when the public one is not reachable.",
    )
    npm_registry: str = Field(
        default=DEFAULT_NPM_REGISTRY,
        description="The npm registry whose bulk advisory endpoint npm audit asks "
        "(TWINME_AUDIT_NPM_REGISTRY).",
    )
    timeout_s: int = Field(default=30, description="HTTP timeout of one advisory request.")

    def python_lock_path(self) -> Path:
        """The configured lock, or the first default that exists (the first one if none)."""
        if self.python_lock:
            return Path(self.python_lock)
        found = [Path(p) for p in _PYTHON_LOCKS if Path(p).is_file()]
        return found[0] if found else Path(_PYTHON_LOCKS[0])
