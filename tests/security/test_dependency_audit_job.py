"""dependency_audit_job as the code location runs it: settings from TWINME_AUDIT_*, Slack from
SLACK_WEBHOOK_URL, the job's failure hook when an advisory database is unreachable."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from tests.support.advisory_server import AdvisoryServer, NpmAdvisory, npm_project
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.definitions import build_definitions

LODASH_GHSA = "GHSA-35jh-r3h4-6jhm"


def _environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, server: AdvisoryServer, slack: SlackReceiver
) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("idna==3.7\n")
    project = npm_project(tmp_path / "api", {"lodash": "4.17.20"})
    for name, value in {
        "TWINME_ENV": "local",
        "TWINME_HOME": str(tmp_path / "home"),
        "SLACK_WEBHOOK_URL": slack.url,
        "TWINME_AUDIT_PYTHON_LOCK": str(lock),
        "TWINME_AUDIT_NPM_PROJECT": str(project),
        "TWINME_AUDIT_OSV_URL": server.osv_query_url,
        "TWINME_AUDIT_NPM_REGISTRY": f"{server.url}/",
    }.items():
        monkeypatch.setenv(name, value)


def _run() -> dg.ExecuteInProcessResult:
    job = build_definitions().resolve_job_def("dependency_audit_job")
    return job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)


def test_the_weekly_job_audits_what_the_environment_names(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    advisory_server: AdvisoryServer,
    slack_receiver: SlackReceiver,
) -> None:
    _environment(monkeypatch, tmp_path, advisory_server, slack_receiver)
    advisory_server.npm.append(
        NpmAdvisory(1, "lodash", ["4.17.20"], "<4.17.21", "critical", "Injection", LODASH_GHSA)
    )
    advisory_server.npm_versions["lodash"] = ["4.17.20", "4.17.21"]
    defs = build_definitions()
    schedule = defs.resolve_schedule_def("dependency_audit_schedule")
    assert schedule.job_name == "dependency_audit_job"
    result = _run()
    assert result.success
    [text] = slack_receiver.messages
    assert "1 at or above high" in text and f"critical {LODASH_GHSA}" in text
    assert "dependency_audit_job" in str(slack_receiver.payloads[0]["blocks"])


def test_an_unreachable_database_fails_the_job_and_slack_hears_it(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    advisory_server: AdvisoryServer,
    slack_receiver: SlackReceiver,
) -> None:
    _environment(monkeypatch, tmp_path, advisory_server, slack_receiver)
    monkeypatch.setenv("TWINME_AUDIT_OSV_URL", "http://127.0.0.1:9/v1/query")
    # a private registry mirror with a token in its URL: never shown anywhere
    monkeypatch.setenv("TWINME_AUDIT_NPM_REGISTRY", "http://ci:npm-t0ken-4u2c@127.0.0.1:9/")
    result = _run()
    assert not result.success
    [text] = slack_receiver.messages
    assert "dependency audit incomplete (Python and npm scan failed)" in text
    logged = [str(event) for event in result.all_events]
    assert not any("npm-t0ken-4u2c" in line for line in [*logged, *map(str, slack_receiver.raw)])
