"""Image build and push with buildah (vfs, chroot isolation) into a real registry on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.list_log import ListLog
from tests.support.registry_fixtures import RegistryServer
from twinme_ops.release.images.local import (
    BuiltImage,
    ImageBuilderResource,
    ImageBuildError,
    validate_tag,
)

APP_DIR = Path(__file__).resolve().parents[2] / "examples" / "twinme-api"
DOCKERFILE = APP_DIR.parents[1] / "deploy" / "app" / "Dockerfile.production"
SHA = "3f2a9c1d0e8b7a6f5c4d3e2f1a0b9c8d7e6f5a4b"
MANIFEST_TYPES = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _builder(
    registry: str, base: str, repository: str = "twinme-api", storage_root: str | None = None
) -> ImageBuilderResource:
    return ImageBuilderResource(
        registry=registry,
        repository=repository,
        tls_verify=False,
        build_args={"BASE_IMAGE": base},
        storage_root=storage_root,
    )


@pytest.fixture(scope="module")
def built(
    image_registry: RegistryServer, node_base_image: str
) -> Iterator[tuple[BuiltImage, ListLog, Path]]:
    """The sample app built from ``Dockerfile.production`` and pushed as ``:<sha>``.

    Its buildah storage is kept (``storage_root``) for the run test, then removed: vfs layers are
    full copies of the root filesystem, too big to leave behind in pytest's kept temp dirs.
    """
    storage = Path(tempfile.mkdtemp(prefix="twinme-buildah-test-"))
    try:
        log = ListLog()
        builder = _builder(image_registry.host_port, node_base_image, storage_root=str(storage))
        image = builder.build_and_push(APP_DIR, DOCKERFILE, SHA, log)
        yield image, log, storage
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def test_build_and_push_records_registry_digest(
    built: tuple[BuiltImage, ListLog, Path], image_registry: RegistryServer
) -> None:
    image, log, _ = built
    repo = f"{image_registry.host_port}/twinme-api"
    assert image.tag_ref == f"{repo}:{SHA}"
    assert image.image_ref == f"{repo}@{image.digest}"
    assert image.size_bytes and image.size_bytes > 1_000_000
    assert image.duration_s > 0
    request = urllib.request.Request(
        f"{image_registry.url}/v2/twinme-api/manifests/{SHA}", headers={"Accept": MANIFEST_TYPES}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        body = resp.read()
        assert resp.headers["Docker-Content-Digest"] == image.digest
    assert "sha256:" + hashlib.sha256(body).hexdigest() == image.digest
    # the output was streamed: build steps, the unit tests of the build stage, the push
    assert "RUN npm ci --omit=dev" in log.text or 'RUN ["npm", "ci", "--omit=dev"]' in log.text
    assert "# fail 0" in log.text
    assert f"as {image.image_ref}" in log.lines[-1]


def test_image_config_non_root_with_healthcheck(
    built: tuple[BuiltImage, ListLog, Path],
) -> None:
    image, _, _ = built
    if shutil.which("skopeo") is None:
        pytest.fail("skopeo is missing: apt-get install skopeo")
    out = subprocess.run(
        [
            "skopeo",
            "inspect",
            "--tls-verify=false",
            "--raw",
            "--config",
            f"docker://{image.image_ref}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    config = json.loads(out.stdout)["config"]
    assert config["User"] == "1000:1000"
    assert config["Cmd"] == ["node", "src/server.js"]
    assert config["Env"] and "NODE_ENV=production" in config["Env"]
    test = config["Healthcheck"]["Test"]
    assert test[0] == "CMD" and test[1:3] == ["node", "-e"] and "/health" in test[3]


def test_healthcheck_passes_inside_the_image(built: tuple[BuiltImage, ListLog, Path]) -> None:
    """Start the server in the image (as its user 1000) and run the image's own HEALTHCHECK."""
    image, _, storage = built
    buildah = [
        "buildah",
        f"--root={storage / 'storage'}",
        f"--runroot={storage / 'run'}",
        "--storage-driver=vfs",
    ]
    inspect = subprocess.run(
        [*buildah, "inspect", "--type", "image", image.tag_ref],
        capture_output=True,
        text=True,
        check=True,
    )
    healthcheck = json.loads(inspect.stdout)["Docker"]["config"]["Healthcheck"]["Test"][1:]
    container = subprocess.run(
        [*buildah, "from", "--pull=never", image.tag_ref],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # chroot isolation shares the host's network: a free port, not 3000
    script = (
        "node src/server.js & pid=$!; "
        "for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do "
        '"$@" && { kill $pid; echo healthy; exit 0; }; sleep 0.25; done; kill $pid; exit 1'
    )
    try:
        run = subprocess.run(
            [*buildah, "run", "--isolation=chroot", "--env", f"PORT={_free_port()}", container,
             "--", "/bin/sh", "-c", script, "sh", *healthcheck],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
        assert "healthy" in run.stdout
        whoami = subprocess.run(
            [*buildah, "run", "--isolation=chroot", container, "--", "node", "-e",
             "console.log(process.getuid())"],
            capture_output=True,
            text=True,
            timeout=60,
        )  # fmt: skip
        assert whoami.stdout.strip() == "1000"
    finally:
        subprocess.run([*buildah, "rm", container], capture_output=True)


@pytest.mark.parametrize("tag", ["latest", "LATEST", "", "  "])
def test_mutable_or_empty_tag_refused(tag: str) -> None:
    builder = ImageBuilderResource(registry="127.0.0.1:1")
    with pytest.raises(ImageBuildError, match="latest|tag is required"):
        builder.build_and_push(APP_DIR, DOCKERFILE, tag, ListLog())


def test_invalid_tag_refused() -> None:
    with pytest.raises(ImageBuildError, match="invalid image tag"):
        validate_tag("feature/x")
    assert validate_tag(SHA) == SHA


def test_unreachable_registry_is_a_clear_error(node_base_image: str) -> None:
    registry = f"127.0.0.1:{_free_port()}"
    log = ListLog()
    with pytest.raises(ImageBuildError) as err:
        _builder(registry, node_base_image).build_and_push(APP_DIR, DOCKERFILE, SHA, log)
    message = str(err.value)
    assert registry in message and "unreachable" in message
    assert "ImageBuilderResource.registry" in message
    assert not log.lines  # refused before building anything


def test_failing_dockerfile_names_the_step(
    image_registry: RegistryServer, node_base_image: str, tmp_path: Path
) -> None:
    (tmp_path / "Dockerfile").write_text(
        "ARG BASE_IMAGE\n"
        "FROM ${BASE_IMAGE}\n"
        'RUN ["node", "-e", "console.log(\'about to fail\'); process.exit(3)"]\n'
    )
    log = ListLog()
    builder = _builder(image_registry.host_port, node_base_image, repository="broken")
    with pytest.raises(ImageBuildError) as err:
        builder.build_and_push(tmp_path, tmp_path / "Dockerfile", "deadbeef", log)
    message = str(err.value)
    assert "build of" in message and "at step" in message
    assert "process.exit(3)" in message
    assert "about to fail" in message  # the last lines of output
    assert "about to fail" in log.text  # streamed as it ran


def test_packaged_dockerfile_is_identical_to_deploy_app() -> None:
    """A wheel builds with the packaged copy: it must be the Dockerfile in deploy/app/."""
    packaged = APP_DIR.parents[1] / "twinme_ops/common/templates/Dockerfile.production"
    assert packaged.read_text() == DOCKERFILE.read_text(), (
        "copy deploy/app/Dockerfile.production to twinme_ops/common/templates/Dockerfile.production"
    )
