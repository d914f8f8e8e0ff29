"""Git: the repository a release comes from, read with the ``git`` command line.

Watching a branch costs one ``git ls-remote`` (no clone per sensor tick). A release checks out
exactly one commit into a clean work directory. Remotes may carry a token
(``https://user:token@github.com/...``): every message built here passes through
:func:`~twinme_ops.common.redact.redact`, and the token is registered as a secret so it is masked
even where git prints it without its URL.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote, urlsplit

import dagster as dg
from pydantic import Field

from twinme_ops.common.redact import redact, register_secret, register_secrets_in

SHA_RE = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")


class GitError(Exception):
    """A git operation failed; the message is redacted and says how to fix it."""


def _git_env() -> dict[str, str]:
    """Environment for non-interactive git: never prompt for credentials, never page output."""
    env = dict(os.environ)
    env.update(
        GIT_TERMINAL_PROMPT="0",
        GIT_ASKPASS="true",  # an askpass that answers nothing instead of blocking on a tty
        SSH_ASKPASS="true",
        GIT_SSH_COMMAND=env.get("GIT_SSH_COMMAND", "ssh -o BatchMode=yes"),
        GIT_PAGER="cat",
        LC_ALL="C",
    )
    return env


def is_sha(value: str) -> bool:
    """Whether ``value`` is a full commit id (SHA-1 or SHA-256), lower case."""
    return bool(SHA_RE.match(value))


class GitRepoResource(dg.ConfigurableResource):
    """The Git repository whose pushes start releases (``TWINME_GIT_REMOTE``/``_BRANCH``)."""

    remote: str = Field(
        default="",
        description="Remote URL or path (TWINME_GIT_REMOTE). May carry a token; it is never shown.",
    )
    branch: str = Field(default="main", description="Branch to release (TWINME_GIT_BRANCH).")
    workdir_root: str = Field(
        description="Directory under which each release's checkout is made (one per sha)."
    )
    keep_checkouts: int = Field(
        default=5,
        ge=1,
        description="Checkouts kept under workdir_root (newest first); older ones are deleted.",
    )

    @property
    def remote_display(self) -> str:
        """The remote with its credentials masked: safe for logs, metadata and alerts."""
        return redact(self.remote)

    def _register_secrets(self) -> None:
        # the token however the remote is written (even "https//user:token@host/x"): git's own
        # errors quote the remote as given
        register_secrets_in(self.remote)
        try:
            password = urlsplit(self.remote).password
        except ValueError:
            password = None
        register_secret(unquote(password) if password else None)

    def _run(
        self, args: list[str], *, cwd: Path | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run ``git args``; returns the completed process (the caller checks the exit code)."""
        self._register_secrets()
        try:
            return subprocess.run(
                ["git", *args],
                cwd=cwd,
                env=_git_env(),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError:
            raise GitError(
                "the git command is not installed. Fix: install git (Debian: apt-get install git)."
            ) from None
        except subprocess.TimeoutExpired:
            raise GitError(
                f"git {args[0]} against {self.remote_display} timed out after {timeout:.0f} s. "
                "Fix: check that the remote is reachable from this machine (network, DNS, proxy)."
            ) from None

    def _require_remote(self) -> None:
        if not self.remote:
            raise GitError(
                "no Git remote configured. Fix: set TWINME_GIT_REMOTE to the repository URL."
            )

    def ls_remote_head(self, timeout: float = 20) -> str | None:
        """The commit the branch points to on the remote, or ``None`` if the branch is absent.

        One ``git ls-remote``: no clone, no local state. Raises :class:`GitError` (redacted, with
        the fix) when the remote cannot be read.
        """
        self._require_remote()
        ref = f"refs/heads/{self.branch}"
        proc = self._run(["ls-remote", "--", self.remote, ref], timeout=timeout)
        if proc.returncode != 0:
            raise GitError(
                f"cannot read {self.remote_display} (git ls-remote exit {proc.returncode}): "
                f"{_last_line(proc.stderr)}. Fix: check TWINME_GIT_REMOTE (URL, credentials or "
                "token, network access)."
            )
        for line in proc.stdout.splitlines():
            sha, _, name = line.partition("\t")
            if name.strip() == ref and is_sha(sha.strip()):
                return sha.strip()
        return None

    def checkout(self, sha: str, dest: str | Path, timeout: float = 600) -> Path:
        """A clean work directory at ``dest`` holding exactly commit ``sha``; returns its path.

        Fetches only that commit (``git fetch --depth 1 <remote> <sha>``), which GitHub and any
        server speaking protocol v2 allow. Older servers refuse unadvertised objects: then the
        branch is fetched and the commit checked out from it. HEAD is verified to be ``sha``.
        The remote URL is not stored in the checkout's ``.git/config``, so a token in it cannot
        end up in a build context or an image.
        """
        self._require_remote()
        sha = sha.strip().lower()
        if not is_sha(sha):
            raise GitError(
                f"{sha!r} is not a full commit id. Fix: pass the 40-character sha "
                "(git rev-parse HEAD)."
            )
        path = Path(dest).absolute()
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        for args in (
            ["init", "--quiet", "."],
            ["config", "advice.detachedHead", "false"],
        ):
            proc = self._run(args, cwd=path, timeout=60)
            if proc.returncode != 0:
                raise GitError(f"git {args[0]} failed in {path}: {_last_line(proc.stderr)}")
        fetch = self._run(
            ["fetch", "--quiet", "--no-tags", "--depth", "1", "--", self.remote, sha],
            cwd=path,
            timeout=timeout,
        )
        if fetch.returncode != 0:
            branch_ref = f"+refs/heads/{self.branch}:refs/remotes/origin/{self.branch}"
            fallback = self._run(
                ["fetch", "--quiet", "--no-tags", "--", self.remote, branch_ref],
                cwd=path,
                timeout=timeout,
            )
            if fallback.returncode != 0:
                raise GitError(
                    f"cannot fetch commit {sha} from {self.remote_display}: "
                    f"{_last_line(fetch.stderr)}. Fix: check that the commit was pushed and that "
                    "TWINME_GIT_REMOTE's credentials can read the repository."
                )
        proc = self._run(["checkout", "--quiet", "--detach", sha], cwd=path, timeout=timeout)
        if proc.returncode != 0:
            raise GitError(
                f"commit {sha} is not on {self.remote_display}: {_last_line(proc.stderr)}. "
                f"Fix: push it, or release a commit of branch {self.branch}."
            )
        head = self.head(path)
        if head != sha:
            raise GitError(f"checkout of {sha} in {path} produced HEAD {head}")
        return path

    def prune_checkouts(self, current: str | Path) -> list[Path]:
        """Delete all but the ``keep_checkouts`` newest checkouts (never ``current``)."""
        root, current = Path(self.workdir_root), Path(current).resolve()
        if not root.is_dir():
            return []
        checkouts = sorted(
            (p for p in root.iterdir() if p.is_dir() and is_sha(p.name)),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        removed = []
        for old in checkouts[self.keep_checkouts :]:
            if old.resolve() != current:
                shutil.rmtree(old, ignore_errors=True)
                removed.append(old)
        return removed

    def head(self, path: str | Path) -> str:
        """The commit checked out in the work directory ``path``."""
        proc = self._run(["rev-parse", "HEAD"], cwd=Path(path), timeout=60)
        if proc.returncode != 0:
            raise GitError(f"{path} is not a Git work directory: {_last_line(proc.stderr)}")
        return proc.stdout.strip()

    def commit_subject(self, path: str | Path) -> str:
        """The first line of the checked-out commit's message (empty if unreadable)."""
        proc = self._run(["log", "-1", "--format=%s"], cwd=Path(path), timeout=60)
        return proc.stdout.strip() if proc.returncode == 0 else ""


def _last_line(stderr: str) -> str:
    """The last non-empty line of a git error output, redacted."""
    lines = [ln.strip() for ln in redact(stderr).splitlines() if ln.strip()]
    return lines[-1] if lines else "no error output"
