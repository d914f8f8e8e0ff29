"""The API's package-lock.json read from its Git repository when the image has no copy of it.

A real bare repository behind ``git http-backend`` that wants a token (the remote URL carries it,
as GitHub's does), a real npm audit against the local advisory database, a real Slack receiver:
the finding is reported with the audited commit, and the token appears nowhere.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from tests.support.advisory_server import AdvisoryServer, NpmAdvisory, npm_project
from tests.support.git_http import GIT_TOKEN, GitHttpServer
from tests.support.git_repos import Repo
from tests.support.run_results import failure_description, materialized_metadata
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.definitions import build_definitions
from twinme_ops.defs.security.assets import dependency_audit
from twinme_ops.defs.security.sboms import image_sboms
from twinme_ops.release.git import GitRepoResource
from twinme_ops.security.settings import DependencyAuditSettings

LODASH_GHSA = "GHSA-35jh-r3h4-6jhm"


def _api_repo(tmp_path: Path, subdir: str = "") -> tuple[Repo, str]:
    """The API's repository (bare, served under /git/remote.git) whose branch head pins a
    vulnerable lodash in ``subdir``'s package-lock.json."""
    pinned = npm_project(tmp_path / "lock-src", {"lodash": "4.17.20", "left-pad": "1.3.0"})
    prefix = f"{subdir}/" if subdir else ""
    repo = Repo(tmp_path / "git")
    repo.commit("README", {"README.md": "TwinMe API\n"})
    sha = repo.commit(
        "pin dependencies",
        {
            f"{prefix}package.json": (pinned / "package.json").read_text(),
            f"{prefix}package-lock.json": (pinned / "package-lock.json").read_text(),
        },
    )
    repo.push()
    return repo, sha


def _database(server: AdvisoryServer) -> None:
    server.npm.append(
        NpmAdvisory(
            1523, "lodash", ["4.17.20"], "<4.17.21", "high", "Command Injection", LODASH_GHSA
        )
    )
    server.npm_versions.update({"lodash": ["4.17.20", "4.17.21"], "left-pad": ["1.3.0"]})


def _settings(tmp_path: Path, server: AdvisoryServer, **overrides: Any) -> DependencyAuditSettings:
    lock = tmp_path / "requirements.lock"
    lock.write_text("idna==3.7\n")
    values: dict[str, Any] = {
        "python_lock": str(lock),
        # what production has: no API folder in the code location image
        "npm_project": str(tmp_path / "examples" / "twinme-api"),
        "osv_url": server.osv_query_url,
        "npm_registry": f"{server.url}/",
        "timeout_s": 5,
        **overrides,
    }
    return DependencyAuditSettings(**values)


def _audit(
    tmp_path: Path,
    server: AdvisoryServer,
    slack: SlackReceiver,
    remote: str,
    instance: dg.DagsterInstance,
    **overrides: Any,
) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        [dependency_audit],
        resources={
            "dependency_audit_settings": _settings(tmp_path, server, **overrides),
            "slack": SlackNotifier(webhook_url=slack.url, max_retries=0),
            "git": GitRepoResource(remote=remote, workdir_root=str(tmp_path / "checkouts")),
        },
        instance=instance,
        raise_on_error=False,
    )


def _everything_shown(
    instance: dg.DagsterInstance, run_id: str, slack: SlackReceiver | None = None
) -> str:
    """Every log line, event and metadata value of the run, and every Slack request body."""
    records = instance.all_logs(run_id)
    bodies = slack.raw if slack else []
    return "\n".join([*(str(r) for r in records), *(str(body) for body in bodies)])


def test_without_a_lock_in_the_image_the_branch_head_is_audited(
    tmp_path: Path,
    advisory_server: AdvisoryServer,
    slack_receiver: SlackReceiver,
    git_http_server: GitHttpServer,
) -> None:
    _, sha = _api_repo(tmp_path)
    _database(advisory_server)
    remote = git_http_server.url("git/remote.git")
    assert GIT_TOKEN in remote
    with dg.DagsterInstance.ephemeral() as instance:
        result = _audit(tmp_path, advisory_server, slack_receiver, remote, instance)
        assert result.success, failure_description(result)
        meta = materialized_metadata(result)
        shown = _everything_shown(instance, result.run_id, slack_receiver)
    assert (
        meta["npm_source"]
        == f"npm: {git_http_server.url('git/remote.git', with_token=False)}@{sha}"
    )
    row = next(line for line in meta["findings"].splitlines() if LODASH_GHSA in line)
    assert "lodash" in row and "4.17.21" in row
    assert meta["npm_packages"] == 2
    # the alert names the finding and the audited commit
    [text] = slack_receiver.messages
    assert LODASH_GHSA in text and f"commit {sha}" in text
    # git authenticated with the token (asked without, then with it), and it was never shown
    assert any(r.endswith(" 401") for r in git_http_server.requests)
    assert any("git-upload-pack 200" in r for r in git_http_server.requests)
    assert sha in shown and GIT_TOKEN not in shown
    # the checkout is gone: nothing left under the Git resource's work directory
    assert list((tmp_path / "checkouts").iterdir()) == []


def test_a_lock_in_a_sub_folder_is_found_once_configured(
    tmp_path: Path,
    advisory_server: AdvisoryServer,
    slack_receiver: SlackReceiver,
    git_http_server: GitHttpServer,
) -> None:
    _, sha = _api_repo(tmp_path, subdir="services/api")
    _database(advisory_server)
    remote = git_http_server.url("git/remote.git")
    with dg.DagsterInstance.ephemeral() as instance:
        missing = _audit(tmp_path, advisory_server, slack_receiver, remote, instance)
        found = _audit(
            tmp_path, advisory_server, slack_receiver, remote, instance, npm_subdir="services/api"
        )
    assert not missing.success
    error = failure_description(missing)
    assert f"commit {sha}" in error and "no package-lock.json at its root" in error
    assert "Fix: set TWINME_AUDIT_NPM_SUBDIR" in error and GIT_TOKEN not in error
    assert found.success, failure_description(found)
    assert materialized_metadata(found)["npm_source"].endswith(f"@{sha}")
    assert list((tmp_path / "checkouts").iterdir()) == []


def test_neither_a_folder_nor_a_remote_names_both_fixes(
    tmp_path: Path, advisory_server: AdvisoryServer, slack_receiver: SlackReceiver
) -> None:
    with dg.DagsterInstance.ephemeral() as instance:
        result = _audit(tmp_path, advisory_server, slack_receiver, "", instance)
    assert not result.success
    error = failure_description(result)
    assert "npm: " in error and "package-lock.json not found" in error
    assert "TWINME_AUDIT_NPM_PROJECT" in error and "TWINME_GIT_REMOTE" in error


def test_a_refused_token_fails_with_the_fix_and_is_not_shown(
    tmp_path: Path,
    advisory_server: AdvisoryServer,
    slack_receiver: SlackReceiver,
    git_http_server: GitHttpServer,
) -> None:
    _api_repo(tmp_path)
    wrong = "ghp_revoked-t0ken-77Qa"
    remote = git_http_server.url("git/remote.git").replace(GIT_TOKEN, wrong)
    with dg.DagsterInstance.ephemeral() as instance:
        result = _audit(tmp_path, advisory_server, slack_receiver, remote, instance)
        shown = _everything_shown(instance, result.run_id, slack_receiver)
    assert not result.success
    error = failure_description(result)
    assert "could not be read from Git" in error and "Fix: check TWINME_GIT_REMOTE" in error
    assert wrong not in error and wrong not in shown


def test_the_weekly_job_reads_the_git_resource_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    advisory_server: AdvisoryServer,
    slack_receiver: SlackReceiver,
    git_http_server: GitHttpServer,
) -> None:
    _, sha = _api_repo(tmp_path)
    _database(advisory_server)
    lock = tmp_path / "requirements.lock"
    lock.write_text("idna==3.7\n")
    for name, value in {
        "TWINME_ENV": "local",
        "TWINME_HOME": str(tmp_path / "home"),
        "SLACK_WEBHOOK_URL": slack_receiver.url,
        "TWINME_AUDIT_PYTHON_LOCK": str(lock),
        "TWINME_AUDIT_NPM_PROJECT": str(tmp_path / "not-in-the-image"),
        "TWINME_AUDIT_OSV_URL": advisory_server.osv_query_url,
        "TWINME_AUDIT_NPM_REGISTRY": f"{advisory_server.url}/",
        "TWINME_GIT_REMOTE": git_http_server.url("git/remote.git"),
        "TWINME_GIT_BRANCH": "main",
    }.items():
        monkeypatch.setenv(name, value)
    job = build_definitions().resolve_job_def("dependency_audit_job")
    with dg.DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        assert result.success, failure_description(result)
        shown = _everything_shown(instance, result.run_id, slack_receiver)
    [text] = slack_receiver.messages
    assert LODASH_GHSA in text and f"commit {sha}" in text
    assert GIT_TOKEN not in shown
    assert list((tmp_path / "home" / "checkouts").iterdir()) == []


def test_the_api_sbom_describes_the_branch_head(
    tmp_path: Path,
    advisory_server: AdvisoryServer,
    git_http_server: GitHttpServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DAGSTER_CURRENT_IMAGE", raising=False)
    _, sha = _api_repo(tmp_path)
    repo_lock = Path(__file__).resolve().parents[2] / "deploy" / "dagster" / "requirements.lock"
    remote = git_http_server.url("git/remote.git")
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [image_sboms],
            resources={
                "dependency_audit_settings": _settings(
                    tmp_path, advisory_server, python_lock=str(repo_lock)
                ),
                "git": GitRepoResource(remote=remote, workdir_root=str(tmp_path / "checkouts")),
            },
            run_config={"ops": {"image_sboms": {"config": {"tls_verify": False}}}},
            instance=instance,
            raise_on_error=False,
        )
        shown = _everything_shown(instance, result.run_id)
    # no image to attach it to here: the run fails after generating and validating both SBOMs
    assert "no image is known" in failure_description(result)
    [event] = [e for e in result.all_events if e.is_step_failure]
    data = event.step_failure_data
    assert data is not None and data.user_failure_data is not None
    meta: dict[str, Any] = {k: v.value for k, v in data.user_failure_data.metadata.items()}
    assert meta["api_source"].endswith(f"/git/remote.git@{sha}")
    assert meta["api_components"] == 2
    assert GIT_TOKEN not in shown + json.dumps(meta)
    assert list((tmp_path / "checkouts").iterdir()) == []
