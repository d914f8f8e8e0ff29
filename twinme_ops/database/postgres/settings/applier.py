"""One declared state, two appliers: how the declared settings reach the server.

The desired values are the same everywhere (:mod:`.declared`); what changes is who writes them:

- ``alter-system`` (locally, and any server twinme_ops may ``ALTER SYSTEM`` on):
  :func:`~.converge.converge_settings` writes what differs, reloads once, and reports what
  waits for a restart; it never restarts the server.
- ``cloudnative-pg`` (production, deploy/postgres/): CloudNativePG refuses ``ALTER SYSTEM``, so
  :func:`~.cnpg.converge_cluster_settings` patches the Cluster's ``spec.postgresql.parameters``
  and waits until the operator has rolled the change out (a rolling restart when a setting needs
  one).

Chosen by ``TWINME_POSTGRES_APPLIER`` (``defs/resources.py``: ``cloudnative-pg`` in production,
``alter-system`` elsewhere). The drift check is the same for both: ``pg_settings`` against the
declared state.
"""

from __future__ import annotations

from collections.abc import Mapping

import dagster as dg
from pydantic import Field

from twinme_ops.common.log import Log
from twinme_ops.database.convergence import ConvergeReport
from twinme_ops.database.postgres.settings.cnpg import Connect, converge_cluster_settings
from twinme_ops.database.postgres.settings.cnpg_api import ClusterTarget
from twinme_ops.database.postgres.settings.converge import converge_settings

APPLIERS: tuple[str, ...] = ("alter-system", "cloudnative-pg")
DEFAULT_ROLLOUT_TIMEOUT_S = 1800.0


class SettingsApplier(dg.ConfigurableResource):
    """How ``postgres_settings`` writes the declared settings: ALTER SYSTEM, or the
    CloudNativePG Cluster's spec (``TWINME_POSTGRES_APPLIER``)."""

    method: str = Field(
        default="alter-system",
        description="alter-system (ALTER SYSTEM + reload) or cloudnative-pg (patch the "
        "Cluster's spec.postgresql.parameters, wait for the operator's rollout).",
    )
    cluster: str = Field(default="twinme-db", description="cloudnative-pg: the Cluster's name.")
    namespace: str = Field(
        default="twinme-postgres", description="cloudnative-pg: the Cluster's namespace."
    )
    kubeconfig: str = Field(
        default="",
        description="cloudnative-pg: kubeconfig path. Empty: $KUBECONFIG, else the pod's "
        "service account.",
    )
    rollout_timeout_s: float = Field(
        default=DEFAULT_ROLLOUT_TIMEOUT_S,
        description="cloudnative-pg: how long to wait for the operator to apply the settings "
        "(a rolling restart of every instance when a setting needs one).",
    )
    poll_interval_s: float = Field(
        default=5.0, description="cloudnative-pg: seconds between two looks at the rollout."
    )

    def check_method(self) -> str:
        """The configured method, or an error naming the choices and the fix."""
        if self.method not in APPLIERS:
            raise ValueError(
                f"settings applier {self.method!r} is not one of {', '.join(APPLIERS)}. Fix: "
                "TWINME_POSTGRES_APPLIER (cloudnative-pg where PostgreSQL runs on "
                "CloudNativePG, alter-system elsewhere)"
            )
        return self.method

    def target(self) -> ClusterTarget:
        return ClusterTarget(self.cluster, self.namespace, self.kubeconfig)

    def apply(self, connect: Connect, desired: Mapping[str, str], log: Log) -> ConvergeReport:
        """Write ``desired`` the configured way; ``connect`` opens an autocommit connection to
        the server being tuned (the CloudNativePG path opens several: a rollout restarts it)."""
        if self.check_method() == "alter-system":
            with connect() as conn:
                return converge_settings(conn, desired, log)
        return converge_cluster_settings(
            self.target(),
            connect,
            desired,
            log,
            timeout_s=self.rollout_timeout_s,
            poll_interval_s=self.poll_interval_s,
        )


__all__ = ["APPLIERS", "DEFAULT_ROLLOUT_TIMEOUT_S", "SettingsApplier"]
