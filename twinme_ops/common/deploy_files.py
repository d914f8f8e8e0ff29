"""Files of ``deploy/`` that the tool itself uses (the Redis template, the app's Dockerfile).

``deploy/`` sits next to the package in the repository (and in an editable install); a wheel only
has the copies shipped in ``twinme_ops/common/templates/``, which tests keep identical.
"""

import importlib.resources
from pathlib import Path

REPO_DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def deploy_file(repo_path: str, packaged_name: str) -> Path:
    """``deploy/<repo_path>`` when the repository is there, else the packaged copy."""
    in_repo = REPO_DEPLOY / repo_path
    if in_repo.is_file():
        return in_repo
    packaged = Path(str(importlib.resources.files("twinme_ops.common").joinpath("templates")))
    if (packaged / packaged_name).is_file():
        return packaged / packaged_name
    raise FileNotFoundError(
        f"neither deploy/{repo_path} nor the packaged copy twinme_ops/common/templates/"
        f"{packaged_name} exists: reinstall twinme_ops or pass an explicit path"
    )
