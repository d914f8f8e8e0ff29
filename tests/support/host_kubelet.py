"""A kubelet that runs a Job's pod on this host, for real: what both fake kubelets share.

:class:`HostKubelet` is a :class:`~tests.support.k8s_job_cluster.FakeJobCluster` (admission with
the "restricted" Pod Security checks, the Job controller, pod logs on kmock) that runs pods the
way a node does. Two kubelets build on it: ``tests/support/app_tests_kubelet.py`` (app_tests'
pod: native sidecars and their startup probes, one network namespace per pod, stand-ins for the
PostgreSQL, Redis and Node images) and ``tests/support/cluster_build_kubelet.py`` (the image
build's pod: the host's git and buildah, termination messages). What both do the same way:

- **volumes**: an ``emptyDir`` is an empty 0777 directory; a ``configMap`` or ``secret`` volume,
  or a ``projected`` one of those, holds the objects' keys as 0644 files (``items`` honoured,
  ``binaryData`` decoded). One whose object does not exist gives a ``FailedMount`` Warning event
  and leaves the pod ``Pending``, as on a node;
- **images**: one the subclass cannot run (:meth:`HostKubelet.pullable`) waits in
  ``ErrImagePull`` until the Job is deleted;
- **environment**: exactly the spec's ``env``, plus ``envFrom`` Secrets (one that does not exist:
  the container waits in ``CreateContainerConfigError``), plus ``PATH`` (the image's,
  :attr:`HostKubelet.image_path`) and ``HOSTNAME``, as a container runtime adds; ``mountPath``s
  are mapped onto the volume directories in command, args, env and ``workingDir``;
- **security context**: each container runs as the pod's and container's ``runAsUser`` /
  ``runAsGroup`` through ``setpriv`` with ``--no-new-privs``, no supplementary group and every
  capability dropped (inheritable and bounding sets), i.e. what ``allowPrivilegeEscalation:
  false`` and ``drop: [ALL]`` give, which admission requires of every pod;
- **a container's life**: its output is its log as it comes; it runs to its end unless the Job
  is deleted (then SIGTERM, SIGKILL after 5 s); its exit code makes its ``terminated`` state, and
  the main container's makes the pod's phase and the Job's status.
"""

from __future__ import annotations

import base64
import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import kmock
from kubernetes.client.exceptions import ApiException

from tests.support.k8s_job_cluster import NOW, FakeJobCluster, PodRun

SECRETS = kmock.resource("v1/secrets")


def ensure_uid(uid: int) -> None:
    """A passwd entry for ``uid`` (PostgreSQL needs one for the user it runs as)."""
    with contextlib.suppress(KeyError):
        pwd.getpwuid(uid)
        return
    subprocess.run(
        ["useradd", "--system", "--uid", str(uid), "--gid", "nogroup", "--no-create-home"]
        + ["--shell", "/usr/sbin/nologin", f"twinme-pod-{uid}"],
        check=True,
        capture_output=True,
    )


def path_mapper(mounts: dict[str, Path]) -> Callable[[str], str]:
    """Rewrites a container's mount paths to the host directories behind them."""
    if not mounts:
        return lambda text: text
    ordered = sorted(mounts, key=len, reverse=True)
    pattern = re.compile("|".join(rf"(?<![\w.-]){re.escape(m)}(?![\w.-])" for m in ordered))
    return lambda text: pattern.sub(lambda m: str(mounts[m.group(0)]), text)


def terminated(code: int) -> dict[str, Any]:
    """A container's ``terminated`` state after it exited with ``code``."""
    return {
        "terminated": {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": NOW,
            "finishedAt": NOW,
        }
    }


def stop_process(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the container's processes, SIGKILL after 5 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _sources(volume: dict[str, Any]) -> list[tuple[str, str, list[dict[str, str]] | None]]:
    """``(kind, name, items)`` of each object a volume shows as files."""
    if "configMap" in volume:
        return [("configmap", volume["configMap"]["name"], volume["configMap"].get("items"))]
    if "secret" in volume:
        return [("secret", volume["secret"]["secretName"], volume["secret"].get("items"))]
    if "projected" in volume:
        kinds = {"configMap": "configmap", "secret": "secret"}
        return [
            (kinds[key], ref["name"], ref.get("items"))
            for source in volume["projected"]["sources"]
            for key, ref in source.items()
        ]
    raise AssertionError(f"the fake kubelet has no {sorted(volume)} volumes")


class HostKubelet(FakeJobCluster):
    """Runs a Job's pods on this host (see the module docstring); subclasses run the pods."""

    label = "host kubelet"
    # the containers' PATH: their images'
    image_path = "/usr/local/bin:/usr/bin:/bin"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.argv: dict[str, list[str]] = {}  # container -> what it ran
        self.envs: dict[str, dict[str, str]] = {}  # container -> the environment it got
        self._root = Path(tempfile.mkdtemp(prefix=f"twinme-{self.label.replace(' ', '-')}-"))
        self._root.chmod(0o755)

    def start(self) -> Self:
        def declare(km: Any) -> None:
            km.resources[SECRETS] = kmock.ResourceInfo(
                kind="Secret",
                singular="secret",
                namespaced=True,
                verbs={"create", "delete", "get", "list", "patch", "update"},
            )

        self._handle.run_in_loop(declare)
        return super().start()

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            shutil.rmtree(self._root, ignore_errors=True)

    # --- what a subclass says -------------------------------------------------------------------

    def pullable(self, image: str) -> bool:
        """Whether this host can run ``image``."""
        raise NotImplementedError

    def workdir(self, image: str) -> str:
        """The image's ``WORKDIR``: where a container without ``workingDir`` starts."""
        return "/"

    # --- the pod --------------------------------------------------------------------------------

    def pod_root(self, run: PodRun) -> Path:
        """A directory of the pod's own, for its volumes and files."""
        root = Path(tempfile.mkdtemp(prefix=f"{run.pod[-5:]}-", dir=self._root))
        root.chmod(0o755)
        return root

    def volumes(self, run: PodRun, root: Path) -> dict[str, Path] | None:
        """Volume name -> host directory, or None when an object is missing (FailedMount)."""
        volumes: dict[str, Path] = {}
        for volume in run.spec.get("volumes") or []:
            path = root / volume["name"]
            path.mkdir()
            if "emptyDir" in volume:
                path.chmod(0o777)
                volumes[volume["name"]] = path
                continue
            for kind, name, items in _sources(volume):
                data = self._secret(name) if kind == "secret" else self._config_map(name)
                if data is None:
                    message = f'MountVolume.SetUp failed for volume "{volume["name"]}" : '
                    message += f'{kind} "{name}" not found'
                    involved = {"kind": "Pod", "name": run.pod}
                    self.event(f"{run.pod}.mount", involved, "FailedMount", message)
                    return None
                paths = {i["key"]: i["path"] for i in items} if items else {k: k for k in data}
                for key, relative in paths.items():
                    (path / relative).write_bytes(data[key])
                    (path / relative).chmod(0o644)
            volumes[volume["name"]] = path
        return volumes

    def mounts(self, spec: dict[str, Any], volumes: dict[str, Path]) -> dict[str, Path]:
        """A container's mount paths -> the host directories behind them."""
        return {m["mountPath"]: volumes[m["name"]] for m in spec.get("volumeMounts") or []}

    def start_container(
        self,
        run: PodRun,
        spec: dict[str, Any],
        mounts: dict[str, Path],
        *,
        main: bool = False,
        enter: Callable[[Callable[[], subprocess.Popen[str]]], subprocess.Popen[str]] | None = None,
    ) -> subprocess.Popen[str] | None:
        """Pull, then start one container (through ``enter``, e.g. a network namespace's call);
        None when it cannot start: it waits then, as on a node, until the Job is deleted."""
        name = spec["name"]
        if run.cancelled.is_set() or not self._pulled(run, spec):
            return None
        env_from = self._env_from(run, spec)
        if env_from is None:
            return None
        argv, env, cwd = self.process(run, spec, mounts)
        env.update(env_from)
        self.argv[name], self.envs[name] = argv, env

        def spawn() -> subprocess.Popen[str]:
            return subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,
            )

        proc = enter(spawn) if enter else spawn()
        self.container_state(run, name, {"running": {"startedAt": NOW}}, ready=main)
        if main:
            self.pod_phase(run, "Running")
        return proc

    def process(
        self, run: PodRun, spec: dict[str, Any], mounts: dict[str, Path]
    ) -> tuple[list[str], dict[str, str], str]:
        """The container's argv (as its user), environment and working directory on this host."""
        mapped = path_mapper(mounts)
        command = [mapped(a) for a in (spec.get("command") or []) + (spec.get("args") or [])]
        env = {e["name"]: mapped(e["value"]) for e in spec.get("env") or []}
        env["HOSTNAME"] = run.pod
        env["PATH"] = self.image_path
        cwd = mapped(spec.get("workingDir") or self.workdir(spec["image"]))
        return [*self.as_user(run, spec), *command], env, cwd

    def as_user(self, run: PodRun, spec: dict[str, Any]) -> list[str]:
        """The ``setpriv`` prefix that runs a command as the container's user, locked down."""
        ctx = {**(run.spec.get("securityContext") or {}), **(spec.get("securityContext") or {})}
        uid, gid = int(ctx["runAsUser"]), int(ctx["runAsGroup"])
        ensure_uid(uid)
        setpriv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        return [*setpriv, "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all", "--"]

    def read_log(
        self, run: PodRun, container: str, proc: subprocess.Popen[str]
    ) -> threading.Thread:
        """A thread copying the container's output into its log, line by line, as it comes."""

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                run.log(container, line.rstrip("\n"))
            run.end_log(container)

        thread = threading.Thread(target=read, name=f"log-{container}", daemon=True)
        thread.start()
        return thread

    def run_to_end(self, run: PodRun, proc: subprocess.Popen[str], reader: threading.Thread) -> int:
        """Wait for the container to exit (stopping it if the Job is deleted): its exit code."""
        while proc.poll() is None:
            if run.cancelled.wait(0.05):
                stop_process(proc)
        reader.join(10)
        return proc.wait()

    def finish(self, run: PodRun, code: int) -> None:
        """The pod's phase and the Job's status after its main container exited with ``code``
        (or an init container failed); nothing once the Job is deleted."""
        if run.cancelled.is_set():
            return
        self.pod_phase(run, "Succeeded" if code == 0 else "Failed")
        self.finish_job(run, succeeded=code == 0)

    # --- helpers --------------------------------------------------------------------------------

    def _pulled(self, run: PodRun, spec: dict[str, Any]) -> bool:
        image = spec["image"]
        if not self.pullable(image):
            waiting = {"reason": "ErrImagePull", "message": f'failed to pull image "{image}"'}
            self.container_state(run, spec["name"], {"waiting": waiting})
            run.cancelled.wait()
            return False
        return True

    def _env_from(self, run: PodRun, spec: dict[str, Any]) -> dict[str, str] | None:
        env: dict[str, str] = {}
        for source in spec.get("envFrom") or []:
            name = source["secretRef"]["name"]
            data = self._secret(name)
            if data is None:
                waiting = {
                    "reason": "CreateContainerConfigError",
                    "message": f'secret "{name}" not found',
                }
                self.container_state(run, spec["name"], {"waiting": waiting})
                run.cancelled.wait()
                return None
            env |= {k: v.decode() for k, v in data.items()}
        return env

    def _secret(self, name: str) -> dict[str, bytes] | None:
        try:
            secret: Any = self.core.read_namespaced_secret(name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return None
        data = {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        data |= {k: v.encode() for k, v in (secret.string_data or {}).items()}
        return data

    def _config_map(self, name: str) -> dict[str, bytes] | None:
        try:
            cm: Any = self.core.read_namespaced_config_map(name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            return None
        data = {k: base64.b64decode(v) for k, v in (cm.binary_data or {}).items()}
        data |= {k: v.encode() for k, v in (cm.data or {}).items()}
        return data
