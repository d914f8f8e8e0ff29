"""The security scans' settings from the environment (``TWINME_AUDIT_*``, docs/security-scans.md):
the security part of ``defs/resources.py``'s ``build_resources``."""

import os
from typing import Any

import dagster as dg

from twinme_ops.security.settings import DependencyAuditSettings


def dependency_audit_settings() -> DependencyAuditSettings:
    """Lock files and advisory endpoints of the dependency audit, from TWINME_AUDIT_*.

    The endpoints are passed as ``dg.EnvVar``: a private mirror's URL may carry a token.
    """
    overrides: dict[str, Any] = {
        field: value
        for field, var in (
            ("python_lock", "TWINME_AUDIT_PYTHON_LOCK"),
            ("npm_project", "TWINME_AUDIT_NPM_PROJECT"),
            ("npm_subdir", "TWINME_AUDIT_NPM_SUBDIR"),
        )
        if (value := os.environ.get(var, "").strip())
    }
    for field, var in (
        ("osv_url", "TWINME_AUDIT_OSV_URL"),
        ("npm_registry", "TWINME_AUDIT_NPM_REGISTRY"),
    ):
        if os.environ.get(var, "").strip():
            overrides[field] = dg.EnvVar(var)
    return DependencyAuditSettings(**overrides)
