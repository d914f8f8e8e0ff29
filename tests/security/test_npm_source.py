"""Where the API's lock comes from, without Dagster: a folder, else a real Git repository's
branch head (a bare repository on disk), and the remote shown without its credentials."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.advisory_server import npm_project
from tests.support.git_repos import Repo
from twinme_ops.common.redact import redact
from twinme_ops.release.git import GitRepoResource
from twinme_ops.security.findings import ScanError
from twinme_ops.security.npm_source import (
    check_subdir,
    npm_lock,
    remove_stale_checkouts,
    without_credentials,
)


def test_a_folder_with_a_lock_wins_over_git(tmp_path: Path) -> None:
    project = npm_project(tmp_path / "api", {"lodash": "4.17.21"})
    git = GitRepoResource(remote="/nonexistent/remote.git", workdir_root=str(tmp_path / "co"))
    with npm_lock(project, git) as lock:
        assert lock.project == project and lock.commit == ""
        assert lock.source == f"npm: {project}"
    assert not (tmp_path / "co").exists()  # Git was not asked


def test_the_branch_head_is_checked_out_then_removed(tmp_path: Path) -> None:
    pinned = npm_project(tmp_path / "src", {"lodash": "4.17.20"})
    repo = Repo(tmp_path / "git")
    repo.commit("old", {"package.json": "{}"})
    sha = repo.commit("lock", {"package-lock.json": (pinned / "package-lock.json").read_text()})
    repo.push()
    git = GitRepoResource(remote=str(repo.bare), workdir_root=str(tmp_path / "co"))
    with npm_lock(tmp_path / "absent", git) as lock:
        assert lock.commit == sha and lock.source == f"npm: {repo.bare}@{sha}"
        assert (lock.project / "package-lock.json").read_text() == (
            pinned / "package-lock.json"
        ).read_text()
        assert lock.project.parent == tmp_path / "co"
    assert list((tmp_path / "co").iterdir()) == []


def test_a_checkout_left_by_a_killed_run_is_removed_later(tmp_path: Path) -> None:
    old, fresh = tmp_path / "npm-audit-old", tmp_path / "npm-audit-fresh"
    release = tmp_path / ("a" * 40)  # a release checkout: not the audit's to delete
    for folder in (old, fresh, release):
        folder.mkdir()
    os.utime(old, (0, 0))
    os.utime(release, (0, 0))
    assert remove_stale_checkouts(tmp_path) == [old]
    assert fresh.is_dir() and release.is_dir()


def test_an_empty_branch_names_the_fix(tmp_path: Path) -> None:
    repo = Repo(tmp_path / "git")  # nothing pushed: no branch main on the remote
    git = GitRepoResource(remote=str(repo.bare), workdir_root=str(tmp_path / "co"))
    expected = "branch main not found.*Fix: set TWINME_GIT_BRANCH"
    with pytest.raises(ScanError, match=expected), npm_lock(tmp_path / "absent", git):
        pass


@pytest.mark.parametrize("subdir", ["/etc", "../other", "api/../../x"])
def test_a_sub_folder_outside_the_repository_is_refused(subdir: str) -> None:
    with pytest.raises(ScanError, match="TWINME_AUDIT_NPM_SUBDIR.*Fix: give a relative path"):
        check_subdir(subdir)


def test_sub_folders_are_normalized() -> None:
    assert [check_subdir(s) for s in ("", " ", "api/", "services/api")] == [
        "",
        "",
        "api",
        "services/api",
    ]


@pytest.mark.parametrize(
    ("remote", "shown"),
    [
        (
            "https://x-access-token:ghp_s3cret@github.com/twinme/api.git",
            "https://github.com/twinme/api.git",
        ),
        (
            "http://u:ghp_s3cret@127.0.0.1:8080/api.git?token=ghp_s3cret",
            "http://127.0.0.1:8080/api.git",
        ),
        ("ssh://git@github.com/twinme/api.git", "ssh://github.com/twinme/api.git"),
        ("/srv/git/api.git", "/srv/git/api.git"),
    ],
)
def test_the_remote_is_shown_without_credentials(remote: str, shown: str) -> None:
    assert without_credentials(remote, redact(remote)) == shown


def test_a_malformed_remote_falls_back_to_its_redacted_form() -> None:
    remote = "https//user:ghp_s3cret@github.com/twinme/api.git"
    assert "ghp_s3cret" not in without_credentials(remote, redact(remote))
