"""CycloneDX SBOMs of the two images, validated, and stored in the registry next to each image.

- the code location image's Python environment: ``cyclonedx-py requirements`` on the hash-pinned
  lock it installs (``--require-hashes``: the lock *is* the environment, bytes included);
- the API: ``npm sbom --sbom-format cyclonedx --package-lock-only`` on its package-lock.json.

Each document is validated against the CycloneDX JSON schema of the version it declares
(``cyclonedx-python-lib[json-validation]``) and pushed as an OCI artifact whose manifest names
the image as its ``subject`` (OCI 1.1 referrers), tagged ``sha256-<image digest>.<name>.sbom`` (the
tag fallback cosign and oras read on registries without the referrers API). ``skopeo copy``
pushes it, so the registry's credentials and TLS settings are the ones the release already uses.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twinme_ops.common.redact import redact
from twinme_ops.security.findings import ScanError

SBOM_MEDIA_TYPE = "application/vnd.cyclonedx+json"
_EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"


class SbomError(ScanError):
    """An SBOM that could not be generated, validated or stored."""


@dataclass(frozen=True)
class Sbom:
    """One validated CycloneDX document."""

    name: str  # "python" or "api"
    document: bytes
    spec_version: str
    components: int

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.document).hexdigest()


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SbomError(
            f"{Path(cmd[0]).name} {cmd[1]} failed (exit {proc.returncode}): {redact(tail)}"
        )
    return proc.stdout


def validate(name: str, document: bytes) -> Sbom:
    """Parse and validate ``document`` against the CycloneDX schema of its ``specVersion``."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    try:
        data: dict[str, Any] = json.loads(document)
        version = str(data["specVersion"])
        schema = SchemaVersion.from_version(version)
    except (ValueError, KeyError, TypeError) as exc:
        raise SbomError(f"the {name} SBOM is not a CycloneDX JSON document: {exc}") from None
    error = JsonStrictValidator(schema).validate_str(document.decode())
    if error is not None:
        raise SbomError(
            f"the {name} SBOM does not validate against CycloneDX {version}: "
            f"{str(error)[:300]}. Fix: upgrade the generator (cyclonedx-bom / npm) and rerun."
        )
    return Sbom(name, document, version, len(data.get("components") or []))


def _cyclonedx_py() -> str:
    """The cyclonedx-py beside this Python (its venv), else on PATH."""
    beside = Path(sys.executable).with_name("cyclonedx-py")
    found = str(beside) if beside.is_file() else shutil.which("cyclonedx-py")
    if found is None:
        raise SbomError("cyclonedx-py is not installed. Fix: pip install cyclonedx-bom.")
    return found


def python_sbom(lock: Path) -> Sbom:
    """The code location image's Python environment, from the lock it installs."""
    if not lock.is_file():
        raise SbomError(f"Python lock {lock} not found. Fix: set TWINME_AUDIT_PYTHON_LOCK.")
    with tempfile.TemporaryDirectory(prefix="sbom-") as tmp:
        out = Path(tmp) / "python.cdx.json"
        _run(
            [
                _cyclonedx_py(),
                "requirements",
                str(lock),
                "--of",
                "JSON",
                "--sv",
                "1.6",
                "--output-reproducible",
                "-o",
                str(out),
            ]
        )
        return validate("python", out.read_bytes())


def npm_sbom(project: Path) -> Sbom:
    """The API's packages, from its package-lock.json."""
    npm = shutil.which("npm")
    if npm is None:
        raise SbomError("npm is not installed. Fix: install Node and npm (.ci/deps).")
    if not (project / "package-lock.json").is_file():
        raise SbomError(
            f"{project / 'package-lock.json'} not found. Fix: set TWINME_AUDIT_NPM_PROJECT."
        )
    out = _run([npm, "sbom", "--sbom-format", "cyclonedx", "--package-lock-only"], cwd=project)
    return validate("api", out.encode())


def _blob(root: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (root / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}"


def oci_layout(
    root: Path, sbom: Sbom, subject_digest: str, subject_size: int, subject_media_type: str
) -> str:
    """Write ``sbom`` as a one-artifact OCI image layout; return the manifest's digest."""
    (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    config = b"{}"
    manifest = {
        "schemaVersion": 2,
        "mediaType": _MANIFEST_MEDIA_TYPE,
        "artifactType": SBOM_MEDIA_TYPE,
        "config": {"mediaType": _EMPTY_MEDIA_TYPE, "digest": _blob(root, config), "size": 2},
        "layers": [
            {
                "mediaType": SBOM_MEDIA_TYPE,
                "digest": _blob(root, sbom.document),
                "size": len(sbom.document),
                "annotations": {"org.opencontainers.image.title": f"{sbom.name}.cdx.json"},
            }
        ],
        "subject": {
            "mediaType": subject_media_type,
            "digest": subject_digest,
            "size": subject_size,
        },
        "annotations": {"org.cyclonedx.specVersion": sbom.spec_version},
    }
    raw = json.dumps(manifest, separators=(",", ":")).encode()
    digest = _blob(root, raw)
    index = {
        "schemaVersion": 2,
        "manifests": [{"mediaType": _MANIFEST_MEDIA_TYPE, "digest": digest, "size": len(raw)}],
    }
    (root / "index.json").write_text(json.dumps(index))
    return digest


@dataclass(frozen=True)
class StoredSbom:
    """Where one SBOM now lives in the registry."""

    image: str  # repository@sha256:... it describes
    reference: str  # repository:sha256-<hex>.sbom
    manifest_digest: str


def _skopeo() -> str:
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise SbomError("skopeo is not installed. Fix: apt-get install skopeo (.ci/deps).")
    return skopeo


def _repository(image: str) -> str:
    """``registry/repo`` of ``registry/repo:tag`` or ``registry/repo@sha256:...``."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)
    if ":" in last[-1]:
        name = name.rsplit(":", 1)[0]
    return name


def push_sbom(sbom: Sbom, image: str, tls_verify: bool = True) -> StoredSbom:
    """Push ``sbom`` next to ``image`` (a tag or a digest reference) in its registry.

    The image's manifest is read first: its digest names the artifact, so an SBOM is always
    tied to the exact bytes it describes, never to a tag that moves.
    """
    skopeo = _skopeo()
    tls = f"--tls-verify={'true' if tls_verify else 'false'}"
    proc = subprocess.run(
        [skopeo, "inspect", "--raw", tls, f"docker://{image}"],
        capture_output=True,
        timeout=120,
    )
    if proc.returncode != 0:
        tail = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no output"])[-1]
        raise SbomError(
            f"cannot read the manifest of {redact(image)}: {redact(tail)}. Fix: check the image "
            "reference and the registry credentials (REGISTRY_AUTH_FILE)."
        )
    raw = proc.stdout
    media_type = str(json.loads(raw).get("mediaType") or _MANIFEST_MEDIA_TYPE)
    digest = f"sha256:{hashlib.sha256(raw).hexdigest()}"
    repository = _repository(image)
    reference = f"{repository}:{digest.replace(':', '-')}.{sbom.name}.sbom"
    with tempfile.TemporaryDirectory(prefix="sbom-oci-") as tmp:
        manifest_digest = oci_layout(Path(tmp), sbom, digest, len(raw), media_type)
        dest_tls = f"--dest-tls-verify={'true' if tls_verify else 'false'}"
        _run(
            [skopeo, "copy", "--preserve-digests", dest_tls, f"oci:{tmp}", f"docker://{reference}"]
        )
    return StoredSbom(f"{repository}@{digest}", reference, manifest_digest)
