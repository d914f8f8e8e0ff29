"""The API's package-lock.json for the audit and the SBOM: the configured folder, else the head
of the ``git`` resource's branch (twinme_ops/security/npm_source.py)."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from twinme_ops.common.redact import redact
from twinme_ops.release.git import GitError, GitRepoResource
from twinme_ops.security.findings import ScanError
from twinme_ops.security.npm_source import NpmLock, npm_lock
from twinme_ops.security.settings import DependencyAuditSettings


@contextmanager
def api_npm_lock(settings: DependencyAuditSettings, git: GitRepoResource) -> Iterator[NpmLock]:
    """:func:`npm_lock` with the settings' folder and the Git resource; a Git failure is a
    :class:`ScanError` (redacted, with git's fix)."""
    try:
        with npm_lock(Path(settings.npm_project), git, settings.npm_subdir) as lock:
            yield lock
    except GitError as exc:
        raise ScanError(
            f"the API's package-lock.json could not be read from Git: {redact(exc)}"
        ) from None
