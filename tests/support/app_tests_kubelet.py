"""The kubelet and the containers of app_tests' Job, for real (tests/release/test_app_tests_k8s.py).

:class:`AppTestsKubelet` is a :class:`~tests.support.host_kubelet.HostKubelet` (volumes,
environment, ``setpriv`` as the container's user, logs and exit codes as a node has them: see
there) whose pods also get what app_tests' pod needs:

- **one network namespace per pod**
  (:class:`~twinme_ops.release.app_tests.isolation.NetworkNamespace`: only loopback), shared by
  its containers as in a pod, so the tests reach their sidecars on 127.0.0.1:5432 and :6379 and
  nothing else;
- **images**: the Node image runs on the host's ``node``; a ``pgvector/pgvector`` image runs its
  command with a stand-in for the image's ``docker-entrypoint.sh`` (initdb, then every ``.sql``
  of ``/docker-entrypoint-initdb.d`` through psql, then postgres with the given arguments) on
  the wheel's PostgreSQL 18 + pgvector; a ``redis`` image runs the host's ``redis-server`` with
  its args (from ``/data``, the image's WORKDIR). An image in :attr:`AppTestsKubelet.pull_errors`
  fails with ``ErrImagePull``;
- **order**: init containers one after the other; a native sidecar (``restartPolicy: Always``)
  starts and its ``startupProbe`` (exec) must pass before the next container starts; the main
  container's output is its log as it comes; sidecars are stopped when it ends; its exit code
  makes the pod's phase and the Job's status.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.host_kubelet import HostKubelet, stop_process, terminated
from tests.support.k8s_job_cluster import NOW, PodRun
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


class AppTestsKubelet(HostKubelet):
    """Runs app_tests' pods for real (see the module docstring)."""

    label = "app tests kubelet"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pull_errors: set[str] = set()
        self._bin = self._root / "bin"
        self._bin.mkdir(mode=0o755)
        entrypoint = self._bin / "docker-entrypoint.sh"
        entrypoint.write_text(STAND_IN_ENTRYPOINT)
        entrypoint.chmod(0o755)

    def pullable(self, image: str) -> bool:
        known = image.startswith(("node:", "pgvector/pgvector:", "redis:"))
        return known and image not in self.pull_errors

    def workdir(self, image: str) -> str:
        return "/data" if image.startswith("redis:") else "/"

    def process(
        self, run: PodRun, spec: dict[str, Any], mounts: dict[str, Path]
    ) -> tuple[list[str], dict[str, str], str]:
        argv, env, cwd = super().process(run, spec, mounts)
        if spec["image"].startswith("pgvector/pgvector:"):
            # the image's ENV, and where the stand-in entrypoint finds what it maps
            env["PATH"] = f"{self._bin}:{Path(pg_bin('postgres')).parent}:{env['PATH']}"
            env["PGDATA"] = f"{mounts['/var/lib/postgresql']}/18/docker"
            env["FAKE_SOCKETS"] = str(mounts["/var/run/postgresql"])
            env["FAKE_INITDB"] = str(mounts["/docker-entrypoint-initdb.d"])
        return argv, env, cwd

    # --- the pod --------------------------------------------------------------------------------

    def run_pod(self, run: PodRun) -> None:
        volumes = self.volumes(run, self.pod_root(run))
        if volumes is None:
            run.cancelled.wait()
            return
        processes: list[subprocess.Popen[str]] = []
        try:
            with NetworkNamespace() as ns:
                self._containers(run, ns, volumes, processes)
        finally:
            for proc in reversed(processes):
                stop_process(proc)

    def _containers(
        self,
        run: PodRun,
        ns: NetworkNamespace,
        volumes: dict[str, Path],
        processes: list[subprocess.Popen[str]],
    ) -> None:
        for spec in run.spec.get("initContainers") or []:
            mounts = self.mounts(spec, volumes)
            proc = self.start_container(run, spec, mounts, enter=ns.call)
            if proc is None:
                return
            processes.append(proc)
            reader = self.read_log(run, spec["name"], proc)
            if spec.get("restartPolicy") == "Always":  # a native sidecar
                if not self._startup_probe(run, ns, spec, mounts, proc):
                    return
                self.container_state(run, spec["name"], {"running": {"startedAt": NOW}}, ready=True)
                continue
            code = self.run_to_end(run, proc, reader)
            self.container_state(run, spec["name"], terminated(code))
            if code != 0:  # restartPolicy Never: a failed init container fails the pod
                self.finish(run, code)
                return
        [spec] = run.spec["containers"]
        proc = self.start_container(run, spec, self.mounts(spec, volumes), main=True, enter=ns.call)
        if proc is None:
            return
        processes.append(proc)
        code = self.run_to_end(run, proc, self.read_log(run, spec["name"], proc))
        self.container_state(run, spec["name"], terminated(code))
        self.finish(run, code)

    def _startup_probe(
        self,
        run: PodRun,
        ns: NetworkNamespace,
        spec: dict[str, Any],
        mounts: dict[str, Path],
        proc: subprocess.Popen[str],
    ) -> bool:
        probe = spec["startupProbe"]
        _, env, cwd = self.process(run, spec, mounts)
        argv = [*self.as_user(run, spec), *probe["exec"]["command"]]
        deadline = time.monotonic() + probe["periodSeconds"] * probe["failureThreshold"]
        while time.monotonic() < deadline and not run.cancelled.is_set():
            if proc.poll() is not None:
                self.container_state(run, spec["name"], terminated(proc.returncode))
                return False
            done = ns.call(
                lambda: subprocess.run(argv, env=env, cwd=cwd, capture_output=True, check=False)
            )
            if done.returncode == 0:
                return True
            time.sleep(0.1)
        return False
