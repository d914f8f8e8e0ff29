"""A Job controller, admission and a kubelet on kmock, for Jobs whose pods a test really runs.

No API server can run here, so :class:`FakeJobCluster` watches the emulator of
``tests/support/k8s_emulator.py`` through the official client, as the controllers of a cluster do,
and
for every Job of its namespace:

- **admits** its pod template or refuses it the way Pod Security admission and the Job
  controller report it: no pod, a ``FailedCreate`` Warning event on the Job
  (:func:`restricted_violations` checks the "restricted" profile; ``service_accounts`` lists
  the ServiceAccounts that exist);
- creates the pod (the template's labels plus ``job-name``), ``Pending``, and hands it to
  :meth:`FakeJobCluster.run_pod` in a thread of its own: the subclass is the kubelet and the
  containers. Helpers write what a kubelet writes: container states (init containers, native
  sidecars and containers), the pod's phase, the Job's status and conditions, and log lines,
  served per container by ``GET .../pods/<pod>/log`` (``container=``, ``follow=true`` streams
  until the container ends, ``tailLines``): kmock has no pod logs, the route is added here;
- when the Job is deleted, deletes its pod (the garbage collector's part), tells the pod's
  thread to stop (:attr:`PodRun.cancelled`) and ends its log streams.

kmock ignores label and field selectors: each test has its own emulator and one Job at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import kmock
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.support.k8s_emulator import ControllerLoop, EmulatorHandle
from tests.support.k8s_jobs import add_job_and_pod_resources

CONFIGMAPS = kmock.resource("v1/configmaps")
EVENTS = kmock.resource("v1/events")
_LOG_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<pod>[^/]+)/log$")
_MERGE = "application/merge-patch+json"
NOW = "2026-01-01T00:00:00Z"
ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral"}
ALLOWED_VOLUMES |= {"persistentVolumeClaim", "projected", "secret"}


def restricted_violations(pod_spec: dict[str, Any]) -> list[str]:
    """What keeps a pod spec (camelCase) out of the "restricted" Pod Security profile."""
    problems: list[str] = []
    pod_ctx = pod_spec.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(flag):
            problems.append(f"{flag}=true")
    for volume in pod_spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"volume {volume['name']} uses {sorted(kinds - ALLOWED_VOLUMES)}")
    containers = [*(pod_spec.get("initContainers") or []), *pod_spec["containers"]]
    for c in containers:
        ctx = c.get("securityContext") or {}
        name = c["name"]
        if ctx.get("privileged"):
            problems.append(f"{name}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation != false")
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{name}: capabilities.drop lacks ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {caps['add']}")
        if not (ctx.get("runAsNonRoot") or pod_ctx.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot != true")
        if ctx.get("runAsUser", pod_ctx.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser=0")
        seccomp = (ctx.get("seccompProfile") or pod_ctx.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile {seccomp}")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{name}: hostPort")
    return problems


def declare_pod_resources(handle: EmulatorHandle, logs: Callable[..., Any]) -> None:
    """Jobs, pods (``status``, ``log``), ConfigMaps and events on the emulator, and the pod log
    route served by ``logs(namespace, pod, container, follow, tail_lines)`` (async generator)."""

    def declare(km: Any) -> None:
        add_job_and_pod_resources(km)
        for res, kind in ((CONFIGMAPS, "ConfigMap"), (EVENTS, "Event")):
            km.resources[res] = kmock.ResourceInfo(
                kind=kind,
                singular=kind.lower(),
                namespaced=True,
                verbs={"create", "delete", "get", "list", "patch", "update"},
            )

        async def pod_log(request: kmock.Request) -> Any:
            match = _LOG_PATH.match(request.url.path)
            assert match is not None
            params = request.params
            follow = str(params.get("follow", "")).lower() == "true"
            tail = int(params["tailLines"]) if params.get("tailLines") else None
            return logs(match["ns"], match["pod"], params.get("container") or "", follow, tail)

        _ = km["get", _LOG_PATH] << pod_log

    handle.run_in_loop(declare)


def api_client(kubeconfig: Path) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig), persist_config=False)


@dataclass
class PodRun:
    """One Job's pod as the fake kubelet runs it."""

    job: dict[str, Any]
    pod: str
    phase: str = "Pending"
    logs: dict[str, list[str]] = field(default_factory=dict)
    ended: dict[str, threading.Event] = field(default_factory=dict)
    init_statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def name(self) -> str:
        return self.job["metadata"]["name"]

    @property
    def spec(self) -> dict[str, Any]:
        return self.job["spec"]["template"]["spec"]

    def log(self, container: str, line: str) -> None:
        self.logs.setdefault(container, []).append(line)

    def end_log(self, container: str) -> None:
        self.ended.setdefault(container, threading.Event()).set()


class FakeJobCluster(ControllerLoop):
    """The Job controller, admission and (through :meth:`run_pod`) the kubelet of a namespace."""

    label = "fake job cluster"

    def __init__(
        self,
        kubeconfig: Path,
        handle: EmulatorHandle,
        *,
        namespace: str,
        service_accounts: tuple[str, ...] = ("default",),
        interval_s: float = 0.05,
    ) -> None:
        super().__init__(interval_s)
        self.namespace = namespace
        self.service_accounts = service_accounts
        self.runs: dict[str, PodRun] = {}
        self.refused: dict[str, str] = {}
        self._handle = handle
        api = api_client(kubeconfig)
        self.core, self.batch = client.CoreV1Api(api), client.BatchV1Api(api)
        self._threads: list[threading.Thread] = []
        self._by_pod: dict[str, PodRun] = {}

    # --- what a subclass implements -----------------------------------------------------------

    def run_pod(self, run: PodRun) -> None:
        """Run the pod's containers (called in a thread of its own). Default: nothing."""
        raise NotImplementedError

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        declare_pod_resources(self._handle, self._serve_log)
        return super().start()

    def stop(self) -> None:
        for run in self.runs.values():
            run.cancelled.set()
            for event in run.ended.values():
                event.set()
        for thread in self._threads:
            thread.join(60)
        super().stop()

    def only_run(self) -> PodRun:
        assert len(self.runs) == 1, sorted(self.runs)
        return next(iter(self.runs.values()))

    def jobs(self) -> dict[str, dict[str, Any]]:
        response: Any = self.batch.list_namespaced_job(self.namespace, _preload_content=False)
        return {j["metadata"]["name"]: j for j in json.loads(response.data).get("items") or []}

    def configmaps(self) -> dict[str, dict[str, Any]]:
        response: Any = self.core.list_namespaced_config_map(self.namespace, _preload_content=False)
        return {c["metadata"]["name"]: c for c in json.loads(response.data).get("items") or []}

    def pods(self) -> list[str]:
        response: Any = self.core.list_namespaced_pod(self.namespace, _preload_content=False)
        return [p["metadata"]["name"] for p in json.loads(response.data).get("items") or []]

    # --- the kubelet's writes (for run_pod) -----------------------------------------------------

    def container_state(
        self, run: PodRun, name: str, state: dict[str, Any], *, ready: bool = False
    ) -> None:
        """Record a container's state (``{"running": ...}``...) and write the pod's status."""
        init = any(c["name"] == name for c in run.spec.get("initContainers") or [])
        spec = next(
            c
            for c in [*(run.spec.get("initContainers") or []), *run.spec["containers"]]
            if c["name"] == name
        )
        status = {
            "name": name,
            "image": spec["image"],
            "imageID": "",
            "ready": ready,
            "restartCount": 0,
            "started": "running" in state,
            "state": state,
        }
        (run.init_statuses if init else run.statuses)[name] = status
        self._write_pod(run)

    def pod_phase(self, run: PodRun, phase: str) -> None:
        run.phase = phase
        self._write_pod(run)

    def finish_job(
        self, run: PodRun, *, succeeded: bool, reason: str = "", message: str = ""
    ) -> None:
        if succeeded:
            status: dict[str, Any] = {
                "active": None,
                "succeeded": 1,
                "completionTime": NOW,
                "conditions": [{"type": "Complete", "status": "True"}],
            }
        else:
            condition = {
                "type": "Failed",
                "status": "True",
                "reason": reason or "BackoffLimitExceeded",
                "message": message or "Job has reached the specified backoff limit",
            }
            status = {"active": None, "failed": 1, "conditions": [condition]}
        with _gone_ok():
            self.batch.patch_namespaced_job_status(
                run.name, self.namespace, {"status": status}, _content_type=_MERGE
            )

    def event(self, name: str, involved: dict[str, str], reason: str, message: str) -> None:
        self.core.create_namespaced_event(
            self.namespace,
            {
                "metadata": {"name": name, "namespace": self.namespace},
                "involvedObject": involved,
                "reason": reason,
                "type": "Warning",
                "message": message,
            },
        )

    def _write_pod(self, run: PodRun) -> None:
        status = {
            "phase": run.phase,
            "initContainerStatuses": list(run.init_statuses.values()),
            "containerStatuses": list(run.statuses.values()),
            "conditions": [{"type": "PodScheduled", "status": "True"}],
        }
        with _gone_ok():
            self.core.patch_namespaced_pod_status(
                run.pod, self.namespace, {"status": status}, _content_type=_MERGE
            )

    # --- the pod log route (runs on the emulator's event loop) ----------------------------------

    def _serve_log(
        self, namespace: str, pod: str, container: str, follow: bool, tail: int | None
    ) -> Any:
        run = self._by_pod.get(pod)
        if run is None or namespace != self.namespace or run.cancelled.is_set():
            raise kmock.KubernetesNotFoundError(message=f'pods "{pod}" not found')
        return self._stream(run, container, follow, tail)

    async def _stream(self, run: PodRun, container: str, follow: bool, tail: int | None) -> Any:
        lines = run.logs.setdefault(container, [])
        ended = run.ended.setdefault(container, threading.Event())
        sent = max(0, len(lines) - tail) if tail is not None else 0
        yield b""  # headers go out at once, as the API server's do
        while True:
            new = lines[sent:]
            sent += len(new)
            for line in new:
                yield (line + "\n").encode()
            if not follow or (ended.is_set() and sent == len(lines)):
                return
            await asyncio.sleep(self.interval_s)

    # --- the controllers ------------------------------------------------------------------------

    def _reconcile(self) -> None:
        jobs = self.jobs()
        for name, run in self.runs.items():
            if name not in jobs and not run.cancelled.is_set():
                run.cancelled.set()  # the garbage collector deletes the pods of a deleted Job
                for event in run.ended.values():
                    event.set()
                with _gone_ok():
                    self.core.delete_namespaced_pod(run.pod, self.namespace)
        for name, job in jobs.items():
            if name in self.runs or name in self.refused:
                continue
            why = self._admission(job["spec"]["template"]["spec"])
            if why:
                self.refused[name] = why
                involved = {"kind": "Job", "name": name}
                self.event(f"{name}.create", involved, "FailedCreate", f"Error creating: {why}")
                continue
            self._create_pod(name, job)

    def _admission(self, spec: dict[str, Any]) -> str:
        problems = restricted_violations(spec)
        if problems:
            why = "; ".join(problems)
            return f'pods is forbidden: violates PodSecurity "restricted:latest": {why}'
        account = spec.get("serviceAccountName") or "default"
        if account not in self.service_accounts:
            return (
                f"pods is forbidden: error looking up service account {self.namespace}/"
                f'{account}: serviceaccount "{account}" not found'
            )
        return ""

    def _create_pod(self, name: str, job: dict[str, Any]) -> None:
        template = job["spec"]["template"]
        labels = {**(template["metadata"].get("labels") or {}), "job-name": name}
        pod = f"{name}-{hashlib.sha256(name.encode()).hexdigest()[:5]}"
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod, "namespace": self.namespace, "labels": labels},
            "spec": template["spec"],
            "status": {"phase": "Pending"},
        }
        self.core.create_namespaced_pod(self.namespace, body)
        run = PodRun(job=job, pod=pod)
        self.runs[name] = run
        self._by_pod[pod] = run
        self.batch.patch_namespaced_job_status(
            name, self.namespace, {"status": {"startTime": NOW, "active": 1}}, _content_type=_MERGE
        )
        thread = threading.Thread(target=self._run, args=(run,), name=f"kubelet-{pod}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _run(self, run: PodRun) -> None:
        try:
            self.run_pod(run)
        except Exception as exc:  # surfaced by stop(), like the controller loop's own errors
            self.errors.append(exc)
        finally:
            for container in [c["name"] for c in run.spec["containers"]]:
                run.end_log(container)
            run.done.set()

    def wait_done(self, timeout_s: float = 60) -> PodRun:
        """The only pod run, once its thread has finished."""
        deadline = time.monotonic() + timeout_s
        while not self.runs and time.monotonic() < deadline:
            time.sleep(self.interval_s)
        run = self.only_run()
        assert run.done.wait(max(0.0, deadline - time.monotonic())), "the pod never finished"
        return run


class _gone_ok:
    """Ignore 404s: the Job or pod may be deleted while the fake kubelet still writes."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        return isinstance(exc, ApiException) and exc.status == 404
