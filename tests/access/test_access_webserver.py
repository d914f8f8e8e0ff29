"""Access control on a real dagster-webserver: sign-in, roles, audit, the two-person recovery.

``dagster dev`` runs the daemon and code location on the shared sandbox with
``TWINME_ACCESS_POLICY`` set (so recover_job requires its approval); beside it,
``twinme-ops-webserver`` — the production webserver command — serves the same instance with
enforcement on, and every request of these tests goes through it. An identity provider on
127.0.0.1 (tests/support/access_fixtures.py) publishes its JWKS and signs the ID tokens.

The tests run in order: the operator's backup makes the set the recoveries restore.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websocket
from dagster import DagsterRunStatus
from dagster_graphql import DagsterGraphQLClient

from tests.support.access_fixtures import GROUPS, IdentityProvider
from tests.support.dagster_dev import LOCATION_NAME, REPO_ROOT, DagsterDev, sandbox_dagster_dev
from twinme_ops.access.audit import read_records
from twinme_ops.access.mutations import MUTATION_ACTIONS
from twinme_ops.defs.backups.assets import backup_partitions
from twinme_ops.sandbox.servers import SandboxInfo
from twinme_ops.scratch.local import LOCALHOST, free_port

RUN_TIMEOUT_S = 300.0
SELECTOR = {"repositoryLocationName": LOCATION_NAME, "repositoryName": "__repository__"}
LAUNCH = """
mutation Launch($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId tags { key value } } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}"""
RUN_QUERY = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status jobName tags { key value } }
  }
}"""


@dataclass
class Enforced:
    """The enforcing webserver, the identity provider and the audit file."""

    dev: DagsterDev
    idp: IdentityProvider
    port: int
    audit_path: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    def request(
        self,
        path: str,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        method: str | None = None,
    ) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.url}{path}",
            data=data,
            method=method or ("POST" if data is not None else "GET"),
            headers={"Content-Type": "application/json", **(headers or {})},
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as response:
                text = response.read().decode()
                status = response.status
        except urllib.error.HTTPError as exc:
            text, status = exc.read().decode(errors="replace"), exc.code
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, {"text": text}

    def graphql(
        self,
        query: str,
        variables: dict[str, Any] | None = None,
        who: tuple[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        headers = self.idp.bearer(*who) if who else {}
        return self.request("/graphql", {"query": query, "variables": variables or {}}, headers)

    def audit(self) -> list[dict[str, Any]]:
        return read_records(self.audit_path)

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-60:])


@pytest.fixture(scope="module")
def enforced(sandbox: SandboxInfo, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Enforced]:
    workdir = tmp_path_factory.mktemp("access")
    idp = IdentityProvider()
    audit_path = workdir / "audit" / "audit.jsonl"
    port = free_port()
    policy = idp.write_policy(workdir / "access.yaml", audit_path, f"http://{LOCALHOST}:{port}")
    env = {"TWINME_ACCESS_POLICY": str(policy), "TWINME_DAGSTER_URL": f"http://{LOCALHOST}:{port}"}
    with sandbox_dagster_dev(sandbox, workdir, extra_env=env) as dev:
        log_path = workdir / "twinme-ops-webserver.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [
                    "twinme-ops-webserver",
                    "-w",
                    str(REPO_ROOT / "workspace.yaml"),
                    "-h",
                    LOCALHOST,
                    "-p",
                    str(port),
                ],
                cwd=REPO_ROOT,
                env=dev.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        server = Enforced(dev, idp, port, audit_path, process, log_path)
        try:
            _wait_ready(server)
            yield server
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            idp.close()


def _wait_ready(server: Enforced) -> None:
    deadline = time.monotonic() + 180
    state = ""
    while time.monotonic() < deadline:
        assert server.process.poll() is None, f"webserver exited:\n{server.log_tail()}"
        try:
            status, body = server.graphql(
                "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }",
                who=("probe@twinme.ai", "viewer"),
            )
            entries = body.get("data", {}).get("workspaceOrError", {}).get("locationEntries", [])
            if status == 200 and entries and entries[0]["loadStatus"] == "LOADED":
                return
            state = f"{status} {body}"
        except OSError as exc:
            state = str(exc)
        time.sleep(1)
    raise AssertionError(f"enforcing webserver not ready ({state}):\n{server.log_tail()}")


def _new_records(server: Enforced, before: int) -> list[dict[str, Any]]:
    # the record is written before the response is sent; allow the file a moment anyway
    for _ in range(20):
        records = server.audit()[before:]
        if records:
            return records
        time.sleep(0.1)
    return []


def _launch_params(job: str, run_config: dict[str, Any], tags: dict[str, str]) -> dict[str, Any]:
    return {
        "executionParams": {
            "selector": {**SELECTOR, "jobName": job},
            "runConfigData": run_config,
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        }
    }


def _wait_run(server: Enforced, run_id: str, until: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        _, body = server.graphql(RUN_QUERY, {"runId": run_id}, ("ops@twinme.ai", "viewer"))
        run = body["data"]["runOrError"]
        if run.get("status") in until:
            return run
        time.sleep(1)
    raise AssertionError(f"run {run_id} not {until} in time:\n{server.dev.log_tail(100)}")


def _tags(run: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["tags"]}


# ------------------------------------------------------------------------------------------


def test_every_mutation_of_the_installed_dagster_is_classified() -> None:
    from dagster_graphql.schema import create_schema

    mutation_type = create_schema().graphql_schema.mutation_type
    assert mutation_type is not None
    assert set(mutation_type.fields) == set(MUTATION_ACTIONS), (
        "classify new Dagster mutations in twinme_ops/access/mutations.py: "
        f"{sorted(set(mutation_type.fields) ^ set(MUTATION_ACTIONS))}"
    )


def test_a_request_without_a_verifiable_identity_gets_401_and_one_audit_record(
    enforced: Enforced,
) -> None:
    idp = enforced.idp
    viewer = GROUPS["viewer"]
    cases = {
        "no token": {},
        "expired token": {"Authorization": f"Bearer {idp.token('a@x', viewer, expires_in=-120)}"},
        "another key": {"Authorization": f"Bearer {idp.token('a@x', viewer, key=idp.other_key)}"},
        "unknown key id": {
            "Authorization": f"Bearer {idp.token('a@x', viewer, key=idp.other_key, kid='k9')}"
        },
        "wrong audience": {"Authorization": f"Bearer {idp.token('a@x', viewer, audience='x')}"},
        "a bare header": {"X-Forwarded-User": "admin", "X-Auth-Request-Groups": "operators"},
        "not a bearer": {"Authorization": "Basic YWRtaW46YWRtaW4="},
    }
    reasons = {}
    for name, headers in cases.items():
        before = len(enforced.audit())
        status, body = enforced.request("/graphql", {"query": "{ version }"}, headers=headers)
        assert status == 401, (name, status, body)
        assert body["error"] == "unauthenticated" and body["reason"], (name, body)
        records = _new_records(enforced, before)
        assert len(records) == 1, (name, records)
        assert records[0]["user"] == "anonymous" and records[0]["outcome"] == "denied"
        assert records[0]["reason"] == body["reason"]
        reasons[name] = body["reason"]
    assert "expired" in reasons["expired token"]
    assert "no bearer token" in reasons["no token"]
    # the UI's pages need a token too; only the probes do not
    assert enforced.request("/runs")[0] == 401
    assert enforced.request("/server_info")[0] == 200


def test_a_viewer_reads_everything_and_cannot_launch(enforced: Enforced) -> None:
    status, body = enforced.graphql(
        "{ runsOrError { ... on Runs { results { runId } } } }", who=("vera@twinme.ai", "viewer")
    )
    assert status == 200 and "runsOrError" in body["data"]
    before = len(enforced.audit())
    partition = backup_partitions.get_last_partition_key()
    assert partition is not None
    status, body = enforced.graphql(
        LAUNCH,
        _launch_params("nightly_backup_job", {}, {"dagster/partition": partition}),
        ("vera@twinme.ai", "viewer"),
    )
    assert status == 403, body
    assert body["reason"] == (
        "vera@twinme.ai (viewer) may not launch (launchRun of nightly_backup_job): that needs "
        "the role operator"
    )
    (record,) = _new_records(enforced, before)
    assert (record["user"], record["roles"], record["action"], record["job"]) == (
        "vera@twinme.ai",
        "viewer",
        "launch",
        "nightly_backup_job",
    )
    assert record["outcome"] == "denied" and record["source"] == LOCALHOST


def test_nobody_may_delete_a_run_or_forge_an_asset_event(enforced: Enforced) -> None:
    before = len(enforced.audit())
    status, body = enforced.graphql(
        "mutation Del($id: String!) { deleteRun(runId: $id) { __typename } }",
        {"id": "0" * 36},
        ("olga@twinme.ai", "operator"),
    )
    assert status == 403 and "erases the audit trail" in body["reason"], body
    status, body = enforced.request(
        "/report_asset_materialization/backup_set",
        {"partition": "2026-12-04"},
        enforced.idp.bearer("olga@twinme.ai", "operator"),
    )
    assert status == 403 and "forge" in body["reason"], body
    records = _new_records(enforced, before)
    assert [r["outcome"] for r in records] == ["denied", "denied"], records


def test_the_websocket_carries_subscriptions_only(enforced: Enforced) -> None:
    url = f"ws://{LOCALHOST}:{enforced.port}/graphql"
    with pytest.raises(websocket.WebSocketBadStatusException):
        websocket.create_connection(url, subprotocols=["graphql-ws"], timeout=10)
    bearer = enforced.idp.bearer("olga@twinme.ai", "operator")["Authorization"]
    ws = websocket.create_connection(
        url,
        subprotocols=["graphql-ws"],
        timeout=10,
        header=[f"Authorization: {bearer}"],
    )
    before = len(enforced.audit())
    ws.send(json.dumps({"type": "connection_init", "payload": {}}))
    ws.send(
        json.dumps(
            {
                "type": "start",
                "id": "1",
                "payload": {
                    "query": "mutation { reloadWorkspace { __typename } }",
                    "variables": {},
                },
            }
        )
    )
    deadline = time.monotonic() + 10
    closed = False
    while time.monotonic() < deadline:
        try:
            frame = ws.recv()
        except websocket.WebSocketConnectionClosedException:
            closed = True
            break
        if not frame:
            closed = True
            break
        assert "reloadWorkspace" not in str(frame), frame
    assert closed
    (record,) = _new_records(enforced, before)
    assert record["outcome"] == "denied" and "only subscriptions" in record["reason"]


def test_an_operator_launches_a_backup_and_the_run_names_them(enforced: Enforced) -> None:
    partition = backup_partitions.get_last_partition_key()
    assert partition is not None
    before = len(enforced.audit())
    # dagster-graphql's client, as an operator's script would use it; the launcher tag it
    # tries to set is replaced by the verified identity
    client = DagsterGraphQLClient(
        LOCALHOST,
        port_number=enforced.port,
        timeout=60,
        headers=enforced.idp.bearer("olga@twinme.ai", "operator"),
    )
    run_id = client.submit_job_execution(
        "nightly_backup_job",
        repository_location_name=LOCATION_NAME,
        tags={"dagster/partition": partition, "twinme/launched_by": "somebody-else"},
    )
    run = _wait_run(enforced, run_id, {"SUCCESS", "FAILURE", "CANCELED"})
    assert run["status"] == "SUCCESS", enforced.dev.log_tail(100)
    assert _tags(run)["twinme/launched_by"] == "olga@twinme.ai"
    records = _new_records(enforced, before)
    assert len(records) == 1, records
    (record,) = records
    assert (record["action"], record["job"], record["run_id"], record["outcome"]) == (
        "launch",
        "nightly_backup_job",
        run_id,
        "allowed",
    )
    assert record["roles"] == "operator" and record["user"] == "olga@twinme.ai"


def test_an_operator_turns_a_schedule_on_and_off_and_a_viewer_cannot(enforced: Enforced) -> None:
    start = """mutation Start($s: ScheduleSelector!) {
      startSchedule(scheduleSelector: $s) {
        __typename ... on ScheduleStateResult { scheduleState { id status } }
      } }"""
    stop = """mutation Stop($id: String!) {
      stopRunningSchedule(id: $id) { __typename } }"""
    selector = {**SELECTOR, "scheduleName": "retention_schedule"}
    before = len(enforced.audit())
    status, body = enforced.graphql(start, {"s": selector}, ("vera@twinme.ai", "viewer"))
    assert status == 403 and "toggle" in body["reason"]
    status, body = enforced.graphql(start, {"s": selector}, ("olga@twinme.ai", "operator"))
    assert status == 200, body
    state = body["data"]["startSchedule"]["scheduleState"]
    assert state["status"] == "RUNNING"
    status, body = enforced.graphql(stop, {"id": state["id"]}, ("olga@twinme.ai", "operator"))
    assert status == 200 and body["data"]["stopRunningSchedule"]["__typename"] != "PythonError"
    records = _new_records(enforced, before)
    assert [(r["user"], r["action"], r["outcome"]) for r in records] == [
        ("vera@twinme.ai", "toggle", "denied"),
        ("olga@twinme.ai", "toggle", "allowed"),
        ("olga@twinme.ai", "toggle", "allowed"),
    ]
    assert records[1]["target"] == "retention_schedule"


def _launch_recovery(enforced: Enforced, wait_minutes: float) -> str:
    config = {
        "ops": {
            "recovery_preflight": {
                "config": {
                    "set_id": "latest-verified",
                    "components": ["files"],
                    "confirm": "twinme",
                    "approval_wait_minutes": wait_minutes,
                }
            }
        }
    }
    status, body = enforced.graphql(
        LAUNCH, _launch_params("recover_job", config, {}), ("olga@twinme.ai", "operator")
    )
    result = body["data"]["launchRun"]
    assert status == 200 and result["__typename"] == "LaunchRunSuccess", body
    return result["run"]["runId"]


def _approve(enforced: Enforced, run_id: str, user: str, role: str) -> tuple[int, dict]:
    return enforced.request(f"/twinme/approvals/{run_id}", {}, enforced.idp.bearer(user, role))


def test_an_operator_alone_cannot_get_a_recovery_past_its_approval(enforced: Enforced) -> None:
    safety_before = sorted(p.name for p in enforced.dev.backup_dir.glob("safety-*"))
    run_id = _launch_recovery(enforced, wait_minutes=0.25)
    before = len(enforced.audit())
    status, body = _approve(enforced, run_id, "olga@twinme.ai", "operator")
    assert status == 403 and "needs the role recovery_approver" in body["reason"]
    # the launcher holding the approver role too is still one person
    token = enforced.idp.token("olga@twinme.ai", GROUPS["operator"] + GROUPS["recovery_approver"])
    status, body = enforced.request(
        f"/twinme/approvals/{run_id}", {}, {"Authorization": f"Bearer {token}"}
    )
    assert status == 403 and "a recovery needs a second person" in body["reason"], body
    run = _wait_run(enforced, run_id, {"SUCCESS", "FAILURE", "CANCELED"})
    assert run["status"] == "FAILURE"
    assert "twinme/approved_by" not in _tags(run)
    # nothing was touched: no safety backup was taken
    assert sorted(p.name for p in enforced.dev.backup_dir.glob("safety-*")) == safety_before
    records = _new_records(enforced, before)
    assert [(r["action"], r["outcome"]) for r in records] == [
        ("approve", "denied"),
        ("approve", "denied"),
    ]
    slack = enforced.dev.slack
    assert slack is not None
    waiting = [m for m in slack.messages if "waits for approval" in m and run_id[:8] in m]
    assert waiting and "launched by olga@twinme.ai" in waiting[0], slack.messages
    failed = [m for m in slack.messages if "recovery approval" in m and run_id[:8] in m]
    assert failed and "Launched by: olga@twinme.ai" in failed[0], slack.messages


def test_a_second_person_with_the_approver_role_lets_the_recovery_run(enforced: Enforced) -> None:
    run_id = _launch_recovery(enforced, wait_minutes=5)
    before = len(enforced.audit())
    status, body = _approve(enforced, run_id, "bob@twinme.ai", "recovery_approver")
    assert status == 200, body
    assert body["approved_by"] == "bob@twinme.ai"
    run = _wait_run(enforced, run_id, {"SUCCESS", "FAILURE", "CANCELED"})
    assert run["status"] == "SUCCESS", enforced.dev.log_tail(120)
    tags = _tags(run)
    assert (tags["twinme/launched_by"], tags["twinme/approved_by"]) == (
        "olga@twinme.ai",
        "bob@twinme.ai",
    )
    (record,) = _new_records(enforced, before)
    assert (record["user"], record["action"], record["run_id"], record["outcome"]) == (
        "bob@twinme.ai",
        "approve",
        run_id,
        "allowed",
    )
    slack = enforced.dev.slack
    assert slack is not None
    done = [m for m in slack.messages if "recovery completed" in m and run_id[:8] in m]
    assert done, slack.messages
    assert "Launched by: olga@twinme.ai" in done[0] and "Approved by: bob@twinme.ai" in done[0]
    # the approval page shows no waiting recovery now
    status, page = enforced.request(
        "/twinme/approvals", headers=enforced.idp.bearer("bob@twinme.ai", "recovery_approver")
    )
    assert status == 200 and "No recovery is waiting" in page["text"]
    assert DagsterRunStatus.SUCCESS.value == run["status"]
