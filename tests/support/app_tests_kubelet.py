"""The kubelet and the containers of app_tests' Job, for real (tests/release/test_app_tests_k8s.py).

:class:`AppTestsKubelet` is a :class:`~tests.support.k8s_job_cluster.FakeJobCluster` whose pods
run, as
a node would run them:

- **volumes**: an ``emptyDir`` is an empty 0777 directory; a ``projected`` volume of ConfigMaps
  holds their ``binaryData``/``data`` as files (a ConfigMap that does not exist: a
  ``FailedMount`` event, and the pod stays ``Pending``);
- **one network namespace per pod**
(:class:`~twinme_ops.release.app_tests.isolation.NetworkNamespace`:
  only loopback), shared by its containers as in a pod, so the tests reach their sidecars on
  127.0.0.1:5432 and :6379 and nothing else;
- **containers** run as their ``securityContext``'s uid and gid (``setpriv``), with exactly the
  spec's environment (plus ``PATH`` and ``HOSTNAME``, as a container runtime adds), their
  ``mountPath``s mapped onto the volume directories in command, args, env and ``workingDir``;
- **images**: the Node image runs on the host's ``node``; a ``pgvector/pgvector`` image runs its
  command with a stand-in for the image's ``docker-entrypoint.sh`` (initdb, then every ``.sql``
  of ``/docker-entrypoint-initdb.d`` through psql, then postgres with the given arguments) on
  the wheel's PostgreSQL 18 + pgvector; a ``redis`` image runs the host's ``redis-server`` with
  its args. An image in :attr:`AppTestsKubelet.pull_errors` fails with ``ErrImagePull``;
- **order**: init containers one after the other; a native sidecar (``restartPolicy: Always``)
  starts and its ``startupProbe`` (exec) must pass before the next container starts; the main
  container's output is its log as it comes; sidecars are stopped when it ends; its exit code
  makes the pod's phase and the Job's status.
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
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes.client.exceptions import ApiException

from tests.support.k8s_job_cluster import NOW, FakeJobCluster, PodRun
from twinme_ops.common.pgtools import pg_bin
from twinme_ops.release.app_tests.isolation import NetworkNamespace

STAND_IN_ENTRYPOINT = """\
#!/bin/sh
# stand-in for the postgres image's docker-entrypoint.sh (tests only)
set -eu
[ "${1:-}" = postgres ] && shift
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile="$(mktemp)"
  printf '%s\\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb -D "$PGDATA" -U postgres --pwfile="$pwfile" --auth-local=trust \\
    --auth-host=scram-sha-256 -E UTF8 --no-sync --no-instructions > /dev/null
  rm -f "$pwfile"
  pg_ctl -D "$PGDATA" -w -o "-c listen_addresses='' -k $FAKE_SOCKETS" start > /dev/null
  for f in "$FAKE_INITDB"/*.sql; do
    echo "running $f"
    psql -v ON_ERROR_STOP=1 --no-psqlrc -h "$FAKE_SOCKETS" -U postgres \\
      -d "${POSTGRES_DB:-postgres}" -f "$f"
  done
  pg_ctl -D "$PGDATA" -m fast -w stop > /dev/null
fi
exec postgres -D "$PGDATA" -k "$FAKE_SOCKETS" "$@"
"""


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


class AppTestsKubelet(FakeJobCluster):
    """Runs app_tests' pods for real (see the module docstring)."""

    label = "app tests kubelet"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pull_errors: set[str] = set()
        self.envs: dict[str, dict[str, str]] = {}  # container -> the environment it got
        self._root = Path(tempfile.mkdtemp(prefix="twinme-kubelet-"))
        self._root.chmod(0o755)
        self._bin = self._root / "bin"
        self._bin.mkdir(mode=0o755)
        entrypoint = self._bin / "docker-entrypoint.sh"
        entrypoint.write_text(STAND_IN_ENTRYPOINT)
        entrypoint.chmod(0o755)

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
        processes: list[subprocess.Popen[str]] = []
        try:
            with NetworkNamespace() as ns:
                self._containers(run, ns, volumes, processes)
        finally:
            for proc in reversed(processes):
                _stop(proc)

    def _containers(
        self,
        run: PodRun,
        ns: NetworkNamespace,
        volumes: dict[str, Path],
        processes: list[subprocess.Popen[str]],
    ) -> None:
        for spec in run.spec.get("initContainers") or []:
            if run.cancelled.is_set() or not self._pulled(run, spec):
                return
            sidecar = spec.get("restartPolicy") == "Always"
            proc = self._start(run, ns, spec, volumes)
            processes.append(proc)
            self.container_state(run, spec["name"], {"running": {"startedAt": NOW}})
            reader = self._read(run, spec["name"], proc)
            if sidecar:
                if not self._startup_probe(run, ns, spec, volumes, proc):
                    return
                self.container_state(run, spec["name"], {"running": {"startedAt": NOW}}, ready=True)
                continue
            code = proc.wait()
            reader.join(10)
            self.container_state(run, spec["name"], _terminated(code))
            if code != 0:  # restartPolicy Never: a failed init container fails the pod
                self.pod_phase(run, "Failed")
                self.finish_job(run, succeeded=False)
                return
        [spec] = run.spec["containers"]
        if run.cancelled.is_set() or not self._pulled(run, spec):
            return
        proc = self._start(run, ns, spec, volumes)
        processes.append(proc)
        self.container_state(run, spec["name"], {"running": {"startedAt": NOW}}, ready=True)
        self.pod_phase(run, "Running")
        reader = self._read(run, spec["name"], proc)
        while proc.poll() is None:
            if run.cancelled.wait(0.05):
                _stop(proc)
        reader.join(10)
        code = proc.wait()
        self.container_state(run, spec["name"], _terminated(code))
        self.pod_phase(run, "Succeeded" if code == 0 else "Failed")
        self.finish_job(run, succeeded=code == 0)

    def _pulled(self, run: PodRun, spec: dict[str, Any]) -> bool:
        image = spec["image"]
        if image in self.pull_errors or not _known_image(image):
            waiting = {"reason": "ErrImagePull", "message": f'failed to pull image "{image}"'}
            self.container_state(run, spec["name"], {"waiting": waiting})
            run.cancelled.wait()
            return False
        return True

    def _volumes(self, run: PodRun, root: Path) -> dict[str, Path] | None:
        """Volume name -> host directory, or None when a ConfigMap is missing (FailedMount)."""
        volumes: dict[str, Path] = {}
        for volume in run.spec.get("volumes") or []:
            path = root / volume["name"]
            path.mkdir()
            if "emptyDir" in volume:
                path.chmod(0o777)
            elif "projected" in volume:
                for source in volume["projected"]["sources"]:
                    name = source["configMap"]["name"]
                    try:
                        cm: Any = self.core.read_namespaced_config_map(name, self.namespace)
                    except ApiException as exc:
                        if exc.status != 404:
                            raise
                        message = f'MountVolume.SetUp failed for volume "{volume["name"]}" : '
                        message += f'configmap "{name}" not found'
                        involved = {"kind": "Pod", "name": run.pod}
                        self.event(f"{run.pod}.mount", involved, "FailedMount", message)
                        return None
                    for key, value in (cm.binary_data or {}).items():
                        (path / key).write_bytes(base64.b64decode(value))
                    for key, value in (cm.data or {}).items():
                        (path / key).write_text(value)
            else:
                raise AssertionError(f"the fake kubelet has no {sorted(volume)} volumes")
            volumes[volume["name"]] = path
        return volumes

    def _start(
        self, run: PodRun, ns: NetworkNamespace, spec: dict[str, Any], volumes: dict[str, Path]
    ) -> subprocess.Popen[str]:
        argv, env, cwd = self._process(run, spec, volumes)
        self.envs[spec["name"]] = env
        return ns.call(
            lambda: subprocess.Popen(
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
        )

    def _process(
        self, run: PodRun, spec: dict[str, Any], volumes: dict[str, Path]
    ) -> tuple[list[str], dict[str, str], str]:
        mounts = {m["mountPath"]: volumes[m["name"]] for m in spec.get("volumeMounts") or []}
        mapped = path_mapper(mounts)
        ctx = spec["securityContext"]
        uid, gid = int(ctx["runAsUser"]), int(ctx["runAsGroup"])
        ensure_uid(uid)
        command = [mapped(a) for a in (spec.get("command") or []) + (spec.get("args") or [])]
        env = {e["name"]: mapped(e["value"]) for e in spec.get("env") or []}
        env["HOSTNAME"] = run.pod
        env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
        image = spec["image"]
        if image.startswith("pgvector/pgvector:"):
            # the image's ENV, and where the stand-in entrypoint finds what it maps
            env["PATH"] = f"{self._bin}:{Path(pg_bin('postgres')).parent}:{env['PATH']}"
            env["PGDATA"] = f"{mounts['/var/lib/postgresql']}/18/docker"
            env["FAKE_SOCKETS"] = str(mounts["/var/run/postgresql"])
            env["FAKE_INITDB"] = str(mounts["/docker-entrypoint-initdb.d"])
        workdir = "/data" if image.startswith("redis:") else "/"  # the images' WORKDIR
        cwd = mapped(spec.get("workingDir") or workdir)
        setpriv = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        return [*setpriv, "--no-new-privs", "--", *command], env, cwd

    def _read(self, run: PodRun, container: str, proc: subprocess.Popen[str]) -> threading.Thread:
        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                run.log(container, line.rstrip("\n"))
            run.end_log(container)

        thread = threading.Thread(target=read, name=f"log-{container}", daemon=True)
        thread.start()
        return thread

    def _startup_probe(
        self,
        run: PodRun,
        ns: NetworkNamespace,
        spec: dict[str, Any],
        volumes: dict[str, Path],
        proc: subprocess.Popen[str],
    ) -> bool:
        probe = spec["startupProbe"]
        _, env, cwd = self._process(run, spec, volumes)
        argv = ["setpriv", f"--reuid={spec['securityContext']['runAsUser']}"]
        argv += [f"--regid={spec['securityContext']['runAsGroup']}", "--clear-groups", "--"]
        argv += probe["exec"]["command"]
        deadline = time.monotonic() + probe["periodSeconds"] * probe["failureThreshold"]
        while time.monotonic() < deadline and not run.cancelled.is_set():
            if proc.poll() is not None:
                self.container_state(run, spec["name"], _terminated(proc.returncode))
                return False
            done = ns.call(
                lambda: subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=False)
            )
            if done.returncode == 0:
                return True
            time.sleep(0.1)
        return False


def _known_image(image: str) -> bool:
    return image.startswith(("node:", "pgvector/pgvector:", "redis:"))


def _terminated(code: int) -> dict[str, Any]:
    return {
        "terminated": {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "startedAt": NOW,
            "finishedAt": NOW,
        }
    }


def _stop(proc: subprocess.Popen[str]) -> None:
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
