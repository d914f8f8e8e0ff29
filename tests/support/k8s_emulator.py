"""A Kubernetes API for tests: kmock's KubernetesEmulator on 127.0.0.1, and a deployment controller.

No real API server can be installed here, so the tests speak HTTP to kmock's emulator, an
in-memory object store with Kubernetes URLs, served by kmock's own aiohttp ``Server`` in an event
loop on a background thread. The code under test reaches it through a kubeconfig file and the
official ``kubernetes`` client, exactly as it reaches a cluster.

What the emulator lacks, and what this module adds:

- **Generation bookkeeping.** kmock keeps no ``metadata.generation`` (nor uid, resourceVersion,
  defaults). :class:`GenerationTrackingEmulator` sets ``generation: 1`` on create and adds 1
  whenever a write to the Deployment itself (not its ``/status``) changes ``spec``, inside the
  same request, as the API server does. Doing it in the controller instead would leave a window
  where a client reads the new spec with the old generation and sees a finished rollout.
  Writes to Deployments are serialised so that the comparison sees exactly one change. The PATCH
  response itself still shows the previous generation (kmock renders it before the bump).
- **Controllers.** kmock runs none: :class:`DeploymentController` polls the Deployment through
  the official client in a thread and writes ``status`` through the ``/status`` subresource with
  JSON merge patches, like the deployment controller, in the mode the test chooses.
- **Patch semantics.** kmock merges a dict body recursively (``null`` deletes a key, lists are
  replaced) and applies a list body as an RFC 6902 JSON patch, whatever the Content-Type: a JSON
  merge patch and a JSON patch behave as on a real API server, a strategic merge patch does not.
- **Resource discovery.** ``apps/v1/deployments`` is declared in ``km.resources`` (with its
  ``status`` and ``scale`` subresources); undeclared resources answer 404 on list and discovery.
- **resourceVersion of Secrets.** Each write of a Secret gets a new ``metadata.resourceVersion``
  (a counter), and a write that carries a ``resourceVersion`` other than the stored one answers
  409 Conflict before anything is stored, as the API server's optimistic concurrency does (the
  JWT key rotation relies on it). Other kinds keep none, as in kmock.
- Label selectors are ignored by kmock; nothing here lists by label.
- **RBAC.** kmock stores a write even when a reaction answers it with an error; a test that needs
  a refused request appends to ``denials`` (run in the loop), which answers before anything is
  stored.

kmock's ``Server`` also patches aiohttp's resolver for its own host and port while it runs; the
patches must be undone in reverse order, so emulators are function-scoped and never overlap.
"""

from __future__ import annotations

import abc
import asyncio
import copy
import hashlib
import itertools
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

import aiohttp.web
import attrs
import kmock
import pytest
import yaml
from kmock import KubernetesError
from kubernetes import client, config

NAMESPACE = "twinme-prod"
DEPLOYMENT = "twinme-api"
CONTAINER = "api"
INITIAL_IMAGE = "registry.twinme.test/twinme-api@sha256:" + "1" * 64
DEPLOYMENTS = kmock.resource("apps/v1/deployments")
SECRETS = kmock.resource("v1/secrets")

ControllerMode = Literal["healthy", "stuck", "slow"]


@attrs.define(kw_only=True)
class GenerationTrackingEmulator(kmock.KubernetesEmulator):
    """kmock's emulator plus the API server's ``metadata.generation`` rules for Deployments."""

    _writes: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    _versions: itertools.count[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    # what RBAC refuses: each returns the error to answer a request with, or None. Checked before
    # anything is stored (kmock itself stores a write even when a reaction answers it with 403)
    denials: list[Callable[[kmock.Request], KubernetesError | None]] = attrs.field(
        factory=list, init=False
    )

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        for deny in self.denials:
            error = deny(request)
            if error is not None:
                raise error
        is_write = request.action in (kmock.action.CREATE, kmock.action.UPDATE)
        if request.resource == SECRETS and is_write:
            async with self._writes:
                self._check_resource_version(request)
                return await super()._handle(request)
        if request.resource == DEPLOYMENTS and is_write:
            # history[-2] must be this request's "before": no other write may interleave
            async with self._writes:
                return await super()._handle(request)
        return await super()._handle(request)

    def _check_resource_version(self, request: kmock.Request) -> None:
        """409 when an update names a resourceVersion the stored Secret no longer has."""
        if request.action != kmock.action.UPDATE or not isinstance(request.data, dict):
            return
        wanted = (request.data.get("metadata") or {}).get("resourceVersion")
        key: Any = (SECRETS, request.namespace, request.name)  # kmock's key type is looser
        if wanted is None or key not in self.objects:
            return
        stored = self.objects[key].raw.get("metadata", {}).get("resourceVersion")
        if str(wanted) != str(stored):
            raise KubernetesError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on secrets "{request.name}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )

    def _new_resource_version(self, namespace: str | None, name: str | None) -> None:
        key: Any = (SECRETS, namespace, name)
        obj = self.objects[key]
        metadata = copy.deepcopy(obj.raw.get("metadata", {}))
        obj["metadata"] = {**metadata, "resourceVersion": str(next(self._versions))}

    async def _serve_create(self, request: kmock.Request) -> kmock.Payload:
        if request.resource == SECRETS:
            meta = request.data.get("metadata", {})
            self._new_resource_version(request.namespace or meta.get("namespace"), meta["name"])
        if request.resource == DEPLOYMENTS:
            meta = request.data.get("metadata", {})
            obj = self.objects[
                DEPLOYMENTS, request.namespace or meta.get("namespace"), meta["name"]
            ]
            # .raw: plain dicts (nested values read through the object are kmock views)
            obj["metadata"] = {**copy.deepcopy(obj.raw.get("metadata", {})), "generation": 1}
        return await super()._serve_create(request)

    async def _serve_update(self, request: kmock.Request) -> kmock.Payload:
        if request.resource == SECRETS:
            self._new_resource_version(request.namespace, request.name)
        if request.resource == DEPLOYMENTS and request.subresource != "status":
            assert request.name is not None  # an UPDATE always names its object
            obj = self.objects[DEPLOYMENTS, request.namespace, request.name]
            versions = [v for v in obj.history if v is not None]
            if len(versions) >= 2:
                before, after = versions[-2].raw, versions[-1].raw
                if before.get("spec") != after.get("spec"):
                    generation = int(before.get("metadata", {}).get("generation") or 1) + 1
                    metadata = copy.deepcopy(after.get("metadata", {}))
                    obj["metadata"] = {**metadata, "generation": generation}
        return await super()._serve_update(request)


class EmulatorHandle:
    """A :class:`GenerationTrackingEmulator` served over HTTP on 127.0.0.1 from its own thread."""

    def __init__(self) -> None:
        self.url = ""
        self.emulator: GenerationTrackingEmulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kmock-apiserver", daemon=True)

    def start(self) -> EmulatorHandle:
        """Start serving; returns once the port is bound."""
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the kmock emulator did not start within 15 s")
        if self._failure is not None:
            raise RuntimeError(f"the kmock emulator failed to start: {self._failure!r}")
        return self

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported by start() or stop()
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with GenerationTrackingEmulator() as km, kmock.Server(km) as server:
            km.resources[DEPLOYMENTS] = kmock.ResourceInfo(
                kind="Deployment",
                singular="deployment",
                namespaced=True,
                shortnames={"deploy"},
                verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
                subresources={"status", "scale"},
            )
            self.emulator = km
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def run_in_loop(self, fn: Callable[[GenerationTrackingEmulator], Any]) -> Any:
        """Call ``fn(emulator)`` on the emulator's loop (its state is not thread-safe)."""
        assert self._loop is not None and self.emulator is not None
        emulator = self.emulator

        async def call() -> Any:
            return fn(emulator)

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(10)

    def server_errors(self) -> list[Exception]:
        """Exceptions raised while serving, other than the Kubernetes errors it answers with."""
        errors: list[Exception] = self.run_in_loop(lambda km: list(km.errors))
        return [e for e in errors if not isinstance(e, KubernetesError)]

    def stop(self) -> None:
        """Stop serving and join the thread."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(15)
        if self._thread.is_alive():
            raise RuntimeError("the kmock emulator thread did not stop within 15 s")
        if self._failure is not None:
            raise RuntimeError(f"the kmock emulator failed: {self._failure!r}")


def write_kubeconfig(path: Path, server_url: str, token: str, namespace: str = NAMESPACE) -> Path:
    """A kubeconfig with one context: plain HTTP to ``server_url``, a dummy bearer token."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kmock", "cluster": {"server": server_url}}],
        "users": [{"name": "kmock-user", "user": {"token": token}}],
        "contexts": [
            {
                "name": "kmock",
                "context": {"cluster": "kmock", "user": "kmock-user", "namespace": namespace},
            }
        ],
        "current-context": "kmock",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def apps_api(kubeconfig: Path) -> client.AppsV1Api:
    """An official-client ``AppsV1Api`` for ``kubeconfig`` (not the global default config)."""
    api_client = config.new_client_from_config(config_file=str(kubeconfig), persist_config=False)
    return client.AppsV1Api(api_client)


def create_deployment(
    kubeconfig: Path,
    *,
    namespace: str = NAMESPACE,
    name: str = DEPLOYMENT,
    image: str = INITIAL_IMAGE,
    replicas: int = 3,
) -> None:
    """Create the API Deployment (an ``api`` container and a ``log-shipper`` sidecar)."""
    labels = {"app": name}
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {"name": CONTAINER, "image": image, "ports": [{"containerPort": 3000}]},
                        {"name": "log-shipper", "image": "registry.twinme.test/vector:0.40.0"},
                    ]
                },
            },
        },
    }
    apps_api(kubeconfig).create_namespaced_deployment(namespace, body)


@dataclass
class _Rollout:
    generation: int
    desired: int
    mode: ControllerMode
    started: float
    settled: bool = False


class ControllerLoop(abc.ABC):
    """A fake Kubernetes controller: :meth:`_reconcile` every ``interval_s`` in a thread.

    ``errors`` holds what the loop raised (it stops at the first); :meth:`stop` raises it.
    """

    label = "controller"

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.errors: list[BaseException] = []
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=self.label, daemon=True)

    @abc.abstractmethod
    def _reconcile(self) -> None: ...

    def start(self) -> Self:
        """Start reconciling in the background."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the loop; raise what it raised, if anything."""
        self._stopping.set()
        self._thread.join(10)
        if self.errors:
            raise RuntimeError(f"the {self.label} failed: {self.errors[0]!r}")

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._reconcile()
            except Exception as exc:  # surfaced by stop()
                self.errors.append(exc)
                return
            self._stopping.wait(self.interval_s)


class DeploymentController(ControllerLoop):
    """Plays the deployment controller for one Deployment, in a thread, via the official client.

    On each new ``metadata.generation`` it writes a "progressing" status at once:
    ``observedGeneration`` = generation, new pods created (``updatedReplicas`` = desired) while
    the old ones still run (``replicas`` = old + new after a template change) and only the old
    ones are available. ``delay_s`` later, depending on :attr:`mode` at the time the generation
    was seen:

    - ``"healthy"``: every desired replica updated, ready and available, old pods gone;
      ``Progressing`` reason ``NewReplicaSetAvailable``;
    - ``"stuck"``: ``Progressing=False`` with reason ``ProgressDeadlineExceeded``;
    - ``"slow"``: nothing more, ever.

    Zero counters are removed rather than written as 0, as the API server omits them.
    ``seen`` lists each ``(generation, mode)`` handled; ``errors`` what the loop raised.
    """

    label = "deployment controller"

    def __init__(
        self,
        kubeconfig: Path,
        *,
        namespace: str = NAMESPACE,
        name: str = DEPLOYMENT,
        mode: ControllerMode = "healthy",
        delay_s: float = 0.3,
        interval_s: float = 0.02,
    ) -> None:
        super().__init__(interval_s)
        self.namespace = namespace
        self.name = name
        self.mode: ControllerMode = mode
        self.delay_s = delay_s
        self.seen: list[tuple[int, ControllerMode]] = []
        self._api = apps_api(kubeconfig)
        self._template: Any = None
        self._rollout: _Rollout | None = None

    def wait_settled(self, timeout_s: float = 10) -> None:
        """Block until the latest generation's rollout has reached its final state."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rollout = self._rollout
            if rollout is not None and rollout.settled:
                return
            time.sleep(self.interval_s)
        raise TimeoutError(f"the controller did not settle within {timeout_s}s: {self._rollout}")

    def _rs_name(self) -> str:
        digest = hashlib.sha256(json.dumps(self._template, sort_keys=True).encode()).hexdigest()
        return f"{self.name}-{digest[:10]}"

    def _conditions(
        self, available: bool, progressing: tuple[str, str, str]
    ) -> list[dict[str, Any]]:
        now = "2026-01-01T00:00:00Z"
        status, reason, message = progressing
        return [
            {
                "type": "Available",
                "status": "True" if available else "False",
                "reason": "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                "message": "Deployment has minimum availability."
                if available
                else "Deployment does not have minimum availability.",
                "lastUpdateTime": now,
                "lastTransitionTime": now,
            },
            {
                "type": "Progressing",
                "status": status,
                "reason": reason,
                "message": message,
                "lastUpdateTime": now,
                "lastTransitionTime": now,
            },
        ]

    def _write_status(self, generation: int, counts: dict[str, int], **conditions: Any) -> None:
        status: dict[str, Any] = {"observedGeneration": generation}
        # the API server omits zero counters; null removes them in a merge patch
        status.update({key: (value or None) for key, value in counts.items()})
        status["conditions"] = self._conditions(**conditions)
        self._api.patch_namespaced_deployment_status(
            self.name,
            self.namespace,
            {"status": status},
            _content_type="application/merge-patch+json",
        )

    def _reconcile(self) -> None:
        dep: Any = self._api.read_namespaced_deployment(self.name, self.namespace)
        generation = int(dep.metadata.generation or 1)
        desired = 1 if dep.spec.replicas is None else int(dep.spec.replicas)
        now = time.monotonic()
        rollout = self._rollout
        if rollout is None or rollout.generation != generation:
            template = self._api.api_client.sanitize_for_serialization(dep.spec.template)
            template_changed = template != self._template
            self._template = template
            old_total = int((dep.status and dep.status.replicas) or 0)
            old_available = int((dep.status and dep.status.available_replicas) or 0)
            mode = self.mode
            self._rollout = _Rollout(generation, desired, mode, now)
            self.seen.append((generation, mode))
            if template_changed:
                total, available = old_total + desired, old_available
            else:
                total, available = max(old_total, desired), min(old_available, desired)
            self._write_status(
                generation,
                {
                    "replicas": total,
                    "updatedReplicas": desired,
                    "readyReplicas": available,
                    "availableReplicas": available,
                },
                available=available > 0 or desired == 0,
                progressing=(
                    "True",
                    "ReplicaSetUpdated",
                    f'ReplicaSet "{self._rs_name()}" is progressing.',
                ),
            )
            return
        if rollout.settled or now - rollout.started < self.delay_s:
            return
        rollout.settled = True
        if rollout.mode == "healthy":
            self._write_status(
                generation,
                {
                    "replicas": rollout.desired,
                    "updatedReplicas": rollout.desired,
                    "readyReplicas": rollout.desired,
                    "availableReplicas": rollout.desired,
                },
                available=True,
                progressing=(
                    "True",
                    "NewReplicaSetAvailable",
                    f'ReplicaSet "{self._rs_name()}" has successfully progressed.',
                ),
            )
        elif rollout.mode == "stuck":
            status = dep.status
            self._write_status(
                generation,
                {
                    "replicas": int(status.replicas or 0),
                    "updatedReplicas": int(status.updated_replicas or 0),
                    "readyReplicas": int(status.ready_replicas or 0),
                    "availableReplicas": int(status.available_replicas or 0),
                },
                available=bool(status.available_replicas),
                progressing=(
                    "False",
                    "ProgressDeadlineExceeded",
                    f'ReplicaSet "{self._rs_name()}" has timed out progressing.',
                ),
            )
        # "slow": the new pods never become available


@contextmanager
def stuck_once(controller: DeploymentController) -> Iterator[None]:
    """The next rollout misses its deadline; after that the controller is healthy again, so the
    rollback to the previous image completes (what a bad release followed by a rollback sees)."""
    controller.mode = "stuck"
    stop = threading.Event()

    def heal_once_the_new_rollout_is_stuck() -> None:
        while not stop.wait(0.05):
            if any(mode == "stuck" for _, mode in controller.seen):
                controller.mode = "healthy"
                return

    watcher = threading.Thread(target=heal_once_the_new_rollout_is_stuck, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        stop.set()
        watcher.join(5)


@pytest.fixture
def k8s_emulator(tmp_path: Path) -> Iterator[tuple[Path, EmulatorHandle]]:
    """kmock's Kubernetes emulator on 127.0.0.1 and a kubeconfig pointing at it.

    The kubeconfig's token is a random dummy (kmock checks none), handy to assert that no
    credential reaches a log line or an error. Fails the test if the emulator itself crashed
    on a request (rather than answering with a Kubernetes error).
    """
    handle = EmulatorHandle().start()
    token = f"kmock-dummy-token-{secrets.token_hex(8)}"
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig.yaml", handle.url, token)
    try:
        yield kubeconfig, handle
        errors = handle.server_errors()
        assert not errors, f"the emulator failed on requests: {errors!r}"
    finally:
        handle.stop()


@pytest.fixture
def deployment_controller(
    k8s_emulator: tuple[Path, EmulatorHandle],
) -> Iterator[DeploymentController]:
    """``twinme-prod/twinme-api`` (3 replicas) created, rolled out, and a healthy controller."""
    kubeconfig, _ = k8s_emulator
    create_deployment(kubeconfig)
    controller = DeploymentController(kubeconfig).start()
    try:
        controller.wait_settled()
        yield controller
    finally:
        controller.stop()
