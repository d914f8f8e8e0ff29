"""The sample API (examples/twinme-api, a real node process on 127.0.0.1) as the pods of the
``twinme-api`` Deployment on the Kubernetes emulator, loading its JWT keys from the
``twinme-jwt-keys`` Secret.

:class:`ApiPods` plays the deployment controller (:class:`DeploymentController`) and the kubelet
together: whenever the Deployment gets a new generation it rolls, as the cluster would with a
Secret volume: it reads the Secret's ``jwks.json`` through the official client, writes it where
the pod's volume would be, and restarts the node process with ``TWINME_JWT_KEYS_FILE`` pointing at
it; then the status goes healthy as before. ``frozen`` makes the new pods ignore the Secret (a
Deployment that does not mount it): they keep serving the key set they started with. In
``stuck`` mode the new pods never come up, so the old process (and its keys) keeps serving.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kmock
import pytest
from kubernetes import client

from tests.support.k8s_emulator import NAMESPACE, DeploymentController, EmulatorHandle
from tests.support.k8s_emulator import create_deployment as create_api_deployment

EXAMPLE_API = Path(__file__).resolve().parents[2] / "examples" / "twinme-api"
SECRET = "twinme-jwt-keys"
SECRETS = kmock.resource("v1/secrets")


def declare_secrets(handle: EmulatorHandle) -> None:
    """Let the emulator serve Secrets (kmock answers 404 for undeclared core resources)."""

    def declare(km: Any) -> None:
        km.resources[SECRETS] = kmock.ResourceInfo(
            kind="Secret",
            singular="secret",
            namespaced=True,
            verbs={"create", "delete", "get", "list", "patch", "update"},
        )

    handle.run_in_loop(declare)


def core_api(kubeconfig: Path) -> client.CoreV1Api:
    """An official-client ``CoreV1Api`` for ``kubeconfig``."""
    from kubernetes import config

    return client.CoreV1Api(config.new_client_from_config(str(kubeconfig), persist_config=False))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ApiPods(DeploymentController):
    """The Deployment's controller plus its pods: the node API, restarted on each rollout."""

    label = "api pods"

    def __init__(self, kubeconfig: Path, workdir: Path, **kwargs: Any) -> None:
        super().__init__(kubeconfig, **kwargs)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.frozen = False
        self.restarts = 0
        self._core = core_api(kubeconfig)
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None
        self._generation = 0
        self._node = shutil.which("node")
        assert self._node, "node (>= 18) must be on PATH (.ci/deps)"

    def _reconcile(self) -> None:
        dep: Any = self._api.read_namespaced_deployment(self.name, self.namespace)
        generation = int(dep.metadata.generation or 1)
        if generation != self._generation and self.mode == "healthy":
            self._generation = generation
            self.restart(load_secret=not self.frozen or self._proc is None)
        super()._reconcile()

    def restart(self, load_secret: bool = True) -> None:
        """Replace the API process, with the Secret's key set unless told otherwise."""
        keys = self._workdir / "jwt" / "jwks.json"
        keys.parent.mkdir(exist_ok=True)
        if load_secret:
            secret: Any = self._core.read_namespaced_secret(SECRET, self.namespace)
            raw = (secret.data or {}).get("jwks.json")
            keys.write_bytes(base64.b64decode(raw) if raw else b'{"keys": []}')
        self.stop_api()
        env = {"PATH": os.environ["PATH"], "PORT": str(self.port), "HOST": "127.0.0.1"}
        env["TWINME_JWT_KEYS_FILE"] = str(keys)
        assert self._node is not None
        self._proc = subprocess.Popen(
            [self._node, "src/server.js"],
            cwd=EXAMPLE_API,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.restarts += 1
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1):
                    return
            except OSError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    raise RuntimeError("the sample API did not start within 15 s") from None
                time.sleep(0.05)

    def stop_api(self) -> None:
        """Stop the API process, if any."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)
        self._proc = None

    def stop(self) -> None:
        try:
            super().stop()
        finally:
            self.stop_api()


@dataclass
class JwtCluster:
    """The emulator's kubeconfig, the Secret's API and the running API pods."""

    kubeconfig: Path
    core: client.CoreV1Api
    pods: ApiPods

    def secret(self) -> Any:
        """The Secret as the API server has it now."""
        return self.core.read_namespaced_secret(SECRET, NAMESPACE)


@pytest.fixture
def jwt_cluster(k8s_emulator: tuple[Path, EmulatorHandle], tmp_path: Path) -> Iterator[JwtCluster]:
    """The emulator with the empty ``twinme-jwt-keys`` Secret (as deploy/app ships it), the API
    Deployment, and :class:`ApiPods` running the sample API for it."""
    kubeconfig, handle = k8s_emulator
    declare_secrets(handle)
    core = core_api(kubeconfig)
    core.create_namespaced_secret(
        NAMESPACE,
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": SECRET}, "type": "Opaque"},
    )
    create_api_deployment(kubeconfig)
    pods = ApiPods(kubeconfig, tmp_path).start()
    try:
        pods.wait_settled()
        yield JwtCluster(kubeconfig, core, pods)
    finally:
        pods.stop()
