"""The probe app (tests/support/app_probe): a pushed commit whose tests print their environment and
try to reach what they must not, and how a test pushes it, runs release_job's first steps on it and
reads what it printed. Shared by the local and the Kubernetes app-test runners' tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import dagster as dg

from tests.support.git_repos import Repo
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.defs.release.assets import app_tests, source_checkout
from twinme_ops.defs.release.jobs import release_job
from twinme_ops.release.app_tests.runner import OFFLINE_COMMANDS, AppTestRunner
from twinme_ops.release.git import GitRepoResource

PROBE_APP = Path(__file__).resolve().parent / "app_probe"

# what a production run pod holds (fake values, real shapes): none may reach the pushed code
SECRETS = {
    "DATABASE_URL": "postgresql://twinme_app:Pg-pr0d-s3cret-41c9@db.prod.internal:5432/twinme",
    "REDIS_URL": "redis://:Rd-pr0d-s3cret-41c9@redis.prod.internal:6379/0",
    "AWS_ACCESS_KEY_ID": "AKIAPRODEXAMPLE41C9",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYpr0d41c9",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0PROD/B0PROD/s3cretWebhook41c9",
    "TWINME_BACKUP_ENCRYPTION_KEY": "cHJvZC1iYWNrdXAta2V5LTQxYzktMzItYnl0ZXMtISE=",
    "TWINME_GIT_TOKEN": "ghp_pr0dGitT0ken41c9abcdefghijklmnopqrst",
    "TWINME_GIT_REMOTE": "https://x-access-token:ghp_pr0dGitT0ken41c9@github.com/twinme/api.git",
}
SECRET_VALUES = ["Pg-pr0d-s3cret-41c9", "Rd-pr0d-s3cret-41c9", "AKIAPRODEXAMPLE41C9"]
SECRET_VALUES += ["wJalrXUtnFEMI/K7MDENG/bPxRfiCYpr0d41c9", "s3cretWebhook41c9"]
SECRET_VALUES += [SECRETS["TWINME_BACKUP_ENCRYPTION_KEY"], "ghp_pr0dGitT0ken41c9"]
KUBE_TOKEN = "kube-sa-t0ken-41c9-not-for-pushed-code"
FILE_SECRET = "twinme-home-s3cret-41c9"
# variables the commands may hold: the runner's allowlist, the throwaway servers', npm's own
ALLOWED_NAMES = {"PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "TZ", "CI", "NODE_ENV", "FORCE_COLOR"}
ALLOWED_NAMES |= {"NO_COLOR", "DATABASE_URL", "TEST_DATABASE_URL", "REDIS_URL", "TEST_REDIS_URL"}
ALLOWED_NAMES |= {"PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "INIT_CWD", "PWD"}
ALLOWED_NAMES |= {"NODE", "EDITOR", "COLOR", "SHLVL", "OLDPWD", "_"}


def probe_lines(messages: list[str], prefix: str) -> dict[str, str]:
    """``PROBE <name> <outcome>`` lines of the run's log, as {name: outcome}."""
    found: dict[str, str] = {}
    for message in messages:
        for line in message.splitlines():
            if line.startswith(f"{prefix} "):
                name, _, outcome = line[len(prefix) + 1 :].partition(" ")
                found[name] = outcome
    return found


def environments(messages: list[str]) -> dict[str, dict[str, str]]:
    """The environments the probe printed (``ENVHEX [install-]<hex>``), decoded."""
    envs: dict[str, dict[str, str]] = {}
    for message in messages:
        for line in message.splitlines():
            if line.startswith("ENVHEX "):
                payload = line.split(" ", 1)[1]
                who = "install" if payload.startswith("install-") else "test"
                envs[who] = json.loads(bytes.fromhex(payload.removeprefix("install-")))
    return envs


def push_probe(repo: Repo, targets: dict[str, Any], extra: dict[str, str] | None = None) -> str:
    """Commit the probe app with its hardcoded targets (and ``extra`` files); push; the sha."""
    shutil.copytree(PROBE_APP, repo.work, dirs_exist_ok=True)
    files = {"test/targets.json": json.dumps(targets, indent=2), **(extra or {})}
    sha = repo.commit("probe", files)
    repo.push()
    return sha


def release(
    repo: Repo, checkouts: Path, sha: str, runner: AppTestRunner
) -> tuple[dg.ExecuteInProcessResult, list[str]]:
    """``release_job``'s first two steps on ``sha``; (result, every log message of the run)."""
    defs = dg.Definitions(
        assets=[source_checkout, app_tests],
        jobs=[release_job],
        resources={
            "git": GitRepoResource(remote=str(repo.bare), workdir_root=str(checkouts)),
            "slack": SlackNotifier(webhook_url=""),
            "app_test_runner": runner,
        },
    )
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
    return result, [e.user_message for e in instance.all_logs(result.run_id)]
