"""A CloudNativePG operator for tests: it applies a Cluster's parameters to a real PostgreSQL.

No cluster and no operator can run here, so :class:`ClusterOperator` plays CloudNativePG for one
``Cluster`` in kmock's emulator (``k8s_emulator.py``), with an embedded PostgreSQL 18 standing
for its instances. It polls the Cluster through the official client and, when
``spec.postgresql.parameters`` changes, does what the operator and its instance managers do
(pkg/management/postgres/configuration.go, internal/management/controller/
instance_controller.go, internal/controller/cluster_upgrade.go):

- at bootstrap, starts the server with the Cluster's parameters (one restart, as the instances
  start with them); then on every change:
- writes the parameters into ``custom.conf``, the configuration file the operator owns (included
  from ``postgresql.conf``), and reloads: a reload-only change never leaves the phase
  ``Cluster in healthy state``;
- when the server then reports ``pending_restart``: phase ``Applying configuration``, then
  ``Upgrading cluster`` while the replicas restart, then the primary as the spec says:
  ``primaryUpdateStrategy: supervised`` stops at ``Waiting for user action`` (a person restarts
  it: :meth:`ClusterOperator.restart_primary`); otherwise a switchover or an in-place restart
  (``primaryUpdateMethod``), i.e. a real restart of the server, and the healthy phase again.

``allow_alter_system`` is off on that server, as CloudNativePG keeps it (``enableAlterSystem``
false): nothing reaches it through ``ALTER SYSTEM``. Status goes through the ``/status``
subresource with merge patches, as the operator writes it; ``phases`` lists every
(phase, reason) written, ``restarts`` counts the server's restarts. Mode ``"stuck"``: the
operator never acts (a rollout that never ends).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import attrs
import kmock
import pytest
import yaml
from kmock import KubernetesError

from tests.support.cnpg_operator import CLUSTER, NAMESPACE, custom_api
from tests.support.k8s_emulator import ControllerLoop, EmulatorHandle
from twinme_ops.database.postgres.settings.cnpg import HEALTHY
from twinme_ops.database.postgres.settings.cnpg_api import GROUP, PLURAL, VERSION
from twinme_ops.scratch.postgres import PostgresServer

REPO = Path(__file__).resolve().parents[2]
CLUSTER_MANIFEST = REPO / "deploy" / "postgres" / "30-cluster.yaml"
CLUSTERS = kmock.resource(f"{GROUP}/{VERSION}/{PLURAL}")
# the file CloudNativePG writes the parameters into (constants.PostgresqlCustomConfigurationFile)
CUSTOM_CONF = "custom.conf"
APPLYING = ("Applying configuration", "PostgreSQL configuration changed")
WAITING_FOR_USER = ("Waiting for user action", "User must issue a supervised switchover")

ClusterMode = Literal["healthy", "stuck"]


@attrs.frozen
class Forbidden(KubernetesError):
    """What the API server answers a ServiceAccount that lacks a verb (HTTP 403)."""

    status: int = 403
    reason: str = "Forbidden"
    message: str = ""


def forbidden(verb: str) -> Forbidden:
    return Forbidden(
        message=f'clusters.postgresql.cnpg.io "{CLUSTER}" is forbidden: User '
        '"system:serviceaccount:dagster:twinme-ops-runs" cannot '
        f'{verb} resource "clusters" in API group "{GROUP}" in the namespace "{NAMESPACE}"'
    )


def declare_clusters(handle: EmulatorHandle) -> None:
    """Make ``clusters.postgresql.cnpg.io`` known to the emulator (get and /status need it)."""

    def declare(km: Any) -> None:
        km.resources[CLUSTERS] = kmock.ResourceInfo(
            kind="Cluster",
            singular="cluster",
            namespaced=True,
            verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
            subresources={"status", "scale"},
        )

    handle.run_in_loop(declare)


def forbid(handle: EmulatorHandle, verb: Literal["get", "patch"], token: str) -> None:
    """From now on, the API server answers ``verb`` on Clusters with 403, changing nothing, to
    the identity of ``token`` (a ServiceAccount without the Role); everyone else, the operator
    included, is served as before."""
    method = {"get": "GET", "patch": "PATCH"}[verb]

    def deny(request: kmock.Request) -> KubernetesError | None:
        if (
            request.resource == CLUSTERS
            and request.method == method
            and request.headers.get("Authorization") == f"Bearer {token}"
        ):
            return forbidden(verb)
        return None

    handle.run_in_loop(lambda km: km.denials.append(deny))


def spec_patches(handle: EmulatorHandle) -> list[Any]:
    """The bodies of every PATCH of a Cluster itself (not its /status), in order."""

    def collect(km: Any) -> list[Any]:
        return [r.data for r in km["patch", CLUSTERS] if not r.subresource]

    return handle.run_in_loop(collect)


def cluster_manifest() -> dict[str, Any]:
    """deploy/postgres/30-cluster.yaml: the Cluster production applies."""
    (doc,) = [d for d in yaml.safe_load_all(CLUSTER_MANIFEST.read_text()) if d]
    return doc


class ClusterOperator(ControllerLoop):
    """Plays CloudNativePG for one Cluster, whose instances are one embedded PostgreSQL."""

    label = "cloudnative-pg cluster operator"

    def __init__(
        self,
        kubeconfig: Path,
        server: PostgresServer,
        *,
        mode: ClusterMode = "healthy",
        step_s: float = 0.15,
        interval_s: float = 0.05,
    ) -> None:
        super().__init__(interval_s)
        self.api = custom_api(kubeconfig)
        self.server = server
        self.mode: ClusterMode = mode
        self.step_s = step_s
        self.phases: list[tuple[str, str]] = []
        self.restarts = 0
        self.applied: dict[str, str] | None = None
        self._include_custom_conf()

    # -- the instance manager: configuration files --------------------------------------------

    def _include_custom_conf(self) -> None:
        conf = self.server.data_dir / "postgresql.conf"
        text = conf.read_text()
        if CUSTOM_CONF not in text:
            with conf.open("a") as fh:
                fh.write(
                    "\n# CloudNativePG (test operator): enableAlterSystem false\n"
                    "allow_alter_system = off\n"
                    f"include_if_exists = '{CUSTOM_CONF}'\n"
                )
        self._write_custom_conf({})
        with self.server.connect() as conn:
            self._reload(conn)

    def _write_custom_conf(self, parameters: dict[str, str]) -> None:
        path = self.server.data_dir / CUSTOM_CONF
        lines = ["# written by the (test) CloudNativePG operator from spec.postgresql.parameters"]
        lines += [f"{k} = '{str(v).replace(chr(39), chr(39) * 2)}'" for k, v in parameters.items()]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        owner = self.server.data_dir.stat()
        os.chown(tmp, owner.st_uid, owner.st_gid)
        tmp.replace(path)

    @staticmethod
    def _reload(conn: Any) -> None:
        (before,) = conn.execute("SELECT pg_conf_load_time()").fetchone()
        conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            (now,) = conn.execute("SELECT pg_conf_load_time()").fetchone()
            if now > before:
                return
            time.sleep(0.02)
        raise TimeoutError("the server did not reload its configuration within 10 s")

    # -- the operator: status ------------------------------------------------------------------

    def _status(self, phase: str, reason: str) -> None:
        ready = phase == HEALTHY
        status = {
            "phase": phase,
            "phaseReason": reason,
            "instances": 3,
            "readyInstances": 3 if ready else 2,
            "currentPrimary": f"{CLUSTER}-1",
            "targetPrimary": f"{CLUSTER}-1",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": "ClusterIsReady" if ready else "ClusterIsNotReady",
                    "message": "Cluster is Ready" if ready else "Cluster Is Not Ready",
                    "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                }
            ],
        }
        self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, NAMESPACE, PLURAL, CLUSTER, {"status": status}
        )
        self.phases.append((phase, reason))

    def _step(self, phase: str, reason: str) -> None:
        self._status(phase, reason)
        time.sleep(self.step_s)

    def _reconcile(self) -> None:
        cluster: Any = self.api.get_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, CLUSTER
        )
        spec = cluster.get("spec") or {}
        parameters = dict((spec.get("postgresql") or {}).get("parameters") or {})
        if self.mode == "stuck" or parameters == self.applied:
            return
        if self.applied is None:
            # bootstrap: the instances start with the Cluster's parameters, no rolling update
            self.applied = parameters
            self._write_custom_conf(parameters)
            self.restart_primary()
            return
        self.applied = parameters
        self._write_custom_conf(parameters)
        with self.server.connect() as conn:
            self._reload(conn)
            pending = conn.execute("SELECT name FROM pg_settings WHERE pending_restart").fetchall()
        if not pending:
            if (cluster.get("status") or {}).get("phase") != HEALTHY:
                self._status(HEALTHY, "")
            return
        names = ", ".join(sorted(row[0] for row in pending))
        self._step(*APPLYING)
        for replica in (3, 2):
            self._step(
                "Upgrading cluster",
                f"Restarting instance {CLUSTER}-{replica}, because: configuration needs a "
                f"restart to apply some parameters ({names})",
            )
        if spec.get("primaryUpdateStrategy") == "supervised":
            self._status(*WAITING_FOR_USER)
            return
        if spec.get("primaryUpdateMethod") == "switchover":
            self._step("Switchover in progress", f"Switching over to {CLUSTER}-2")
        else:
            self._step("Primary instance is being restarted in-place", "configuration changed")
        self.restart_primary()

    def restart_primary(self) -> None:
        """The primary's restart (the operator's, or ``kubectl cnpg restart`` by a person)."""
        self.server.restart()
        self.restarts += 1
        self._status(HEALTHY, "")

    def wait_for(self, phase: str, timeout_s: float = 30) -> None:
        """Block until the last phase the operator wrote is ``phase``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.errors:
                raise RuntimeError(f"the {self.label} failed: {self.errors[0]!r}")
            if self.phases and self.phases[-1][0] == phase:
                return
            time.sleep(0.02)
        raise TimeoutError(f"the operator did not reach {phase!r} in {timeout_s}s: {self.phases}")


def create_cluster(kubeconfig: Path, changes: dict[str, Any] | None = None) -> dict[str, Any]:
    """Create the Cluster of deploy/postgres/ in the emulator (``changes`` merged into its spec)."""
    body = cluster_manifest()
    body["spec"].update(changes or {})
    custom_api(kubeconfig).create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, body)
    return body


def read_cluster(kubeconfig: Path) -> dict[str, Any]:
    obj: Any = custom_api(kubeconfig).get_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, CLUSTER
    )
    return obj


@pytest.fixture
def cnpg_cluster_factory(
    k8s_emulator: tuple[Path, EmulatorHandle], server_tmp: Path
) -> Iterator[Any]:
    """``start(spec_changes=None, mode="healthy")``: an embedded PostgreSQL 18, the Cluster of
    deploy/postgres/ (with ``spec_changes``) and an operator that has applied its parameters
    (healthy); everything stopped afterwards."""
    kubeconfig, handle = k8s_emulator
    declare_clusters(handle)
    started: list[tuple[ClusterOperator, PostgresServer]] = []

    def start(
        spec_changes: dict[str, Any] | None = None, mode: ClusterMode = "healthy"
    ) -> ClusterOperator:
        server = PostgresServer.start(server_tmp / f"instance-{len(started)}")
        operator = ClusterOperator(kubeconfig, server)
        started.append((operator, server))
        create_cluster(kubeconfig, spec_changes)
        operator.start()
        operator.wait_for(HEALTHY)
        operator.mode = mode
        return operator

    try:
        yield start
    finally:
        for operator, server in started:
            try:
                operator.stop()
            finally:
                server.stop(mode="immediate")
