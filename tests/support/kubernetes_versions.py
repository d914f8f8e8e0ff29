"""The Kubernetes versions every manifest is validated against (kubernetes-validate's schemas)."""

from __future__ import annotations

from kubernetes_validate.utils import all_versions
from packaging.version import Version

OLDEST_SUPPORTED = Version("1.30")
VERSIONS = sorted({v for v in all_versions() if Version(v) >= OLDEST_SUPPORTED}, key=Version)
