"""A build cluster on kmock: the Job controller, the kubelet and kaniko, played in a thread.

No real API server (nor kaniko) can run here, so :class:`FakeBuildCluster` watches the emulator
of ``tests/k8s_emulator.py`` through the official client, as the controllers of a cluster
watch the API server, and for every Job of its namespace:

- creates the Job's pod (the template's labels plus ``job-name``), ``Pending``;
- mounts its volumes like the kubelet: a Secret or ConfigMap volume whose object does not exist
  leaves the pod ``Pending`` with a ``FailedMount`` Warning event, as on a real node;
- starts the container (``Running``, Job ``active: 1``) and writes log lines like kaniko's,
  served by ``GET .../pods/<pod>/log`` (with ``follow=true``, streamed until the container ends:
  kmock has no pod logs, the route is added here);
- ends it the way the scenario says: ``success`` checks the arguments as kaniko does (a
  destination, the digest file, a Dockerfile that exists: mounted from a ConfigMap, or relative
  to the context) and terminates with exit code 0 and the digest as termination message, the Job
  ``succeeded: 1``; ``fail`` is a failed ``RUN`` step (exit 1, reason ``Error``, Job
  ``failed: 1``); ``no-digest`` exits 0 without a message; ``pull-error`` never starts
  (``ErrImagePull``); ``hang`` runs forever; ``deadline`` is stopped by the Job controller
  (``activeDeadlineSeconds``: the container killed, the Job ``Failed``/``DeadlineExceeded``).

A deleted Job takes its pod with it (the garbage collector's part) and ends its log stream.
kmock ignores label and field selectors: each test has its own emulator, with one build.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self

import kmock
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.k8s_emulator import ControllerLoop, EmulatorHandle
from tests.k8s_jobs import add_job_and_pod_resources

BuildMode = Literal["success", "fail", "no-digest", "pull-error", "hang", "deadline"]

CONFIGMAPS = kmock.resource("v1/configmaps")
SECRETS = kmock.resource("v1/secrets")
EVENTS = kmock.resource("v1/events")
_LOG_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<pod>[^/]+)/log$")
_MERGE = "application/merge-patch+json"
_NOW = "2026-01-01T00:00:00Z"
_NO_DOCKERFILE = (
    "error resolving dockerfile path: please provide a valid path to a Dockerfile within the "
    "build context with --dockerfile"
)


def declare_build_resources(handle: EmulatorHandle, logs: Any) -> None:
    """Declare Jobs, pods (with ``status`` and ``log``), ConfigMaps, Secrets and events, and the
    pod log route served from ``logs(namespace, pod, follow)`` (an async generator of bytes)."""

    def declare(km: Any) -> None:
        add_job_and_pod_resources(km)
        for res, kind in ((CONFIGMAPS, "ConfigMap"), (SECRETS, "Secret"), (EVENTS, "Event")):
            km.resources[res] = kmock.ResourceInfo(
                kind=kind,
                singular=kind.lower(),
                namespaced=True,
                verbs={"create", "delete", "get", "list", "patch", "update"},
            )

        async def pod_log(request: kmock.Request) -> Any:
            match = _LOG_PATH.match(request.url.path)
            assert match is not None
            follow = str(request.params.get("follow", "")).lower() == "true"
            return logs(match["ns"], match["pod"], follow)

        # a reaction of its own: kmock would answer the pod itself for its log
        _ = km["get", _LOG_PATH] << pod_log

    handle.run_in_loop(declare)


def api_client(kubeconfig: Path) -> client.ApiClient:
    """An official-client ``ApiClient`` for ``kubeconfig`` (not the global default config)."""
    return config.new_client_from_config(config_file=str(kubeconfig), persist_config=False)


def expected_digest(destination: str, job: str) -> str:
    """The digest the fake kaniko "pushes" for ``destination`` in Job ``job``."""
    return "sha256:" + hashlib.sha256(f"{destination} {job}".encode()).hexdigest()


@dataclass
class BuildRecord:
    """One Job seen by the fake cluster, and what became of it."""

    job: dict[str, Any]
    pod: str
    started: float
    stage: str = "pending"  # pending | running | done
    digest: str = ""
    log: list[str] = field(default_factory=list)
    finished: threading.Event = field(default_factory=threading.Event)

    @property
    def args(self) -> list[str]:
        return list(self.job["spec"]["template"]["spec"]["containers"][0].get("args") or [])

    def arg(self, flag: str) -> str | None:
        """The value of ``--flag=value`` in the kaniko arguments."""
        for arg in self.args:
            if arg.startswith(f"--{flag}="):
                return arg.split("=", 1)[1]
        return None


class FakeBuildCluster(ControllerLoop):
    """Plays the Job controller, the kubelet and kaniko for the Jobs of one namespace."""

    label = "fake build cluster"

    def __init__(
        self,
        kubeconfig: Path,
        handle: EmulatorHandle,
        *,
        namespace: str,
        mode: BuildMode = "success",
        run_s: float = 0.3,
        interval_s: float = 0.02,
    ) -> None:
        super().__init__(interval_s)
        self.namespace = namespace
        self.mode: BuildMode = mode
        self.run_s = run_s
        self.builds: dict[str, BuildRecord] = {}
        self._handle = handle
        api = api_client(kubeconfig)
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self._by_pod: dict[str, BuildRecord] = {}

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        declare_build_resources(self._handle, self._serve_log)
        return super().start()

    def stop(self) -> None:
        for build in self.builds.values():
            build.finished.set()  # log streams still following end
        super().stop()

    def only_build(self) -> BuildRecord:
        """The one build of the test."""
        assert len(self.builds) == 1, sorted(self.builds)
        return next(iter(self.builds.values()))

    def jobs(self) -> dict[str, dict[str, Any]]:
        """The Jobs of the namespace by name, as the API returns them (camelCase JSON)."""
        response: Any = self.batch.list_namespaced_job(self.namespace, _preload_content=False)
        return {j["metadata"]["name"]: j for j in json.loads(response.data).get("items") or []}

    def configmaps(self) -> dict[str, dict[str, Any]]:
        response: Any = self.core.list_namespaced_config_map(self.namespace, _preload_content=False)
        return {c["metadata"]["name"]: c for c in json.loads(response.data).get("items") or []}

    # --- the pod log route (runs on the emulator's event loop) ----------------------------------

    def _serve_log(self, namespace: str, pod: str, follow: bool) -> Any:
        build = self._by_pod.get(pod)
        if build is None or namespace != self.namespace or build.stage == "gone":
            raise kmock.KubernetesNotFoundError(message=f'pods "{pod}" not found')
        return self._stream_log(build, follow)

    async def _stream_log(self, build: BuildRecord, follow: bool) -> Any:
        sent = 0
        yield b""  # headers go out at once, as the API server's do
        while True:
            lines = build.log[sent:]
            sent += len(lines)
            for line in lines:
                yield (line + "\n").encode()
            if not follow or (build.finished.is_set() and sent == len(build.log)):
                return
            await asyncio.sleep(self.interval_s)

    # --- the controllers ------------------------------------------------------------------------

    def _reconcile(self) -> None:
        jobs = self.jobs()
        for name, build in self.builds.items():
            if name not in jobs and build.stage != "gone":
                # the garbage collector deletes the pods of a deleted Job
                build.stage = "gone"
                build.finished.set()
                try:
                    self.core.delete_namespaced_pod(build.pod, self.namespace)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
        for name, job in jobs.items():
            build = self.builds.get(name)
            if build is None:
                self._create_pod(name, job)
            elif build.stage == "pending":
                self._start(build)
            elif build.stage == "running" and self.mode == "hang":
                # a long step: a line now and then, never an end
                if len(build.log) < 4 + (time.monotonic() - build.started) / 0.2:
                    build.log.append(f"INFO[{len(build.log):04d}] npm http fetch GET 200 ...")
            elif build.stage == "running" and time.monotonic() - build.started >= self.run_s:
                self._finish(build)

    def _create_pod(self, name: str, job: dict[str, Any]) -> None:
        template = job["spec"]["template"]
        labels = {
            **(template["metadata"].get("labels") or {}),
            "job-name": name,
            "batch.kubernetes.io/job-name": name,
        }
        pod = f"{name}-{hashlib.sha256(name.encode()).hexdigest()[:5]}"
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod, "namespace": self.namespace, "labels": labels},
            "spec": template["spec"],
            "status": {
                "phase": "Pending",
                "conditions": [{"type": "PodScheduled", "status": "True"}],
            },
        }
        self.core.create_namespaced_pod(self.namespace, body)
        build = BuildRecord(job=job, pod=pod, started=time.monotonic())
        self.builds[name] = build
        self._by_pod[pod] = build
        self._patch_job(name, {"startTime": _NOW, "active": 1})

    def _missing_volume(self, build: BuildRecord) -> str:
        """The kubelet's FailedMount message for a volume whose object is absent, or ''."""
        for volume in build.job["spec"]["template"]["spec"].get("volumes") or []:
            if "secret" in volume:
                kind, name = "secret", volume["secret"]["secretName"]
                read = self.core.read_namespaced_secret
            elif "configMap" in volume:
                kind, name = "configmap", volume["configMap"]["name"]
                read = self.core.read_namespaced_config_map
            else:
                continue
            try:
                read(name, self.namespace)
            except ApiException as exc:
                if exc.status != 404:
                    raise
                return (
                    f'MountVolume.SetUp failed for volume "{volume["name"]}" : {kind} '
                    f'"{name}" not found'
                )
        return ""

    def _start(self, build: BuildRecord) -> None:
        image = build.job["spec"]["template"]["spec"]["containers"][0]["image"]
        missing = self._missing_volume(build)
        if missing:
            self.core.create_namespaced_event(
                self.namespace,
                {
                    "metadata": {"name": f"{build.pod}.mount", "namespace": self.namespace},
                    "involvedObject": {"kind": "Pod", "name": build.pod},
                    "reason": "FailedMount",
                    "type": "Warning",
                    "message": missing,
                },
            )
            build.stage = "stuck"
            return
        if self.mode == "pull-error":
            self._container(
                build,
                "Pending",
                {
                    "waiting": {
                        "reason": "ErrImagePull",
                        "message": f'failed to pull image "{image}": not found',
                    }
                },
                ready=False,
            )
            build.stage = "stuck"
            return
        self._container(build, "Running", {"running": {"startedAt": _NOW}}, ready=True)
        build.log += [
            f"Enumerating objects: 42, done. (cloning {build.arg('context')})",
            "INFO[0001] Retrieving image manifest node:20-alpine",
            "INFO[0002] Executing 0 build triggers",
            'INFO[0003] RUN ["npm", "ci"]',
        ]
        build.stage = "running"
        build.started = time.monotonic()

    def _kaniko_exit(self, build: BuildRecord) -> tuple[int, str, list[str]]:
        """What kaniko does with these arguments: (exit code, termination message, log lines)."""
        destination = build.arg("destination")
        if not destination or build.arg("digest-file") is None:
            return 1, "", ["error: you must provide --destination, or use --no-push"]
        dockerfile = build.arg("dockerfile") or "Dockerfile"
        if dockerfile.startswith("/") and not self._dockerfile_mounted(build, dockerfile):
            return 1, "", [_NO_DOCKERFILE]
        if self.mode == "deadline":
            return 143, "", ["INFO[0030] Taking snapshot of full filesystem..."]
        if self.mode == "fail":
            return (
                1,
                "",
                [
                    "npm ERR! Test failed.  See above for more details.",
                    "error building image: error building stage: failed to execute command: "
                    "waiting for process to exit: exit status 1",
                ],
            )
        digest = expected_digest(destination, build.job["metadata"]["name"])
        build.digest = digest
        repo = destination.rsplit(":", 1)[0]
        lines = [f"INFO[0009] Pushing image to {destination}", f"INFO[0010] Pushed {repo}@{digest}"]
        return 0, ("" if self.mode == "no-digest" else digest), lines

    def _dockerfile_mounted(self, build: BuildRecord, path: str) -> bool:
        spec = build.job["spec"]["template"]["spec"]
        mounts = spec["containers"][0].get("volumeMounts") or []
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        for mount in mounts:
            if mount["mountPath"] != path:
                continue
            volume = volumes.get(mount["name"], {})
            if "configMap" not in volume:
                return False
            configmap: Any = self.core.read_namespaced_config_map(
                volume["configMap"]["name"], self.namespace
            )
            return mount.get("subPath", "") in (configmap.data or {})
        return False

    def _finish(self, build: BuildRecord) -> None:
        code, message, lines = self._kaniko_exit(build)
        build.log += lines
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "message": message or None,
            "startedAt": _NOW,
            "finishedAt": _NOW,
        }
        self._container(
            build, "Succeeded" if code == 0 else "Failed", {"terminated": terminated}, ready=False
        )
        name = build.job["metadata"]["name"]
        if code == 0:
            self._patch_job(
                name,
                {
                    "active": None,
                    "succeeded": 1,
                    "completionTime": _NOW,
                    "conditions": [{"type": "Complete", "status": "True"}],
                },
            )
        else:
            if self.mode == "deadline":
                # as on a real cluster, the Job's condition lands a little after the kill: the
                # builder must wait for it to name the cause
                time.sleep(0.5)
            reason, message = (
                ("DeadlineExceeded", "Job was active longer than specified deadline")
                if self.mode == "deadline"
                else ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
            )
            condition = {"type": "Failed", "status": "True", "reason": reason, "message": message}
            self._patch_job(name, {"active": None, "failed": 1, "conditions": [condition]})
        build.stage = "done"
        build.finished.set()

    def _container(
        self, build: BuildRecord, phase: str, state: dict[str, Any], *, ready: bool
    ) -> None:
        spec = build.job["spec"]["template"]["spec"]["containers"][0]
        status = {
            "phase": phase,
            "containerStatuses": [
                {
                    "name": spec["name"],
                    "image": spec["image"],
                    "imageID": "",
                    "ready": ready,
                    "restartCount": 0,
                    "started": ready,
                    "state": state,
                }
            ],
        }
        self.core.patch_namespaced_pod_status(
            build.pod, self.namespace, {"status": status}, _content_type=_MERGE
        )

    def _patch_job(self, name: str, status: dict[str, Any]) -> None:
        self.batch.patch_namespaced_job_status(
            name, self.namespace, {"status": status}, _content_type=_MERGE
        )
