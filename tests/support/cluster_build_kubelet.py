"""The kubelet of the image build Job, running its containers for real (test_cluster_build.py).

:class:`BuildKubelet` is a :class:`~tests.support.k8s_job_cluster.FakeJobCluster` (admission with
the
"restricted" Pod Security checks, the Job controller, pod logs on kmock) whose pods run on this
host the way a node runs them:

- **volumes**: an ``emptyDir`` is an empty 0777 directory; a ``configMap`` or ``secret`` volume
  holds the object's keys as files (``items`` honoured). One whose object does not exist gives a
  ``FailedMount`` Warning event and leaves the pod ``Pending``, as on a node;
- **environment**: exactly the spec's ``env``, plus ``envFrom`` Secrets (one that does not exist:
  the container waits in ``CreateContainerConfigError``), plus ``PATH`` and ``HOSTNAME``;
  ``mountPath``s (and the ``terminationMessagePath``) are mapped onto host paths in command,
  args and env;
- **images**: the pinned git image runs the host's ``git`` (under the spec's ``/bin/sh``), the
  pinned buildah image the host's ``buildah``; any other image fails with ``ErrImagePull``;
- **security context**: each container runs as the pod's and container's ``runAsUser`` /
  ``runAsGroup`` through ``setpriv`` with ``--no-new-privs``, no supplementary group and every
  capability dropped (inheritable and bounding sets), i.e. what ``allowPrivilegeEscalation:
  false`` and ``drop: [ALL]`` give: buildah really builds rootless here, in the single-ID user
  namespace it creates itself. ``hostUsers: false`` cannot be reproduced (it only adds an outer
  namespace). When :attr:`BuildKubelet.as_root` is set, a container runs as root with the same
  command, args and environment instead: the host's buildah (Debian 12: 1.28) predates
  containers/buildah#6961, so a ``RUN`` step cannot run in that namespace here; the test of a
  failing ``RUN`` step uses it, and says so;
- **network**: the host's (the registry and git daemon of the tests listen on 127.0.0.1);
- **order**: init containers one after the other, then the container; its output is its log as
  it comes; after it exits the kubelet copies its ``terminationMessagePath`` file into
  ``state.terminated.message``; its exit code makes the pod's phase and the Job's status. A
  deleted Job stops its pod's processes (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Self

import kmock
from kubernetes.client.exceptions import ApiException

from tests.support.app_tests_kubelet import _stop, _terminated, ensure_uid, path_mapper
from tests.support.k8s_job_cluster import NOW, FakeJobCluster, PodRun

SECRETS = kmock.resource("v1/secrets")


class BuildKubelet(FakeJobCluster):
    """Runs the build Job's pods for real (see the module docstring)."""

    label = "build kubelet"

    def __init__(self, *args: Any, images: set[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.images = images
        self.as_root = False
        self.argv: dict[str, list[str]] = {}  # container -> what it ran
        self.envs: dict[str, dict[str, str]] = {}  # container -> the environment it got
        self._root = Path(tempfile.mkdtemp(prefix="twinme-build-kubelet-"))
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

    # --- the pod --------------------------------------------------------------------------------

    def run_pod(self, run: PodRun) -> None:
        root = Path(tempfile.mkdtemp(prefix=f"{run.pod[-5:]}-", dir=self._root))
        root.chmod(0o755)
        volumes = self._volumes(run, root)
        if volumes is None:
            run.cancelled.wait()
            return
        for spec in run.spec.get("initContainers") or []:
            if self._container(run, spec, volumes, root) != 0:
                if not run.cancelled.is_set():
                    self.pod_phase(run, "Failed")
                    self.finish_job(run, succeeded=False)
                return
        [spec] = run.spec["containers"]
        code = self._container(run, spec, volumes, root, main=True)
        if code is None or run.cancelled.is_set():
            return
        self.pod_phase(run, "Succeeded" if code == 0 else "Failed")
        self.finish_job(run, succeeded=code == 0)

    def _container(
        self,
        run: PodRun,
        spec: dict[str, Any],
        volumes: dict[str, Path],
        root: Path,
        *,
        main: bool = False,
    ) -> int | None:
        """Run one container to its end: its exit code, None if it never started."""
        name = spec["name"]
        if run.cancelled.is_set() or not self._pulled(run, spec):
            return None
        env_from = self._env_from(run, spec)
        if env_from is None:
            return None
        termination = root / f"{name}.termination-log"
        termination.touch(mode=0o666)
        termination.chmod(0o666)
        argv, env, cwd = self._process(run, spec, volumes, termination)
        env.update(env_from)
        self.argv[name], self.envs[name] = argv, env
        proc = subprocess.Popen(
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
        self.container_state(run, name, {"running": {"startedAt": NOW}}, ready=main)
        if main:
            self.pod_phase(run, "Running")
        reader = self._read(run, name, proc)
        while proc.poll() is None:
            if run.cancelled.wait(0.05):
                _stop(proc)
        reader.join(10)
        code = proc.wait()
        state = _terminated(code)
        message = termination.read_text(errors="replace")[:4096]
        if message:
            state["terminated"]["message"] = message
        self.container_state(run, name, state)
        return code

    def _pulled(self, run: PodRun, spec: dict[str, Any]) -> bool:
        image = spec["image"]
        if image not in self.images:
            waiting = {"reason": "ErrImagePull", "message": f'failed to pull image "{image}"'}
            self.container_state(run, spec["name"], {"waiting": waiting})
            run.cancelled.wait()
            return False
        return True

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

    def _volumes(self, run: PodRun, root: Path) -> dict[str, Path] | None:
        """Volume name -> host directory, or None when an object is missing (FailedMount)."""
        volumes: dict[str, Path] = {}
        for volume in run.spec.get("volumes") or []:
            path = root / volume["name"]
            path.mkdir()
            if "emptyDir" in volume:
                path.chmod(0o777)
                volumes[volume["name"]] = path
                continue
            if "configMap" in volume:
                kind, name = "configmap", volume["configMap"]["name"]
                try:
                    cm: Any = self.core.read_namespaced_config_map(name, self.namespace)
                    data: dict[str, bytes] | None = {
                        k: v.encode() for k, v in (cm.data or {}).items()
                    }
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                    data = None
                items = volume["configMap"].get("items")
            elif "secret" in volume:
                kind, name = "secret", volume["secret"]["secretName"]
                data, items = self._secret(name), volume["secret"].get("items")
            else:
                raise AssertionError(f"the fake kubelet has no {sorted(volume)} volumes")
            if data is None:
                message = f'MountVolume.SetUp failed for volume "{volume["name"]}" : '
                message += f'{kind} "{name}" not found'
                self.event(
                    f"{run.pod}.mount", {"kind": "Pod", "name": run.pod}, "FailedMount", message
                )
                return None
            paths = {i["key"]: i["path"] for i in items} if items else {k: k for k in data}
            for key, relative in paths.items():
                (path / relative).write_bytes(data[key])
                (path / relative).chmod(0o644)
            volumes[volume["name"]] = path
        return volumes

    def _process(
        self, run: PodRun, spec: dict[str, Any], volumes: dict[str, Path], termination: Path
    ) -> tuple[list[str], dict[str, str], str]:
        mounts = {m["mountPath"]: volumes[m["name"]] for m in spec.get("volumeMounts") or []}
        mounts[spec.get("terminationMessagePath") or "/dev/termination-log"] = termination
        mapped = path_mapper(mounts)
        ctx = {**(run.spec.get("securityContext") or {}), **(spec.get("securityContext") or {})}
        uid, gid = int(ctx["runAsUser"]), int(ctx["runAsGroup"])
        command = [mapped(a) for a in (spec.get("command") or []) + (spec.get("args") or [])]
        env = {e["name"]: mapped(e["value"]) for e in spec.get("env") or []}
        env["HOSTNAME"] = run.pod
        env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        cwd = mapped(spec.get("workingDir") or "/")
        if self.as_root:
            return command, env, cwd
        ensure_uid(uid)
        setpriv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        setpriv += ["--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"]
        return [*setpriv, "--", *command], env, cwd

    def _read(self, run: PodRun, container: str, proc: subprocess.Popen[str]) -> threading.Thread:
        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                run.log(container, line.rstrip("\n"))
            run.end_log(container)

        thread = threading.Thread(target=read, name=f"log-{container}", daemon=True)
        thread.start()
        return thread
