"""Real Git repositories for the release tests and bench: a bare remote and a clone that pushes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import dagster as dg

from twinme_ops.defs.release.sensors import git_push_sensor
from twinme_ops.release.git import GitRepoResource

SAMPLE_APP = Path(__file__).resolve().parents[2] / "examples" / "twinme-api"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "TwinMe Test",
    "GIT_AUTHOR_EMAIL": "test@twinme.invalid",
    "GIT_COMMITTER_NAME": "TwinMe Test",
    "GIT_COMMITTER_EMAIL": "test@twinme.invalid",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(*args: str, cwd: Path) -> str:
    """Run git in ``cwd`` with a fixed identity; returns stdout."""
    env = {**os.environ, **GIT_ENV, "HOME": str(cwd)}
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


class Repo:
    """A bare repository (the remote) and a working clone that commits and pushes to it."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "remote.git"
        self.work = root / "work"
        root.mkdir(parents=True, exist_ok=True)
        git("init", "--quiet", "--bare", "--initial-branch=main", str(self.bare), cwd=root)
        git("init", "--quiet", "--initial-branch=main", str(self.work), cwd=root)
        git("remote", "add", "origin", str(self.bare), cwd=self.work)

    def commit(self, message: str, files: dict[str, str] | None = None) -> str:
        """Commit ``files`` (path -> content) or an empty commit; returns the sha."""
        for name, content in (files or {}).items():
            path = self.work / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
        git("add", "--all", cwd=self.work)
        git("commit", "--quiet", "--allow-empty", "-m", message, cwd=self.work)
        return git("rev-parse", "HEAD", cwd=self.work)

    def push(self) -> None:
        git("push", "--quiet", "origin", "HEAD:refs/heads/main", cwd=self.work)

    def add_sample_app(self) -> str:
        """Copy the sample app (without node_modules) into the clone, commit and push it."""
        shutil.copytree(
            SAMPLE_APP, self.work, dirs_exist_ok=True, ignore=shutil.ignore_patterns("node_modules")
        )
        sha = self.commit("sample app")
        self.push()
        return sha


def tick(git_resource: GitRepoResource, cursor: str | None = None):
    """One sensor evaluation; returns (result, cursor after the tick)."""
    # a context manager: build_sensor_context enters an ephemeral instance, which must be exited
    # or the instance's state storage stays current for the rest of the session
    with dg.build_sensor_context(cursor=cursor, resources={"git": git_resource}) as context:
        result = git_push_sensor(context)
        return result, context.cursor
