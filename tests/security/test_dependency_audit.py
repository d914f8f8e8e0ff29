"""The weekly dependency audit against a real advisory database on 127.0.0.1.

pip-audit and npm audit run for real (subprocesses), pointed at ``advisory_server`` (OSV's and
npm's APIs); Slack is a real HTTP receiver. The Python lock and the API's package-lock pin known
vulnerable versions.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from tests.support.advisory_server import (
    AdvisoryServer,
    NpmAdvisory,
    npm_project,
    osv_vuln,
)
from tests.support.run_results import failure_description, materialized_metadata
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.defs.security.assets import dependency_audit
from twinme_ops.release.git import GitRepoResource
from twinme_ops.security.settings import DependencyAuditSettings

REQUESTS_GHSA = "GHSA-9wx4-h78v-vm56"  # requests 2.31.0, moderate, fixed in 2.32.0
URLLIB3_GHSA = "GHSA-34jh-p97f-mpxf"  # urllib3 1.26.5, high in this test's database
LODASH_GHSA = "GHSA-35jh-r3h4-6jhm"  # lodash 4.17.20, high, fixed in 4.17.21


def _python_lock(tmp_path: Path) -> Path:
    lock = tmp_path / "requirements.lock"
    lock.write_text("requests==2.31.0\nurllib3==1.26.5\nidna==3.7\n")
    return lock


def _database(server: AdvisoryServer, high: bool = True) -> None:
    server.osv.append(
        osv_vuln(
            "PYSEC-2024-1",
            "requests",
            ["2.31.0"],
            "2.32.0",
            "MODERATE",
            aliases=("CVE-2024-35195", REQUESTS_GHSA),
        )
    )
    server.osv.append(osv_vuln(REQUESTS_GHSA, "requests", ["2.31.0"], "2.32.0", "MODERATE"))
    server.npm_versions.update({"lodash": ["4.17.20", "4.17.21"], "left-pad": ["1.3.0"]})
    if high:
        server.osv.append(osv_vuln(URLLIB3_GHSA, "urllib3", ["1.26.5"], "1.26.18", "HIGH"))
        server.npm.append(
            NpmAdvisory(
                1523, "lodash", ["4.17.20"], "<4.17.21", "high", "Command Injection", LODASH_GHSA
            )
        )


def _materialize(
    tmp_path: Path,
    server: AdvisoryServer,
    slack: SlackReceiver,
    instance: dg.DagsterInstance | None = None,
    **overrides: str,
) -> dg.ExecuteInProcessResult:
    project = npm_project(tmp_path / "api", {"lodash": "4.17.20", "left-pad": "1.3.0"})
    settings: dict[str, Any] = {
        "python_lock": str(_python_lock(tmp_path)),
        "npm_project": str(project),
        "osv_url": server.osv_query_url,
        "npm_registry": f"{server.url}/",
        "timeout_s": 5,
        **overrides,
    }
    return dg.materialize(
        [dependency_audit],
        resources={
            "dependency_audit_settings": DependencyAuditSettings(**settings),
            "slack": SlackNotifier(webhook_url=slack.url, max_retries=0),
            "git": GitRepoResource(workdir_root=str(tmp_path / "checkouts")),
        },
        instance=instance,
        raise_on_error=False,
    )


def test_vulnerable_pins_are_reported_and_page(
    tmp_path: Path, advisory_server: AdvisoryServer, slack_receiver: SlackReceiver
) -> None:
    _database(advisory_server)
    result = _materialize(tmp_path, advisory_server, slack_receiver)
    assert result.success
    meta = materialized_metadata(result)
    table = meta["findings"]
    for ghsa, package, fixed in (
        (REQUESTS_GHSA, "requests", "2.32.0"),
        (URLLIB3_GHSA, "urllib3", "1.26.18"),
        (LODASH_GHSA, "lodash", "4.17.21"),
    ):
        row = next(line for line in table.splitlines() if ghsa in line)
        assert package in row and fixed in row
    assert (meta["findings_high"], meta["findings_moderate"], meta["findings_total"]) == (2, 1, 3)
    assert (meta["python_packages"], meta["npm_packages"]) == (3, 2)
    assert "pip-audit" in meta["reached"] and advisory_server.url in meta["reached"]
    # what the scanners really asked: each Python pin, then the npm bulk endpoint
    assert advisory_server.requests.count("POST /v1/query") == 3
    assert "POST /-/npm/v1/security/advisories/bulk" in advisory_server.requests
    # one alert, naming the two high findings with their fix, not the moderate one as severe
    [text] = slack_receiver.messages
    assert "2 at or above high" in text
    assert URLLIB3_GHSA in text and LODASH_GHSA in text and "fixed in 4.17.21" in text
    severe_part = text.split("All findings")[0]
    assert REQUESTS_GHSA not in severe_part
    today = datetime.now(UTC).date().isoformat()
    assert set(meta["first_seen"].values()) == {today}


def test_below_threshold_findings_do_not_page(
    tmp_path: Path, advisory_server: AdvisoryServer, slack_receiver: SlackReceiver
) -> None:
    _database(advisory_server, high=False)
    result = _materialize(tmp_path, advisory_server, slack_receiver)
    assert result.success
    meta = materialized_metadata(result)
    assert (meta["findings_moderate"], meta["findings_total"], meta["paging"]) == (1, 1, 0)
    assert slack_receiver.messages == []


def test_threshold_is_configurable(
    tmp_path: Path,
    advisory_server: AdvisoryServer,
    slack_receiver: SlackReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _database(advisory_server, high=False)
    monkeypatch.setenv("TWINME_AUDIT_FAIL_SEVERITY", "moderate")
    assert _materialize(tmp_path, advisory_server, slack_receiver).success
    [text] = slack_receiver.messages
    assert "1 at or above moderate" in text and REQUESTS_GHSA in text


def test_finding_unfixed_past_the_deadline_pages(
    tmp_path: Path, advisory_server: AdvisoryServer, slack_receiver: SlackReceiver
) -> None:
    _database(advisory_server, high=False)
    long_ago = (datetime.now(UTC).date() - timedelta(days=45)).isoformat()
    with dg.instance_for_test() as instance:
        # what last week's audit recorded: requests' advisory first seen 45 days ago
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                "dependency_audit",
                metadata={
                    "first_seen": dg.MetadataValue.json(
                        {f"PyPI:requests:{REQUESTS_GHSA}": long_ago}
                    )
                },
            )
        )
        result = _materialize(tmp_path, advisory_server, slack_receiver, instance=instance)
    assert result.success
    assert materialized_metadata(result)["first_seen"] == {
        f"PyPI:requests:{REQUESTS_GHSA}": long_ago
    }
    [text] = slack_receiver.messages
    assert "unfixed for more than 30 days" in text and f"seen since {long_ago}" in text


def test_unreachable_osv_fails_the_asset(
    tmp_path: Path, advisory_server: AdvisoryServer, slack_receiver: SlackReceiver
) -> None:
    _database(advisory_server)
    result = _materialize(
        tmp_path, advisory_server, slack_receiver, osv_url="http://127.0.0.1:9/v1/query"
    )
    assert not result.success
    message = failure_description(result)
    assert "pip-audit could not audit" in message and "127.0.0.1:9" in message
    assert "Fix:" in message and "no result is reported" in message
    assert result.get_asset_materialization_events() == []
    assert slack_receiver.messages == []  # the job's failure hook reports it, not a findings alert


def test_unreachable_npm_advisories_fail_without_leaking_credentials(
    tmp_path: Path, advisory_server: AdvisoryServer, slack_receiver: SlackReceiver
) -> None:
    _database(advisory_server)
    result = _materialize(
        tmp_path,
        advisory_server,
        slack_receiver,
        npm_registry="http://audit:s3cr3t-token@127.0.0.1:9/",
    )
    assert not result.success
    message = failure_description(result)
    assert "npm audit could not reach the advisory database" in message
    assert "ECONNREFUSED" in message and "Fix:" in message
    assert "s3cr3t-token" not in message
    assert result.get_asset_materialization_events() == []


def test_bad_threshold_names_the_fix(
    tmp_path: Path,
    advisory_server: AdvisoryServer,
    slack_receiver: SlackReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TWINME_AUDIT_FAIL_SEVERITY", "severe")
    result = _materialize(tmp_path, advisory_server, slack_receiver)
    message = failure_description(result)
    assert "TWINME_AUDIT_FAIL_SEVERITY='severe' is not a severity" in message
    assert "Fix: set it to one of info, low, moderate, high, critical" in message
    assert advisory_server.requests == []


def test_every_package_of_the_image_lock_is_audited(advisory_server: AdvisoryServer) -> None:
    """The real lock (hashes, extras such as gql[requests]): each pin is asked, none skipped."""
    from twinme_ops.security.python_audit import audit_python_lock

    lock = Path(__file__).resolve().parents[2] / "deploy" / "dagster" / "requirements.lock"
    pins = [ln for ln in lock.read_text().splitlines() if "==" in ln and ln[0].isalpha()]
    report = audit_python_lock(lock, advisory_server.osv_query_url)
    assert report.packages == len(pins) > 100
    assert advisory_server.requests.count("POST /v1/query") == len(pins)
    assert report.findings == []
