"""Where the API's package-lock.json comes from: a folder, else the head of the API's Git branch.

The code location image does not ship the API's sources. When the configured folder
(``TWINME_AUDIT_NPM_PROJECT``) holds no ``package-lock.json``, the lock is read from the
repository releases come from (``TWINME_GIT_REMOTE``/``TWINME_GIT_BRANCH``): the branch's head is
resolved with one ``git ls-remote``, that single commit is checked out into a fresh folder under
the Git resource's work directory, and the folder is deleted once the scan is done. The source is
recorded as ``npm: <remote without credentials>@<sha>``.

The repository is any object with the shape of :class:`LockRepository` (the release domain's Git
resource), so this module does not import another domain.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from twinme_ops.security.findings import ScanError

LOCK = "package-lock.json"
PREFIX = "npm-audit-"  # the checkouts' folders under the Git resource's work directory
STALE_AFTER_S = 6 * 3600  # a checkout this old was left by a killed run


class LockRepository(Protocol):
    """The Git repository of the API (``twinme_ops.release.git.GitRepoResource``)."""

    remote: str
    branch: str
    workdir_root: str

    @property
    def remote_display(self) -> str: ...

    def ls_remote_head(self, timeout: float = 20) -> str | None: ...

    def checkout(self, sha: str, dest: str | Path, timeout: float = 600) -> Path: ...


@dataclass(frozen=True)
class NpmLock:
    """A folder holding package.json and package-lock.json, and where it came from."""

    project: Path
    remote: str = ""  # the Git remote without credentials, when the lock came from Git
    commit: str = ""  # the audited commit, when the lock came from Git

    @property
    def source(self) -> str:
        """``npm: <remote without credentials>@<sha>``, or ``npm: <folder>``."""
        return f"npm: {self.remote}@{self.commit}" if self.commit else f"npm: {self.project}"

    @property
    def described(self) -> str:
        """The source in words that survive redaction (no ``…@sha`` after a ``host:port``)."""
        return f"commit {self.commit} of {self.remote}" if self.commit else str(self.project)


def without_credentials(remote: str, display: str) -> str:
    """``remote`` without user info, query or fragment; ``display`` (the redacted remote) if it
    is not a URL that can be taken apart safely (a path, ``git@host:repo``, a malformed URL)."""
    try:
        parts = urlsplit(remote.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return display
    if not parts.scheme or not parts.netloc or not host or "@" in parts.path:
        return display if "@" in remote or ":" in remote.split("/", 1)[0] else remote.strip()
    netloc = f"[{host}]" if ":" in host else host
    return urlunsplit((parts.scheme, netloc + (f":{port}" if port else ""), parts.path, "", ""))


def check_subdir(subdir: str) -> str:
    """``subdir`` as a relative path inside the repository ("" for its root)."""
    path = PurePosixPath(subdir.strip().strip("/") or ".")
    if subdir.strip().startswith("/") or ".." in path.parts:
        raise ScanError(
            f"TWINME_AUDIT_NPM_SUBDIR={subdir!r} is not a folder inside the API's repository. "
            "Fix: give a relative path such as 'api' (empty: the repository root)."
        )
    return "" if str(path) == "." else str(path)


def remove_stale_checkouts(root: Path, older_than_s: float = STALE_AFTER_S) -> list[Path]:
    """Delete the audit checkouts a killed run left under ``root`` (older than a few hours)."""
    cutoff = time.time() - older_than_s
    stale = [p for p in root.glob(f"{PREFIX}*") if p.is_dir() and p.stat().st_mtime < cutoff]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)
    return stale


@contextmanager
def npm_lock(
    project: Path, repo: LockRepository | None = None, subdir: str = ""
) -> Iterator[NpmLock]:
    """The lock to scan: ``project`` if it holds one, else a checkout of the branch's head.

    Raises :class:`ScanError` (redacted, with the fix) when neither is available. The checkout
    is removed when the ``with`` block ends, whatever happens inside it.
    """
    if (project / LOCK).is_file():
        yield NpmLock(project)
        return
    if repo is None or not repo.remote.strip():
        raise ScanError(
            f"{project / LOCK} not found and no Git remote to read the API's lock from. Fix: "
            "set TWINME_AUDIT_NPM_PROJECT to a folder holding the API's package.json and "
            "package-lock.json, or set TWINME_GIT_REMOTE (and TWINME_GIT_BRANCH) to the API's "
            "repository, whose branch head is then audited."
        )
    inside = check_subdir(subdir)
    sha = repo.ls_remote_head()
    if sha is None:
        raise ScanError(
            f"branch {repo.branch} not found on {repo.remote_display}, so the API's lock cannot "
            "be read from it. Fix: set TWINME_GIT_BRANCH to the API's branch, or "
            "TWINME_AUDIT_NPM_PROJECT to a folder holding package-lock.json."
        )
    root = Path(repo.workdir_root)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_checkouts(root)
    # not named after the sha: the release's pruning of old checkouts never sees it
    folder = Path(tempfile.mkdtemp(prefix=PREFIX, dir=root))
    try:
        checkout = repo.checkout(sha, folder)
        found = checkout / inside if inside else checkout
        # a symlinked folder must not lead the scan outside the checkout
        inside_checkout = found.resolve().is_relative_to(checkout.resolve())
        if not inside_checkout or not (found / LOCK).is_file():
            where = f"folder {inside}" if inside else "root"
            raise ScanError(
                f"commit {sha} of {repo.remote_display} (branch {repo.branch}) has no {LOCK} at "
                f"its {where}. Fix: set TWINME_AUDIT_NPM_SUBDIR to the repository folder "
                "holding it, or commit the API's package-lock.json."
            )
        yield NpmLock(found, without_credentials(repo.remote, repo.remote_display), sha)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
