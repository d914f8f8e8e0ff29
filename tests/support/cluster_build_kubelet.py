"""The kubelet of the image build Job, running its containers for real (test_cluster_build.py).

:class:`BuildKubelet` is a :class:`~tests.support.host_kubelet.HostKubelet` (admission with the
"restricted" Pod Security checks, the Job controller, pod logs on kmock; volumes, ``envFrom``
Secrets, ``setpriv`` as the container's user with every capability dropped, logs and exit codes
as a node has them: see there) whose pods run the build:

- **images**: the pinned git image runs the host's ``git`` (under the spec's ``/bin/sh``), the
  pinned buildah image the host's ``buildah``; any other image fails with ``ErrImagePull``. As
  uid 1000 with no capability, buildah really builds rootless here, in the single-ID user
  namespace it creates itself. ``hostUsers: false`` cannot be reproduced (it only adds an outer
  namespace). When :attr:`BuildKubelet.as_root` is set, a container runs as root with the same
  command, args and environment instead: the host's buildah (Debian 12: 1.28) predates
  containers/buildah#6961, so a ``RUN`` step cannot run in that namespace here; the test of a
  failing ``RUN`` step uses it, and says so;
- **network**: the host's (the registry and git daemon of the tests listen on 127.0.0.1);
- **order**: init containers one after the other, then the container; after each exits the
  kubelet copies its ``terminationMessagePath`` file (mapped like a mount) into
  ``state.terminated.message``. A deleted Job stops its pod's processes (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.host_kubelet import HostKubelet, terminated
from tests.support.k8s_job_cluster import PodRun


class BuildKubelet(HostKubelet):
    """Runs the build Job's pods for real (see the module docstring)."""

    label = "build kubelet"
    image_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    def __init__(self, *args: Any, images: set[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.images = images
        self.as_root = False

    def pullable(self, image: str) -> bool:
        return image in self.images

    def as_user(self, run: PodRun, spec: dict[str, Any]) -> list[str]:
        return [] if self.as_root else super().as_user(run, spec)

    # --- the pod --------------------------------------------------------------------------------

    def run_pod(self, run: PodRun) -> None:
        root = self.pod_root(run)
        volumes = self.volumes(run, root)
        if volumes is None:
            run.cancelled.wait()
            return
        for spec in run.spec.get("initContainers") or []:
            code = self._container(run, spec, volumes, root)
            if code != 0:
                if code is not None:
                    self.finish(run, code)
                return
        [spec] = run.spec["containers"]
        code = self._container(run, spec, volumes, root, main=True)
        if code is not None:
            self.finish(run, code)

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
        termination = root / f"{name}.termination-log"
        termination.touch(mode=0o666)
        termination.chmod(0o666)
        mounts = self.mounts(spec, volumes)
        mounts[spec.get("terminationMessagePath") or "/dev/termination-log"] = termination
        proc = self.start_container(run, spec, mounts, main=main)
        if proc is None:
            return None
        code = self.run_to_end(run, proc, self.read_log(run, name, proc))
        state = terminated(code)
        message = termination.read_text(errors="replace")[:4096]
        if message:
            state["terminated"]["message"] = message
        self.container_state(run, name, state)
        return code
