"""The image_sboms asset: CycloneDX SBOMs of both images, pushed next to each image's digest."""

import os
from typing import Any

import dagster as dg
from pydantic import Field

from twinme_ops.common.redact import redact
from twinme_ops.defs.release.assets import CONTAINER_IMAGE
from twinme_ops.defs.security.npm_lock import api_npm_lock
from twinme_ops.release.git import GitRepoResource
from twinme_ops.security.findings import ScanError
from twinme_ops.security.sbom import Sbom, npm_sbom, push_sbom, python_sbom
from twinme_ops.security.settings import DependencyAuditSettings


class ImageSbomsConfig(dg.Config):
    """Which images the SBOMs describe."""

    api_image: str = Field(
        default="",
        description="The API image (registry/repo@sha256:... or a tag). Empty: the image the "
        "last container_image materialization pushed.",
    )
    code_location_image: str = Field(
        default="",
        description="The code location image. Empty: DAGSTER_CURRENT_IMAGE, which dagster-k8s "
        "sets in every run pod.",
    )
    tls_verify: bool = Field(
        default=True, description="Verify the registry's TLS certificate (False: plain HTTP)."
    )


def _last_api_image(instance: dg.DagsterInstance) -> str:
    event = instance.get_latest_materialization_event(CONTAINER_IMAGE)
    materialization = event.asset_materialization if event else None
    value: Any = materialization.metadata.get("image_ref") if materialization else None
    return str(getattr(value, "value", "") or "")


@dg.asset(
    group_name="security",
    kinds={"oci"},
    deps=[CONTAINER_IMAGE],
    description=(
        "CycloneDX SBOMs of the code location image's Python environment (cyclonedx-py on "
        "requirements.lock) and of the API (npm sbom on package-lock.json: "
        "TWINME_AUDIT_NPM_PROJECT, else the head of TWINME_GIT_BRANCH, as api_source), "
        "validated against the CycloneDX schema, pushed to the registry as OCI artifacts "
        "whose subject is the image (tag sha256-<image digest>.<name>.sbom). Fails if a "
        "document does not validate or no image is known to attach it to."
    ),
)
def image_sboms(
    context: dg.AssetExecutionContext,
    config: ImageSbomsConfig,
    dependency_audit_settings: DependencyAuditSettings,
    git: GitRepoResource,
) -> dg.MaterializeResult:
    settings = dependency_audit_settings
    targets = {
        "python": config.code_location_image or os.environ.get("DAGSTER_CURRENT_IMAGE", ""),
        "api": config.api_image or _last_api_image(context.instance),
    }
    metadata: dict[str, Any] = {}
    stored = 0
    try:
        sboms: list[Sbom] = [python_sbom(settings.python_lock_path())]
        with api_npm_lock(settings, git) as lock:
            sboms.append(npm_sbom(lock.project))
        metadata["api_source"] = lock.source
        for sbom in sboms:
            metadata[f"{sbom.name}_components"] = dg.MetadataValue.int(sbom.components)
            metadata[f"{sbom.name}_sha256"] = sbom.sha256
            metadata[f"{sbom.name}_spec_version"] = sbom.spec_version
            image = targets[sbom.name]
            if not image:
                context.log.warning(
                    f"the {sbom.name} SBOM is valid but not stored: no image to attach it to"
                )
                metadata[f"{sbom.name}_sbom"] = "not stored: image unknown"
                continue
            where = push_sbom(sbom, image, tls_verify=config.tls_verify)
            context.log.info(f"{sbom.name} SBOM for {where.image} stored as {where.reference}")
            metadata[f"{sbom.name}_image"] = where.image
            metadata[f"{sbom.name}_sbom"] = where.reference
            stored += 1
    except ScanError as exc:  # SbomError, or no package-lock.json to describe
        raise dg.Failure(description=redact(exc), metadata=metadata) from None
    if not stored:
        raise dg.Failure(
            description="SBOMs generated and valid, but no image is known to store them next to. "
            "Fix: run container_image first (release_job), or give api_image / "
            "code_location_image in the run config.",
            metadata=metadata,
        )
    return dg.MaterializeResult(metadata=metadata)
