"""The rules of access control without a webserver: tokens, the policy file, what a GraphQL
request changes, the approval record, the approval wait and the audit file."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from tests.support.access_fixtures import GROUPS, IdentityProvider
from tests.support.list_log import ListLog
from twinme_ops.access import approvals
from twinme_ops.access.audit import AuditLog, read_records
from twinme_ops.access.mutations import RequestRefused, judge, mutation_fields, stamp_launches
from twinme_ops.access.policy import PolicyError, load_policy
from twinme_ops.access.recovery_gate import ApprovalTimeout, wait_for_approval
from twinme_ops.access.tokens import TokenVerifier, Unauthenticated

REPO = Path(__file__).resolve().parents[2]
DAY = timedelta(days=1)
RUN = "11111111-2222-3333-4444-555555555555"


@pytest.fixture(scope="module")
def idp() -> object:
    provider = IdentityProvider()
    yield provider
    provider.close()


def _verifier(idp: IdentityProvider, tmp_path: Path) -> TokenVerifier:
    return TokenVerifier(load_policy(idp.write_policy(tmp_path / "p.yaml", tmp_path / "a.log")))


def test_a_token_from_the_provider_names_the_person_and_their_roles(
    idp: IdentityProvider, tmp_path: Path
) -> None:
    verifier = _verifier(idp, tmp_path)
    token = idp.token("ana@twinme.ai", GROUPS["operator"] + GROUPS["recovery_approver"] + ["x"])
    who = verifier.identity(f"Bearer {token}")
    assert (who.user, who.roles) == ("ana@twinme.ai", ("operator", "recovery_approver"))
    assert who.may("launch") and who.may("approve") and not who.may("forbidden")
    nobody = verifier.identity(f"Bearer {idp.token('x@twinme.ai', ['marketing'])}")
    assert nobody.roles == () and not nobody.may("view")


@pytest.mark.parametrize(
    "header",
    [
        "Bearer hunter2-secret-value",
        "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.",  # alg "none"
        "Bearer a.b.c-hunter2",
    ],
)
def test_a_malformed_token_is_refused_without_echoing_it(
    idp: IdentityProvider, tmp_path: Path, header: str
) -> None:
    verifier = _verifier(idp, tmp_path)
    with pytest.raises(Unauthenticated) as caught:
        verifier.identity(header)
    token = header.split(" ", 1)[1]
    assert token not in str(caught.value) and "hunter2" not in str(caught.value)


def test_the_committed_policy_loads_and_a_wrong_one_says_what_to_fix(tmp_path: Path) -> None:
    policy = load_policy(REPO / "deploy/dagster/access.yaml")
    assert set(policy.roles) == {"viewer", "operator", "recovery_approver"}
    with pytest.raises(PolicyError, match="does not exist. Fix: point TWINME_ACCESS_POLICY"):
        load_policy(tmp_path / "missing.yaml")
    raw = yaml.safe_load((REPO / "deploy/dagster/access.yaml").read_text())
    raw["roles"]["admin"] = ["everyone"]
    raw["oidc"]["jwks_url"] = "https://user:s3cret-pass@sso.example/certs"
    raw["oidc"]["leeway_s"] = "lots"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(PolicyError) as caught:
        load_policy(bad)
    message = str(caught.value)
    assert "roles.admin" in message and "oidc.leeway_s" in message
    assert "s3cret-pass" not in message


def test_the_production_webserver_refuses_to_start_without_a_policy() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TWINME_ACCESS_POLICY"}
    env["TWINME_ENV"] = "production"
    result = subprocess.run(
        ["twinme-ops-webserver", "-w", str(REPO / "workspace.yaml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "never runs without access control" in result.stderr


LAUNCH = "mutation L($p: ExecutionParams!) { launchRun(executionParams: $p) { __typename } }"


def test_a_launch_is_stamped_with_the_verified_person_and_loses_forged_tags() -> None:
    forged = [
        {"key": "twinme/launched_by", "value": "mallory"},
        {"key": "twinme/approved_by", "value": "mallory"},
        {"key": "twinme/approved_run", "value": RUN},
        {"key": "dagster/partition", "value": "2026-12-04"},
    ]
    params = {
        "selector": {"jobName": "recover_job"},
        "runConfigData": {"ops": {}},
        "executionMetadata": {"tags": forged},
    }
    judged = judge({"query": LAUNCH, "variables": {"p": params}})
    (change,) = judged.changes
    assert (change.action, change.job) == ("launch", "recover_job")
    body = stamp_launches(judged, mutation_fields(judged), "olga@twinme.ai")
    tags = body["variables"]["p"]["executionMetadata"]["tags"]
    assert tags == [
        {"key": "dagster/partition", "value": "2026-12-04"},
        {"key": "twinme/launched_by", "value": "olga@twinme.ai"},
    ]
    reexec = (
        "mutation R($r: ReexecutionParams) { launchRunReexecution(reexecutionParams: $r) "
        "{ __typename } }"
    )
    judged = judge({"query": reexec, "variables": {"r": {"parentRunId": RUN, "strategy": "ALL"}}})
    body = stamp_launches(judged, mutation_fields(judged), "olga@twinme.ai")
    assert body["variables"]["r"]["extraTags"] == [
        {"key": "twinme/launched_by", "value": "olga@twinme.ai"}
    ]
    assert judged.changes[0].run_ids == [RUN]


def test_launch_parameters_written_inline_are_refused_not_guessed() -> None:
    inline = (
        'mutation { launchRun(executionParams: {selector: {jobName: "recover_job"}}) '
        "{ __typename } }"
    )
    with pytest.raises(RequestRefused, match="must pass executionParams as a GraphQL variable"):
        judge({"query": inline})
    assert judge({"query": "{ version }"}).changes == []
    unknown = judge({"query": "mutation { somethingNew { ok } }"})
    assert unknown.changes[0].action == "unknown"


def _tags(launcher: str, approver: str, run: str = RUN, expires_in_min: float = 15) -> dict:
    at = datetime.now(UTC)
    approval = approvals.Approval(
        run, approver, "recovery_approver", at, at + timedelta(minutes=expires_in_min)
    )
    return {"twinme/launched_by": launcher, **approval.tags()}


def test_an_approval_holds_only_for_its_run_another_person_and_its_lifetime() -> None:
    assert approvals.check(RUN, _tags("olga", "bob")).approved_by == "bob"
    refusals = {
        "no launcher": ({}, "names no launcher"),
        "no approval": ({"twinme/launched_by": "olga"}, "no recovery approver has approved"),
        "re-execution": (_tags("olga", "bob", run="other-run-id"), "a re-execution needs"),
        "same person": (_tags("olga", "olga"), "olga launched this run and cannot approve"),
        "expired": (_tags("olga", "bob", expires_in_min=-1), "expired at"),
    }
    for name, (tags, expected) in refusals.items():
        with pytest.raises(approvals.ApprovalRefused, match=expected):
            approvals.check(RUN, tags)
        print(name, "refused")
    with pytest.raises(approvals.ApprovalRefused, match="only recover_job needs an approval"):
        approvals.grant(
            RUN, "nightly_backup_job", {"twinme/launched_by": "o"}, "b", "", timedelta(1)
        )


def test_the_wait_gives_up_with_nothing_changed_and_passes_once_approved() -> None:
    now = [0.0]
    lines = ListLog()

    def tick(seconds: float) -> None:
        now[0] += seconds

    with pytest.raises(ApprovalTimeout, match="Nothing was changed"):
        wait_for_approval(
            RUN,
            lambda: {"twinme/launched_by": "olga"},
            30,
            5,
            lines,
            clock=lambda: now[0],
            sleep=tick,
        )
    assert lines and "waiting for a recovery approver" in lines[0]
    reads = iter([{"twinme/launched_by": "olga"}] * 3 + [_tags("olga", "bob")] * 10)
    approval = wait_for_approval(
        RUN, lambda: next(reads), 600, 5, lines, clock=lambda: now[0], sleep=tick
    )
    assert approval.approved_by == "bob"
    with pytest.raises(approvals.ApprovalRefused, match="names no launcher"):
        wait_for_approval(RUN, dict, 600, 5, lines, clock=lambda: now[0], sleep=tick)


def _write_many(path: str, who: str) -> None:
    log = AuditLog(path, stream=open(os.devnull, "w"))  # noqa: SIM115
    for i in range(300):
        log.record(user=who, action="launch", reason="x" * (i % 50) * 40)


def test_concurrent_writers_never_interleave_a_record(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    procs = [
        multiprocessing.get_context("spawn").Process(target=_write_many, args=(str(path), w))
        for w in ("a", "b", "c")
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    records = read_records(path)  # every line parses
    assert len(records) == 900
    assert {r["user"] for r in records} == {"a", "b", "c"}
    assert json.loads(path.read_text().splitlines()[0])["log"] == "twinme.audit"
