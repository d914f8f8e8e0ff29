"""deploy/logging/: the log shipper, run for real on real output.

The manifests are validated strictly against the Kubernetes schemas. The shipper itself is the
real rsyslogd (Debian's rsyslog + rsyslog-elasticsearch, what deploy/logging/Dockerfile
installs) with the real deploy/logging/rsyslog.conf and the DaemonSet's environment: it reads a
container log file in the kubelet's CRI format holding what a real run of twinme_ops wrote (and
an audit record), and posts to a local server speaking Elasticsearch's ``_bulk`` API
(Elasticsearch and OpenSearch cannot be installed here). The index template and ILM policy are
checked against the fields the shipper sends, and the setup script is run against the server.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import kubernetes_validate
import pytest
import yaml

from tests.support.es_receiver import ElasticsearchReceiver
from tests.support.git_repos import Repo
from tests.support.json_logs import PLANTED_SECRET, run_job_json
from tests.support.kubernetes_versions import VERSIONS
from twinme_ops.access.audit import AuditLog
from twinme_ops.definitions import build_definitions
from twinme_ops.release.git import GitRepoResource

LOGGING_DIR = Path(__file__).resolve().parents[2] / "deploy" / "logging"
CONFIG = LOGGING_DIR / "rsyslog.conf"
INDEX = "twinme-ops-logs"
CONTAINER_ID = "3f" * 32
# what the kubelet names a run pod's log file: <pod>_<namespace>_<container>-<container id>.log
POD = "dagster-run-5e1f0c2a-6b7d-4e8f-9a0b-1c2d3e4f5a6b-x7k2p"
LOG_FILE = f"{POD}_dagster_dagster-{CONTAINER_ID}.log"
ES_PASSWORD = "Es-Shipper-Pw-9923"
# Debian installs it in /usr/sbin, which a user's PATH may leave out (.ci/deps installs it)
RSYSLOGD = shutil.which("rsyslogd", path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin")


def objects() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(LOGGING_DIR.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def daemonset() -> dict[str, Any]:
    [found] = [d for d in objects() if d["kind"] == "DaemonSet"]
    return found


def shipper_env(**overrides: str) -> dict[str, str]:
    """The DaemonSet's environment (Secret values filled in), with the test's overrides."""
    [container] = daemonset()["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value", "") for e in container["env"]}
    env["ELASTICSEARCH_USER"] = "twinme-log-shipper"
    env["ELASTICSEARCH_PASSWORD"] = ES_PASSWORD
    return {**env, **overrides}


def cri(lines: list[str], stream: str, start_ns: int) -> list[str]:
    """Lines as the container runtime writes them to the node's log file."""
    out = []
    for i, line in enumerate(lines):
        ns = start_ns + i * 1000
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ns // 10**9))
        out.append(f"{stamp}.{ns % 10**9:09d}Z {stream} F {line}\n")
    return out


@pytest.mark.parametrize("version", VERSIONS)
def test_the_manifests_are_valid_kubernetes_objects(version: str) -> None:
    for doc in objects():
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_daemonset_reads_logs_read_only_with_no_token_and_no_capability() -> None:
    spec = daemonset()["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["tolerations"] == [{"operator": "Exists"}]  # every node, run pods land anywhere
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["varlog"] == {"name": "varlog", "mountPath": "/var/log", "readOnly": True}
    security = container["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    # the config file mounted is the one tested here
    config_dir = mounts["config"]["mountPath"]
    assert f"{config_dir}/rsyslog.conf" in container["command"]
    # every variable rsyslog.conf reads is set by the DaemonSet, the password from a Secret
    wanted = set(re.findall(r"`echo \$(\w+)`", CONFIG.read_text()))
    env = {e["name"]: e for e in container["env"]}
    assert wanted == set(env)
    assert "value" not in env["ELASTICSEARCH_PASSWORD"]
    assert env["TWINME_LOG_INDEX"]["value"] == INDEX


def test_the_image_pins_the_rsyslog_the_tests_run() -> None:
    installed = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", "rsyslog", "rsyslog-elasticsearch"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    dockerfile = (LOGGING_DIR / "Dockerfile").read_text()
    [version] = set(re.findall(r"rsyslog(?:-elasticsearch)?=(\S+)", dockerfile))
    assert installed == version * 2
    [container] = daemonset()["spec"]["template"]["spec"]["containers"]
    assert container["image"].endswith(":" + version.split("-")[0])


@pytest.fixture
def shipper(tmp_path: Path, es_receiver: ElasticsearchReceiver) -> Iterator[Path]:
    """rsyslogd with deploy/logging/rsyslog.conf, reading ``<tmp>/containers/*_dagster_*.log``."""
    assert RSYSLOGD, (
        "rsyslogd is missing: run .ci/deps (Debian packages rsyslog, rsyslog-elasticsearch)"
    )
    state = tmp_path / "state"
    state.mkdir()
    logs = tmp_path / "containers"
    logs.mkdir()
    env = shipper_env(
        TWINME_LOG_GLOB=f"{logs}/*_dagster_*.log",
        RSYSLOG_STATE_DIR=str(state),
        RSYSLOG_ERROR_FILE=str(state / "errors.json"),
        ELASTICSEARCH_HOST="127.0.0.1",
        ELASTICSEARCH_PORT=str(es_receiver.port),
        ELASTICSEARCH_HTTPS="off",
    )
    check = subprocess.run(
        [str(RSYSLOGD), "-N1", "-f", str(CONFIG)], env=env, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stderr
    assert "error" not in check.stderr.lower(), check.stderr
    process = subprocess.Popen(
        [str(RSYSLOGD), "-n", "-f", str(CONFIG), "-i", str(state / "rsyslogd.pid")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    time.sleep(0.5)
    yield logs
    os.kill(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=30)
    # the shipper's own messages never show the Elasticsearch password
    assert ES_PASSWORD not in output


def sensor_tick_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What a real git_push_sensor tick writes in JSON mode (a new commit pushed)."""
    repo = Repo(tmp_path / "git")
    repo.commit("first")
    repo.push()
    git = GitRepoResource(remote=str(repo.bare), workdir_root=str(tmp_path / "checkouts"))
    sensor = build_definitions().resolve_sensor_def("git_push_sensor")
    capsys.readouterr()
    with dg.build_sensor_context(sensor_name="git_push_sensor", resources={"git": git}) as context:
        assert isinstance(sensor(context), dg.RunRequest)
    return capsys.readouterr().out.splitlines()


def test_a_real_runs_output_reaches_elasticsearch_as_documents(
    tmp_path: Path,
    shipper: Path,
    es_receiver: ElasticsearchReceiver,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = run_job_json(tmp_path / "run")
    monkeypatch.setenv("TWINME_LOG_FORMAT", "json")
    tick = sensor_tick_lines(tmp_path, capsys)
    assert len(tick) == 2
    events = run.events() + [json.loads(line) for line in tick]
    audit = io.StringIO()
    AuditLog(stream=audit).record(
        user="ana@twinme.ai", action="launch", job="recover_job", outcome="denied"
    )
    [audit_line] = audit.getvalue().splitlines()
    dagster_text = [line for line in run.stderr if " - dagster - " in line]
    # a tool's output with a tab, as psql prints it: shipped as it is
    run.stderr.append("psql: error:\tconnection refused")
    other_text = [line for line in run.stderr if " - dagster - " not in line]
    assert dagster_text, "Dagster's text console writes to stderr"
    start = time.time_ns()
    file_lines = cri(run.stdout + tick, "stdout", start)
    file_lines += cri([audit_line], "stdout", start + 10**6)
    file_lines += cri(run.stderr, "stderr", start + 2 * 10**6)
    # the kubelet appends as the container writes
    with (shipper / LOG_FILE).open("a") as log_file:
        for line in file_lines:
            log_file.write(line)
            log_file.flush()

    expected = len(events) + 1 + len(other_text)
    docs = es_receiver.wait_for(expected, timeout_s=60)
    time.sleep(1.0)  # nothing more may come: Dagster's text lines are dropped
    docs = list(es_receiver.documents)
    assert len(docs) == expected
    assert {(d.operation, d.index) for d in docs} == {("create", INDEX)}
    assert set(es_receiver.auth) == {"twinme-log-shipper"}
    bodies = [d.body for d in docs]
    shipped = json.dumps(bodies)
    assert PLANTED_SECRET not in shipped and ES_PASSWORD not in shipped

    json_docs = [b for b in bodies if b["log_format"] == "json" and b["logger"] != "twinme.audit"]
    assert len(json_docs) == len(events)
    for event, doc in zip(events, json_docs, strict=True):
        assert doc["@timestamp"] == event["timestamp"]
        for key in ("level", "logger", "run_id", "job", "step", "message"):
            assert doc[key] == event[key], key
        assert doc["error"] == event.get("error", "")
        assert doc["event_type"] == event.get("event_type", "")
        assert doc["sensor"] == event.get("sensor", "")
        assert (doc["pod"], doc["namespace"], doc["container"]) == (
            POD,
            "dagster",
            "dagster",
        )
        assert doc["stream"] == "stdout"
    assert [d["sensor"] for d in json_docs[-2:]] == ["git_push_sensor"] * 2
    [failure] = [d for d in json_docs if d["event_type"] == "STEP_FAILURE"]
    assert failure["level"] == "ERROR" and "deployment tests failed" in failure["error"]

    [audit_doc] = [b for b in bodies if b["logger"] == "twinme.audit"]
    assert (audit_doc["audit_user"], audit_doc["audit_action"], audit_doc["audit_outcome"]) == (
        "ana@twinme.ai",
        "launch",
        "denied",
    )

    text_docs = [b for b in bodies if b["log_format"] == "text"]
    assert [d["message"] for d in text_docs] == other_text
    assert all(d["stream"] == "stderr" and d["@timestamp"].endswith("Z") for d in text_docs)


def test_the_index_template_maps_every_field_the_shipper_sends() -> None:
    template = json.loads((LOGGING_DIR / "elasticsearch" / "index-template.json").read_text())
    sent = set(re.findall(r'outname="([^"]+)"', CONFIG.read_text()))
    assert set(template["template"]["mappings"]["properties"]) == sent
    assert "data_stream" in template  # the shipper writes with "create", as data streams need
    assert any(re.fullmatch(p.replace("*", ".*"), INDEX) for p in template["index_patterns"])
    assert template["template"]["settings"]["index.lifecycle.name"] == INDEX


def test_the_lifecycle_policy_deletes_logs_after_30_days() -> None:
    policy = json.loads((LOGGING_DIR / "elasticsearch" / "ilm-policy.json").read_text())
    phases = policy["policy"]["phases"]
    assert phases["delete"] == {"min_age": "30d", "actions": {"delete": {}}}
    assert phases["hot"]["actions"]["rollover"]["max_age"] == "1d"


def test_the_setup_script_puts_the_policy_and_the_template(
    es_receiver: ElasticsearchReceiver,
) -> None:
    env = {
        **os.environ,
        "ELASTICSEARCH_URL": f"http://127.0.0.1:{es_receiver.port}/",
        "ELASTICSEARCH_USER": "elastic",
        "ELASTICSEARCH_PASSWORD": ES_PASSWORD,
    }
    done = subprocess.run(
        [str(LOGGING_DIR / "elasticsearch" / "setup.sh")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert es_receiver.objects == {
        f"/_ilm/policy/{INDEX}": json.loads(
            (LOGGING_DIR / "elasticsearch" / "ilm-policy.json").read_text()
        ),
        f"/_index_template/{INDEX}": json.loads(
            (LOGGING_DIR / "elasticsearch" / "index-template.json").read_text()
        ),
    }
    assert set(es_receiver.auth) == {"elastic"}
    assert ES_PASSWORD not in done.stdout + done.stderr


def test_the_setup_script_without_a_url_says_how_to_fix_it() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ELASTICSEARCH_URL"}
    done = subprocess.run(
        [str(LOGGING_DIR / "elasticsearch" / "setup.sh")], env=env, capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "Fix: set ELASTICSEARCH_URL" in done.stderr
