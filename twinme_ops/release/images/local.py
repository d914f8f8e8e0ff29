"""Build the API's container image, tag it with the git sha, push it, and return its digest.

Daemonless by default: ``buildah bud`` with the ``vfs`` storage driver and ``chroot`` isolation
(no Docker engine, no cgroups, no fuse needed), storage under a temporary directory that is
removed afterwards. ``tool="docker"`` drives a Docker engine instead.

The image is always tagged with an immutable tag (the git sha) and deployed by digest: ``latest``
is refused, since a deployment of ``:latest`` cannot be rolled back (docs/architecture.md, 'Fixes
over the specification').
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from twinme_ops.common.log import Log
from twinme_ops.common.output_lines import read_bursts
from twinme_ops.common.redact import redact

# Docker's tag grammar
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_STEP_RE = re.compile(r'building at STEP "([^"]*)"')
_UNREACHABLE_RE = re.compile(
    r"connection refused|no such host|pinging container registry|i/o timeout|"
    r"server gave HTTP response to HTTPS client|network is unreachable",
    re.IGNORECASE,
)
_TAIL_LINES = 25


class ImageBuildError(RuntimeError):
    """The image could not be built or pushed; the message says why and what to do."""


@dataclass(frozen=True)
class BuiltImage:
    """A pushed image: deploy :attr:`image_ref` (pinned by digest), never the tag."""

    tag_ref: str  # registry/repository:tag
    digest: str  # sha256:...
    image_ref: str  # registry/repository@sha256:...
    duration_s: float
    size_bytes: int | None = None  # uncompressed layers, when the tool reports them


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is an immutable, valid image tag; raise :class:`ImageBuildError`."""
    tag = (tag or "").strip()
    if not tag:
        raise ImageBuildError("an image tag is required: pass the git sha of the release")
    if tag.lower() == "latest":
        raise ImageBuildError(
            "refusing to build or push ':latest': a deployment of a mutable tag cannot be rolled "
            "back; tag the image with the git sha and deploy it by digest"
        )
    if not _TAG_RE.match(tag):
        raise ImageBuildError(
            f"invalid image tag {tag!r}: use [A-Za-z0-9_.-], at most 128 characters, "
            "not starting with '.' or '-' (the git sha)"
        )
    return tag


def _registry_host_port(registry: str) -> tuple[str, int]:
    host = registry.split("/", 1)[0]
    if host.startswith("["):  # [ipv6]:port
        addr, _, port = host[1:].partition("]")
        return addr, int(port.lstrip(":") or 443)
    addr, sep, port = host.rpartition(":")
    if sep and port.isdigit():
        return addr, int(port)
    return host, 443


def check_registry_reachable(registry: str, timeout_s: float = 5.0) -> None:
    """Raise :class:`ImageBuildError` if nothing accepts connections at the registry's address."""
    host, port = _registry_host_port(registry)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as exc:
        raise ImageBuildError(
            f"container registry {registry!r} is unreachable ({host}:{port}: {exc}): start the "
            "registry or fix ImageBuilderResource.registry (host:port of the registry)"
        ) from exc


class ImageBuilderResource(dg.ConfigurableResource):
    """Builds ``Dockerfile.production`` and pushes ``registry/repository:<sha>``."""

    registry: str  # host:port (or host) of the registry
    repository: str = "twinme-api"
    tool: str = (
        "buildah"  # "buildah" (daemonless) or "docker"; "cluster": release/images/cluster.py
    )
    storage_driver: str = "vfs"
    isolation: str = "chroot"
    tls_verify: bool = True
    build_args: dict[str, str] = {}
    # "docker" keeps HEALTHCHECK (the OCI image format has none)
    image_format: str = "docker"
    # buildah storage; None: a temporary directory per build, removed afterwards
    storage_root: str | None = None
    timeout_s: float = 1800.0

    def tag_ref(self, tag: str) -> str:
        return f"{self.registry.rstrip('/')}/{self.repository}:{validate_tag(tag)}"

    def build_commit(
        self,
        *,
        checkout: Path,
        dockerfile: Path,
        commit: str,
        remote: str,
        branch: str,
        log: Log,
        run_id: str = "",
    ) -> BuiltImage:
        """Build and push ``commit``, checked out at ``checkout``: here, from the checkout,
        tagged with the commit. The cluster builder clones the commit itself instead."""
        return self.build_and_push(checkout, dockerfile, tag=commit, log=log)

    def build_and_push(self, context_dir: Path, dockerfile: Path, tag: str, log: Log) -> BuiltImage:
        """Build ``dockerfile`` in ``context_dir``, push it as ``:tag`` and return its digest."""
        ref = self.tag_ref(tag)
        if self.tool not in ("buildah", "docker"):
            raise ImageBuildError(
                f"unknown image build tool {self.tool!r}: use 'buildah' or 'docker' here, or "
                "ClusterImageBuilder (TWINME_IMAGE_BUILDER=cluster) to build in the cluster"
            )
        if shutil.which(self.tool) is None:
            hint = "apt-get install buildah" if self.tool == "buildah" else "install Docker"
            raise ImageBuildError(f"{self.tool} is not installed ({hint})")
        context_dir, dockerfile = Path(context_dir), Path(dockerfile)
        if not dockerfile.is_file():
            raise ImageBuildError(f"Dockerfile not found: {dockerfile}")
        check_registry_reachable(self.registry)
        started = time.monotonic()
        if self.tool == "buildah":
            digest, size = self._buildah(context_dir, dockerfile, ref, log)
        else:
            digest, size = self._docker(context_dir, dockerfile, ref, log)
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
            raise ImageBuildError(f"push of {ref} returned no valid digest: {digest!r}")
        built = BuiltImage(
            tag_ref=ref,
            digest=digest,
            image_ref=f"{ref.rsplit(':', 1)[0]}@{digest}",
            duration_s=round(time.monotonic() - started, 3),
            size_bytes=size,
        )
        log.info(f"pushed {built.tag_ref} as {built.image_ref} in {built.duration_s:.1f} s")
        return built

    # --- buildah ------------------------------------------------------------------------------

    @contextmanager
    def _buildah_storage(self) -> Iterator[list[str]]:
        if self.storage_root:
            root = Path(self.storage_root)
            yield [
                f"--root={root / 'storage'}",
                f"--runroot={root / 'run'}",
                f"--storage-driver={self.storage_driver}",
            ]
            return
        tmp = Path(tempfile.mkdtemp(prefix="twinme-buildah-"))
        try:
            yield [
                f"--root={tmp / 'storage'}",
                f"--runroot={tmp / 'run'}",
                f"--storage-driver={self.storage_driver}",
            ]
        finally:
            # vfs layers are plain directories owned by various uids: root removes them
            shutil.rmtree(tmp, ignore_errors=True)

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["STORAGE_DRIVER"] = self.storage_driver
        env["BUILDAH_ISOLATION"] = self.isolation
        return env

    def _buildah(
        self, context_dir: Path, dockerfile: Path, ref: str, log: Log
    ) -> tuple[str, int | None]:
        tls = f"--tls-verify={'true' if self.tls_verify else 'false'}"
        with self._buildah_storage() as storage, tempfile.TemporaryDirectory() as tmp:
            build = ["buildah", *storage, "bud", f"--isolation={self.isolation}"]
            build += [f"--format={self.image_format}", tls, "--pull=missing"]
            for key, value in sorted(self.build_args.items()):
                build += ["--build-arg", f"{key}={value}"]
            build += ["-f", str(dockerfile), "-t", ref, str(context_dir)]
            self._run(build, log, what=f"build of {ref}")
            size = self._buildah_size(storage, ref)
            digestfile = Path(tmp) / "digest"
            push = ["buildah", *storage, "push", tls, f"--digestfile={digestfile}"]
            push += [ref, f"docker://{ref}"]
            self._run(push, log, what=f"push of {ref}")
            return digestfile.read_text().strip(), size

    def _buildah_size(self, storage: Sequence[str], ref: str) -> int | None:
        cmd = ["buildah", *storage, "inspect", "--type", "image", ref]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self._env(), timeout=120)
        if proc.returncode != 0:
            return None
        try:
            manifest = json.loads(json.loads(proc.stdout)["Manifest"])
            return sum(int(layer["size"]) for layer in manifest["layers"])
        except (ValueError, KeyError, TypeError):
            return None

    # --- docker -------------------------------------------------------------------------------

    def _docker(
        self, context_dir: Path, dockerfile: Path, ref: str, log: Log
    ) -> tuple[str, int | None]:
        build = ["docker", "build", "-f", str(dockerfile), "-t", ref]
        for key, value in sorted(self.build_args.items()):
            build += ["--build-arg", f"{key}={value}"]
        self._run([*build, str(context_dir)], log, what=f"build of {ref}")
        self._run(["docker", "push", ref], log, what=f"push of {ref}")
        inspect = ["docker", "image", "inspect", ref]
        proc = subprocess.run(inspect, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise ImageBuildError(
                f"docker image inspect {ref} failed: {redact(proc.stderr.strip())}"
            )
        info = json.loads(proc.stdout)[0]
        repo = ref.rsplit(":", 1)[0]
        digests = [
            d.split("@", 1)[1] for d in info.get("RepoDigests", []) if d.startswith(repo + "@")
        ]
        if not digests:
            raise ImageBuildError(f"docker push of {ref} recorded no digest for {repo}")
        size = info.get("Size")
        return digests[0], int(size) if isinstance(size, int) else None

    # --- process ------------------------------------------------------------------------------

    def _run(self, cmd: list[str], log: Log, what: str) -> None:
        """Run ``cmd``, streaming its (redacted) output to ``log``; raise with the last lines."""
        log.info(redact("$ " + " ".join(cmd)))
        tail: deque[str] = deque(maxlen=_TAIL_LINES)
        try:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                text=True,
                errors="replace",
                env=self._env(),
            )
        except OSError as exc:
            raise ImageBuildError(f"{what}: cannot run {cmd[0]}: {exc}") from exc
        timer = threading.Timer(self.timeout_s, proc.kill)
        timer.start()
        assert proc.stdout is not None
        try:
            with proc:
                for burst in read_bursts(proc.stdout):
                    lines = [line for line in map(redact, burst) if line]
                    if lines:
                        tail.extend(lines)
                        # the lines printed together make one message: one event of the log
                        log.info("\n".join(lines))
                code = proc.wait()
        finally:
            timed_out = not timer.is_alive()
            timer.cancel()
        if code != 0 and timed_out:
            raise ImageBuildError(f"{what} timed out after {self.timeout_s:.0f} s")
        if code == 0:
            return
        text = "\n".join(tail)
        if what.startswith("push") and _UNREACHABLE_RE.search(text):
            raise ImageBuildError(
                f"{what} failed: container registry {self.registry!r} is unreachable or speaks "
                "another protocol (set tls_verify=False for a plain-HTTP registry); last output:\n"
                + text
            )
        step = _STEP_RE.search(text)
        where = f" at step {step.group(1)!r}" if step else ""
        raise ImageBuildError(f"{what} failed{where} (exit {code}); last output:\n{text}")
