"""JSON log lines (TWINME_LOG_FORMAT=json) from real runs, real sensor ticks and the audit log.

Each test captures what really reaches stdout, parses every line as JSON and checks the fields
the log shipper and Elasticsearch rely on (docs/logging.md), and that no password does.
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import dagster as dg
import pytest
import yaml

from tests.support.git_repos import Repo
from tests.support.json_logs import PLANTED_SECRET, REPO, run_job_json
from twinme_ops.access.audit import AuditLog
from twinme_ops.common.json_log import CUT_MARK, MAX_LINE_BYTES, JsonFormatter, log_format
from twinme_ops.definitions import build_definitions
from twinme_ops.defs.logs.ticks import logged_tick
from twinme_ops.release.git import GitRepoResource

CARELESS_URL = f"postgresql://ops:{PLANTED_SECRET}@db.internal:5432/twinme"


@dg.op
def connect(context) -> None:  # an annotation would be a string here (future annotations)
    context.log.info(f"connecting to {CARELESS_URL}")
    raise RuntimeError(f"password authentication failed for {CARELESS_URL}")


@dg.job
def careless_job() -> None:
    connect()


FIELDS = {"timestamp", "level", "logger", "run_id", "job", "step", "message"}


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_the_format_comes_from_the_environment_and_a_typo_says_how_to_fix_it() -> None:
    assert log_format({}) == "text"
    assert log_format({"TWINME_LOG_FORMAT": " JSON "}) == "json"
    with pytest.raises(ValueError, match="TWINME_LOG_FORMAT='jsn' is not a log format. Fix: set"):
        log_format({"TWINME_LOG_FORMAT": "jsn"})


def test_a_real_run_writes_one_json_event_per_line_and_no_password(tmp_path: Path) -> None:
    run = run_job_json(tmp_path)
    assert run.returncode != 0  # nothing answers: the deployment tests fail
    events = run.events()  # every stdout line is JSON, or this fails
    assert len(events) >= 10
    assert all(set(e) >= FIELDS for e in events)
    run_ids = {e["run_id"] for e in events}
    assert len(run_ids) == 1 and len(next(iter(run_ids))) == 36
    assert {e["job"] for e in events} == {"deployment_tests_job"}
    assert all(e["timestamp"].endswith("Z") and e["timestamp"][10] == "T" for e in events)
    [failure] = [e for e in events if e.get("event_type") == "STEP_FAILURE"]
    assert failure["level"] == "ERROR" and failure["step"] == "deployment_tests"
    assert "deployment tests failed" in failure["error"]
    assert "ops:***@127.0.0.1:9" in failure["error"]
    warnings = [e for e in events if e["level"] == "WARNING"]
    assert any("verification database: failed" in e["message"] for e in warnings)
    assert {e["event_type"] for e in events if "event_type" in e} >= {
        "PIPELINE_START",
        "STEP_START",
        "PIPELINE_FAILURE",
    }
    assert PLANTED_SECRET not in "\n".join(run.stdout + run.stderr)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_an_error_quoting_a_password_is_redacted_in_the_json_line(
    fmt: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # the instance's python_logs exactly as the repository's dagster.yaml declares it
    python_logs = yaml.safe_load((REPO / "dagster.yaml").read_text())["python_logs"]
    monkeypatch.setenv("TWINME_LOG_FORMAT", fmt)
    with dg.instance_for_test(overrides={"python_logs": python_logs}) as instance:
        result = careless_job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    out = capsys.readouterr().out
    if fmt == "text":
        assert out == ""  # locally the handler writes nothing: Dagster's text console stays
        return
    events = _lines(out)
    assert PLANTED_SECRET not in out
    [info] = [e for e in events if e["message"].startswith("connecting to")]
    assert info["message"] == "connecting to postgresql://ops:***@db.internal:5432/twinme"
    assert (info["step"], info["job"], info["level"]) == ("connect", "careless_job", "INFO")
    assert info["run_id"] == result.run_id
    [failure] = [e for e in events if e.get("event_type") == "STEP_FAILURE"]
    assert (
        "RuntimeError: password authentication failed for postgresql://ops:***@db"
        in (failure["error"])
    )


def test_a_real_sensor_tick_logs_json_lines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = Repo(tmp_path / "git")
    sha = repo.commit("first")
    repo.push()
    monkeypatch.setenv("TWINME_LOG_FORMAT", "json")
    sensor = build_definitions().resolve_sensor_def("git_push_sensor")
    git = GitRepoResource(remote=str(repo.bare), workdir_root=str(tmp_path / "checkouts"))
    with (
        dg.instance_for_test() as instance,
        dg.build_sensor_context(
            instance=instance,
            repository_name="twinme_ops",
            sensor_name="git_push_sensor",
            resources={"git": git},
        ) as context,
    ):
        result = sensor(context)
    assert isinstance(result, dg.RunRequest) and result.run_key == sha
    events = _lines(capsys.readouterr().out)
    assert all(set(e) >= FIELDS and e["sensor"] == "git_push_sensor" for e in events)
    # the sensor's own context.log line, then the tick's outcome
    assert [e["message"] for e in events] == [
        f"new head of main: {sha} (previous: none)",
        f"sensor git_push_sensor: 1 run requested (run_key {sha})",
    ]
    assert [e["logger"] for e in events] == ["dagster", "twinme_ops.sensors"]


def test_a_failing_tick_logs_its_error_redacted_and_still_fails(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TWINME_LOG_FORMAT", "json")

    @dg.sensor(job_name="some_job")
    @logged_tick
    def probe_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        context.log.warning("probing redis://:" + PLANTED_SECRET + "@cache:6379/0")
        raise ConnectionError(f"token={PLANTED_SECRET} refused")

    with (
        dg.build_sensor_context(sensor_name="probe_sensor") as context,
        pytest.raises(Exception, match="refused"),
    ):
        probe_sensor(context)
    out = capsys.readouterr().out
    assert PLANTED_SECRET not in out
    warning, failed = _lines(out)
    assert warning["message"] == "probing redis://:***@cache:6379/0"
    assert (failed["level"], failed["message"]) == ("ERROR", "sensor probe_sensor: tick failed")
    assert "ConnectionError: token=*** refused" in failed["error"]


def test_audit_records_carry_the_log_fields() -> None:
    stream = io.StringIO()
    AuditLog(stream=stream).record(
        user="ana@twinme.ai",
        roles=["operator"],
        action="launch",
        job="recover_job",
        outcome="denied",
        reason=f"approval token={PLANTED_SECRET} expired",
    )
    [record] = _lines(stream.getvalue())
    assert record["logger"] == record["log"] == "twinme.audit"
    assert record["level"] == "WARNING"
    summary = "ana@twinme.ai launch recover_job: denied (approval token=*** expired)"
    assert record["message"] == summary
    assert record["timestamp"].endswith("Z")
    assert PLANTED_SECRET not in stream.getvalue()


def test_a_huge_error_still_fits_one_container_log_line() -> None:
    # containerd splits lines over 16 KiB: the stack trace is cut, the line stays whole JSON
    logger = logging.Logger("twinme_ops.test")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    try:
        raise RuntimeError("é" * 30000 + f" password={PLANTED_SECRET}")
    except RuntimeError:
        logger.exception("import failed: " + "x\n" * 5000)
    [line] = stream.getvalue().splitlines()
    assert len(line.encode()) <= MAX_LINE_BYTES
    event = json.loads(line)
    assert event["error"].startswith("Traceback") and event["error"].endswith(CUT_MARK)
    assert event["message"].startswith("import failed: x\nx\n")
    assert PLANTED_SECRET not in line
