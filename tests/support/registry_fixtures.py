"""A real container registry on 127.0.0.1 and an offline Node base image for image builds.

Registered for every test module by ``tests/conftest.py``:

- ``image_registry``: Debian's ``docker-registry`` (the CNCF distribution registry) serving plain
  HTTP on a free loopback port, storage in a temporary directory; stopped at the end of the session.
- ``node_base_image``: a minimal Node base image assembled from the host's own ``node`` (plus the
  shared libraries ``ldd`` lists, ``npm`` and ``/bin/sh``) with ``buildah from scratch``, pushed
  once to that registry. Docker Hub is unreachable here, so ``node:20-alpine`` cannot be pulled;
  this base has the same contract (``node`` and ``npm`` on PATH, user 1000 ``node``) and builds
  in about three seconds.

Needs the Debian packages ``buildah`` and ``docker-registry`` (``skopeo`` for the inspections).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

BASE_REPOSITORY = "twinme-base"
BASE_TAG = "node20"


@dataclass(frozen=True)
class RegistryServer:
    host_port: str  # 127.0.0.1:PORT
    root: Path

    @property
    def url(self) -> str:
        return f"http://{self.host_port}"


def _require(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"missing {', '.join(missing)}: apt-get install buildah docker-registry skopeo "
            "(listed in .ci/deps)"
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def image_registry() -> Iterator[RegistryServer]:
    """``docker-registry serve`` on 127.0.0.1 (plain HTTP, deletes enabled), always stopped."""
    with start_registry() as server:
        yield server


@contextmanager
def start_registry() -> Iterator[RegistryServer]:
    """Serve a fresh ``docker-registry`` on a free port for the ``with`` block (tests, bench)."""
    _require("docker-registry")
    root = Path(tempfile.mkdtemp(prefix="twinme-registry-"))
    port = _free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = (root / "registry.log").open("wb")
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = RegistryServer(host_port=f"127.0.0.1:{port}", root=root)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{server.url}/v2/", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    "docker-registry did not start: " + (root / "registry.log").read_text()[-2000:]
                )
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _copy(src: Path, rootfs: Path) -> None:
    dest = rootfs / src.relative_to("/")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)
    else:
        shutil.copy2(src, dest, follow_symlinks=True)


def _shared_libraries(*binaries: Path) -> set[Path]:
    out = subprocess.run(["ldd", *map(str, binaries)], capture_output=True, text=True, check=True)
    libs: set[Path] = set()
    for line in out.stdout.splitlines():
        # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or "/lib64/ld-linux-x86-64.so.2"
        for word in line.split():
            if word.startswith("/") and not word.endswith(":"):
                libs.add(Path(word))
    return libs


def assemble_node_rootfs(rootfs: Path) -> None:
    """Fill ``rootfs`` with the host's node, npm, /bin/sh and their libraries, plus user 1000."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        pytest.fail(
            "node and npm are needed to assemble the base image (apt-get install nodejs npm)"
        )
    node_bin = Path(node).resolve()
    sh = Path("/bin/sh").resolve()
    npm_cli = Path(npm).resolve()  # .../npm/bin/npm-cli.js
    npm_root = npm_cli.parent.parent
    for lib in _shared_libraries(node_bin, sh):
        _copy(lib, rootfs)
    (rootfs / "usr/bin").mkdir(parents=True, exist_ok=True)
    (rootfs / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(node_bin, rootfs / "usr/bin/node")
    shutil.copy2(sh, rootfs / "bin/sh")
    if npm_root.parent == Path("/usr/share/nodejs"):
        # Debian's npm: its dependencies are separate packages next to it
        _copy(npm_root.parent, rootfs)
        for extra in Path("/usr/lib").glob("*/nodejs"):
            _copy(extra, rootfs)
    else:
        # Node's own layout (nodejs.org, NodeSource): dependencies bundled under npm/node_modules
        _copy(npm_root, rootfs)
    # A wrapper, not npm-cli.js itself: its "#!/usr/bin/env node" needs env, absent here
    wrapper = rootfs / "usr/bin/npm"
    wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/node {npm_cli} "$@"\n')
    wrapper.chmod(0o755)
    (rootfs / "etc").mkdir(exist_ok=True)
    (rootfs / "etc/passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnode:x:1000:1000::/home/node:/bin/sh\n"
    )
    (rootfs / "etc/group").write_text("root:x:0:\nnode:x:1000:\n")
    for path, mode in (("tmp", 0o1777), ("root", 0o700), ("home/node", 0o755)):
        (rootfs / path).mkdir(parents=True, exist_ok=True)
        (rootfs / path).chmod(mode)
    os.chown(rootfs / "home/node", 1000, 1000)


@pytest.fixture(scope="session")
def node_base_image(image_registry: RegistryServer) -> str:
    """``127.0.0.1:PORT/twinme-base:node20`` in ``image_registry``, built once per session."""
    return build_node_base_image(image_registry)


def build_node_base_image(image_registry: RegistryServer) -> str:
    """Build the offline Node base image from this machine's node and push it; returns its ref."""
    _require("buildah")
    ref = f"{image_registry.host_port}/{BASE_REPOSITORY}:{BASE_TAG}"
    work = Path(tempfile.mkdtemp(prefix="twinme-base-"))
    env = {**os.environ, "STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot"}
    buildah = [
        "buildah",
        f"--root={work / 'storage'}",
        f"--runroot={work / 'run'}",
        "--storage-driver=vfs",
    ]

    def run(*args: str) -> str:
        proc = subprocess.run([*buildah, *args], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"buildah {args[0]} failed: {proc.stderr.strip()[-2000:]}")
        return proc.stdout.strip()

    try:
        rootfs = work / "rootfs"
        assemble_node_rootfs(rootfs)
        container = run("from", "scratch")
        run("add", container, f"{rootfs}/", "/")
        node_version = subprocess.run(
            ["node", "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        run(
            "config",
            "--env", "PATH=/usr/local/bin:/usr/bin:/bin",
            "--env", f"NODE_VERSION={node_version.lstrip('v')}",
            "--cmd", "node",
            container,
        )  # fmt: skip
        run("commit", "--quiet", "--format=docker", container, ref)
        run("push", "--quiet", "--tls-verify=false", ref, f"docker://{ref}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ref
