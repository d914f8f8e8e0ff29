"""Release trigger and first steps against real Git: a bare repository, a clone, real pushes.

The release job runs the sample app's (examples/twinme-api) own tests with the real ``npm`` and
``node`` (Node >= 18 must be on PATH); ``npm audit`` is left out because it needs the registry.
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest

from tests.support.git_repos import Repo, tick
from tests.support.list_log import ListLog
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.defs.release.assets import app_tests, source_checkout
from twinme_ops.defs.release.jobs import release_job
from twinme_ops.release.app_tests.local import LocalAppTestRunner
from twinme_ops.release.app_tests.runner import OFFLINE_COMMANDS, AppTestsFailed, run_commands
from twinme_ops.release.git import GitError, GitRepoResource


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "git")


def resource(repo: Repo, tmp_path: Path) -> GitRepoResource:
    return GitRepoResource(remote=str(repo.bare), workdir_root=str(tmp_path / "checkouts"))


def test_a_push_releases_once(repo: Repo, tmp_path: Path) -> None:
    sha = repo.commit("first")
    repo.push()
    git_resource = resource(repo, tmp_path)
    result, cursor = tick(git_resource)
    assert isinstance(result, dg.RunRequest)
    assert result.run_key == sha
    assert result.tags["twinme/sha"] == sha
    assert result.run_config == {"ops": {"source_checkout": {"config": {"sha": sha}}}}
    assert cursor == sha
    again, cursor_after = tick(git_resource, cursor)
    assert isinstance(again, dg.SkipReason)
    assert "no new commit" in (again.skip_message or "")
    assert cursor_after == sha


def test_a_burst_of_pushes_releases_the_newest(repo: Repo, tmp_path: Path) -> None:
    repo.commit("first")
    repo.push()
    git_resource = resource(repo, tmp_path)
    _, cursor = tick(git_resource)
    shas = []
    for i in range(3):
        shas.append(repo.commit(f"burst {i}"))
        repo.push()
    result, cursor = tick(git_resource, cursor)
    assert isinstance(result, dg.RunRequest)
    assert result.run_key == shas[-1]
    assert cursor == shas[-1]


def test_unconfigured_remote_skips(tmp_path: Path) -> None:
    result, cursor = tick(GitRepoResource(remote="", workdir_root=str(tmp_path)))
    assert isinstance(result, dg.SkipReason)
    assert "TWINME_GIT_REMOTE" in (result.skip_message or "")
    assert cursor is None


def test_missing_branch_skips(repo: Repo, tmp_path: Path) -> None:
    result, _ = tick(resource(repo, tmp_path))  # nothing pushed yet
    assert isinstance(result, dg.SkipReason)
    assert "branch main not found" in (result.skip_message or "")


def test_unreachable_remote_skips_with_a_redacted_reason(tmp_path: Path) -> None:
    remote = "https://user:tok3n@127.0.0.1:1/x.git"
    git_resource = GitRepoResource(remote=remote, workdir_root=str(tmp_path))
    result, cursor = tick(git_resource, "0" * 40)
    assert isinstance(result, dg.SkipReason)
    message = result.skip_message or ""
    assert "unreachable" in message and "127.0.0.1" in message
    assert "TWINME_GIT_REMOTE" in message  # says what to fix
    assert "tok3n" not in message
    assert cursor == "0" * 40
    with pytest.raises(GitError) as excinfo:
        git_resource.checkout("a" * 40, tmp_path / "co")
    assert "tok3n" not in str(excinfo.value)


def test_checkout_is_exactly_the_sha_and_clean(repo: Repo, tmp_path: Path) -> None:
    first = repo.commit("first", {"a.txt": "one"})
    repo.commit("second", {"a.txt": "two"})
    repo.push()
    git_resource = resource(repo, tmp_path)
    dest = tmp_path / "co"
    dest.mkdir()
    (dest / "stale.txt").write_text("left over")
    path = git_resource.checkout(first, dest)  # not the branch head
    assert git_resource.head(path) == first
    assert (path / "a.txt").read_text() == "one"
    assert not (path / "stale.txt").exists()
    # the remote (which may carry a token) is not stored in the checkout
    assert str(repo.bare) not in (path / ".git" / "config").read_text()
    with pytest.raises(GitError, match="not a full commit id"):
        git_resource.checkout("main", dest)


def test_old_checkouts_are_pruned_but_never_the_current_one(repo: Repo, tmp_path: Path) -> None:
    shas = []
    for n in range(4):
        shas.append(repo.commit(f"c{n}", {"n.txt": str(n)}))
    repo.push()
    git_resource = GitRepoResource(
        remote=str(repo.bare), workdir_root=str(tmp_path / "checkouts"), keep_checkouts=2
    )
    for n, sha in enumerate(shas):
        path = git_resource.checkout(sha, tmp_path / "checkouts" / sha)
        os.utime(path, (1_000_000 + n, 1_000_000 + n))  # mtime order = release order
    (tmp_path / "checkouts" / "notes").mkdir()  # not a checkout: never touched
    removed = git_resource.prune_checkouts(tmp_path / "checkouts" / shas[-1])
    assert sorted(p.name for p in removed) == sorted(shas[:2])
    left = {p.name for p in (tmp_path / "checkouts").iterdir()}
    assert left == {shas[2], shas[3], "notes"}
    # the current checkout survives even when it is the oldest
    os.utime(tmp_path / "checkouts" / shas[3], (1, 1))
    git_resource.model_copy(update={"keep_checkouts": 1}).prune_checkouts(
        tmp_path / "checkouts" / shas[3]
    )
    assert (tmp_path / "checkouts" / shas[3]).is_dir()


def test_run_commands_streams_and_stops_at_the_first_failure(tmp_path: Path) -> None:
    lines = ListLog()

    with pytest.raises(AppTestsFailed) as excinfo:
        run_commands(["echo hello", "sh -c 'echo boom; exit 3'", "echo never"], tmp_path, log=lines)
    assert "hello" in lines and "boom" in lines and "never" not in lines
    error = excinfo.value
    assert error.failed.exit_code == 3
    assert "sh -c 'echo boom; exit 3'" in str(error) and "code 3" in str(error)
    assert "boom" in str(error)
    assert [r.ok for r in error.results] == [True, False]
    with pytest.raises(AppTestsFailed, match="timed out"):
        run_commands(["sleep 30"], tmp_path, log=lines, timeout=0.5)


def release_defs(repo: Repo, tmp_path: Path, slack: SlackReceiver) -> dg.Definitions:
    return dg.Definitions(
        assets=[source_checkout, app_tests],
        jobs=[release_job],
        resources={
            "git": resource(repo, tmp_path),
            "slack": SlackNotifier(webhook_url=slack.url, max_retries=0),
            "app_test_runner": LocalAppTestRunner(),
        },
    )


def run_release(defs: dg.Definitions, sha: str) -> tuple[dg.ExecuteInProcessResult, list[str]]:
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def("release_job").execute_in_process(
        run_config={
            "ops": {
                "source_checkout": {"config": {"sha": sha}},
                "app_tests": {"config": {"commands": list(OFFLINE_COMMANDS)}},
            }
        },
        instance=instance,
        raise_on_error=False,
    )
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    return result, messages


def test_release_job_checks_out_the_sha_and_runs_the_app_tests(
    repo: Repo, tmp_path: Path, slack_receiver: SlackReceiver
) -> None:
    sha = repo.add_sample_app()
    repo.commit("later commit, not released", {"NOTES.md": "x"})
    repo.push()
    result, messages = run_release(release_defs(repo, tmp_path, slack_receiver), sha)
    assert result.success
    checkout = result.asset_materializations_for_node("source_checkout")[0].metadata
    assert checkout["sha"].value == sha
    path = Path(str(checkout["checkout_path"].value))
    assert path == tmp_path / "checkouts" / sha
    assert not (path / "NOTES.md").exists()
    tests = result.asset_materializations_for_node("app_tests")[0].metadata
    assert tests["sha"].value == sha
    for command in OFFLINE_COMMANDS:
        assert f"duration_s: {command}" in tests
    # node --test's TAP output reached the run's logs (the lines printed together: one message)
    assert any(line.startswith("# pass 3") for m in messages for line in m.splitlines())
    assert any(m == "$ npm run test:integration" for m in messages)
    assert slack_receiver.messages == []


def test_failing_app_tests_stop_the_release_and_alert_slack(
    repo: Repo, tmp_path: Path, slack_receiver: SlackReceiver
) -> None:
    repo.add_sample_app()
    sha = repo.commit(
        "break the unit tests",
        {
            "test/unit.test.js": (
                "const test = require('node:test');\n"
                "const assert = require('node:assert/strict');\n"
                "test('broken on purpose', () => assert.equal(1, 2));\n"
            )
        },
    )
    repo.push()
    result, messages = run_release(release_defs(repo, tmp_path, slack_receiver), sha)
    assert not result.success
    failed = [e for e in result.all_events if e.is_step_failure]
    assert [e.step_key for e in failed] == ["app_tests"]
    assert result.asset_materializations_for_node("app_tests") == []
    error = failed[0].step_failure_data.error
    assert error is not None and "`npm run test:ci` exited with code 1" in error.message
    assert any("broken on purpose" in m for m in messages)
    assert not any(m == "$ npm run test:integration" for m in messages)
    assert len(slack_receiver.messages) == 1
    alert = slack_receiver.messages[0]
    assert "release_job FAILED" in alert and "app_tests" in alert
    assert "npm run test:ci" in alert
