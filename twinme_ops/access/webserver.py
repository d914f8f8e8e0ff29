"""``twinme-ops-webserver``: dagster-webserver with access control on its own request path.

It takes exactly dagster-webserver's options (the Helm chart's command line works unchanged:
the twinme-ops image puts this program where ``dagster-webserver`` is, deploy/dagster/Dockerfile)
and builds the same ASGI app, wrapped in :class:`~twinme_ops.access.middleware.AccessControl`.

- ``TWINME_ACCESS_POLICY`` names the policy file (deploy/dagster/access.yaml): enforcement on.
- Without it, locally, the webserver is dagster-webserver as it is (what ``dagster dev`` runs,
  on 127.0.0.1), and says so in its log.
- With ``TWINME_ENV=production`` and no policy, it refuses to start: production is never open.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import dagster_webserver.cli as webserver_cli
from dagster_webserver.app import create_app_from_workspace_process_context

from twinme_ops.access.audit import AuditLog
from twinme_ops.access.middleware import AccessControl
from twinme_ops.access.policy import POLICY_ENV, PolicyError, configured_policy

log = logging.getLogger("twinme_ops.access")


def enforcing_app_factory(policy: Any) -> Any:
    """dagster_webserver's app factory, returning the app behind :class:`AccessControl`."""

    def create(workspace_process_context: Any, path_prefix: str = "", *args: Any, **kw: Any):
        app = create_app_from_workspace_process_context(
            workspace_process_context, path_prefix, *args, **kw
        )
        return AccessControl(
            app,
            policy,
            workspace_process_context.instance,
            AuditLog(policy.audit_log or None),
            path_prefix=path_prefix,
        )

    return create


def main(argv: list[str] | None = None) -> None:
    """Run dagster-webserver's command line with the access control in front."""
    try:
        policy = configured_policy()
    except PolicyError as exc:
        sys.exit(f"twinme-ops-webserver: {exc}")
    if policy is None:
        if os.environ.get("TWINME_ENV", "local").strip() == "production":
            sys.exit(
                f"twinme-ops-webserver: TWINME_ENV=production and {POLICY_ENV} is not set: the "
                "production webserver never runs without access control. Fix: mount the "
                "ConfigMap twinme-access and set "
                f"{POLICY_ENV}=/etc/twinme/access.yaml (deploy/dagster/values.yaml)."
            )
        print(
            f"twinme-ops-webserver: {POLICY_ENV} is not set: access control is OFF (local "
            "use only; bind to 127.0.0.1)",
            file=sys.stderr,
        )
    else:
        print(
            f"twinme-ops-webserver: access control ON (issuer {policy.oidc.issuer}, roles "
            f"{', '.join(f'{r}={g}' for r, g in policy.roles.items())})",
            file=sys.stderr,
        )
        # dagster_webserver.cli calls this name to build its app: the one seam it offers
        webserver_cli.create_app_from_workspace_process_context = enforcing_app_factory(policy)  # type: ignore[assignment]
    webserver_cli.cli(args=argv, prog_name="dagster-webserver")


if __name__ == "__main__":
    main()
