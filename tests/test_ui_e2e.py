"""The web UI end to end: ``dagster dev`` on the repo's workspace, GraphQL, headless Chromium.

What an operator does on day one: start ``dagster dev``, launch tonight's backup from the UI (here
through the GraphQL API the UI uses, with the ``dagster-graphql`` client), read back the four
materializations with their numbers, the restore drill's verdict and the schedules and sensors,
and look at the asset graph. Then stop it, and nothing of it keeps running.

Set ``TWINME_UI_SCREENSHOT_DIR`` to keep the screenshot (``asset-graph.png``) somewhere visible.
"""

from __future__ import annotations

import json
import os
import struct
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from dagster import DagsterRunStatus

from tests.support.dagster_dev import LOCATION_NAME, DagsterDev
from tests.support.headless_chromium import open_page
from twinme_ops.definitions import build_definitions
from twinme_ops.defs.backups.assets import backup_partitions
from twinme_ops.defs.backups.backup_set import BACKUP_ASSET_KEYS
from twinme_ops.defs.backups.checks import DRILL_CHECK

RUN_TIMEOUT_S = 360.0  # with the 180 s start-up, inside pytest-timeout's 600 s per test
WINDOW = (1600, 1000)
# the page of the backups group: its lineage graph, with each asset's latest event and checks
GRAPH_PATH = f"/locations/{LOCATION_NAME}/asset-groups/backups"

# docs/architecture.md, 'Public names': runbooks and users depend on these names. Those the code
# location defines are checked against what the UI serves; definitions added later are picked up
# from Definitions.
PUBLIC_JOBS = {
    "base_backup_job",
    "nightly_backup_job",
    "retention_job",
    "restore_drill_job",
    "pitr_drill_job",
    "recover_job",
    "database_tuning_job",
    "release_job",
    "deployment_tests_job",
    "jwt_key_rotation_job",
    "jwt_key_expiry_job",
    "capacity_report_job",
    "dependency_audit_job",
    "image_sboms_job",
}
PUBLIC_SCHEDULES = {
    "base_backup_schedule",
    "nightly_backup_schedule",
    "retention_schedule",
    "restore_drill_schedule",
    "pitr_drill_schedule",
    "database_tuning_schedule",
    "jwt_key_rotation_schedule",
    "jwt_key_expiry_schedule",
    "capacity_report_schedule",
    "dependency_audit_schedule",
}
PUBLIC_SENSORS = {"git_push_sensor", "slack_on_run_failure_sensor", "backup_freshness_sensor"}
# numeric metadata every backup component records (plotted over time by the UI)
COMPONENT_NUMBERS = {
    "bytes_in": "IntMetadataEntry",
    "bytes_out": "IntMetadataEntry",
    "size_mb": "FloatMetadataEntry",
    "duration_s": "FloatMetadataEntry",
    "compression_ratio": "FloatMetadataEntry",
    "throughput_mb_s": "FloatMetadataEntry",
}
SET_NUMBERS = {
    "total_bytes": "IntMetadataEntry",
    "total_mb": "FloatMetadataEntry",
    "backup_duration_s": "FloatMetadataEntry",
    "rows_total": "IntMetadataEntry",
    "keys_total": "IntMetadataEntry",
    "files": "IntMetadataEntry",
}

_METADATA_FIELDS = """
  __typename label
  ... on IntMetadataEntry { intValue intRepr }
  ... on FloatMetadataEntry { floatValue }
  ... on TextMetadataEntry { text }
"""

_ASSET_QUERY = """
  NAME: assetOrError(assetKey: {path: PATH}) {
    __typename
    ... on Asset {
      assetMaterializations(partitions: [$partition], limit: 1) {
        runId partition metadataEntries { METADATA }
      }
    }
  }
"""
_RESULTS_QUERY = (
    "query Results($partition: String!, $checkName: String!) {"
    + "".join(
        _ASSET_QUERY.replace("NAME", key.path[-1]).replace("PATH", json.dumps(key.path))
        for key in BACKUP_ASSET_KEYS
    )
    + """
  assetCheckExecutions(
    assetKey: {path: ["backup_set"]}, checkName: $checkName, partition: $partition, limit: 5
  ) {
    runId status partition
    evaluation { success description metadataEntries { METADATA } }
  }
}"""
).replace("METADATA", _METADATA_FIELDS)

_AUTOMATION_QUERY = """
{
  repositoriesOrError {
    __typename
    ... on RepositoryConnection {
      nodes {
        name
        location { name }
        jobs { name description isAssetJob }
        schedules { name description scheduleState { status } }
        sensors { name description sensorState { status ticks(limit: 5) { status } } }
      }
    }
  }
  assetNodes {
    assetKey { path }
    description
    assetChecksOrError { ... on AssetChecks { checks { name description } } }
  }
}
"""


# ------------------------------------------------------------------------------------------
# helpers


@dataclass
class BackupRun:
    """The nightly backup launched through GraphQL."""

    run_id: str
    partition: str
    status: DagsterRunStatus
    seconds: float


def numbers(entries: list[dict[str, Any]]) -> dict[str, tuple[str, float]]:
    """Numeric metadata entries by label: (GraphQL type, value)."""
    out: dict[str, tuple[str, float]] = {}
    for entry in entries:
        if entry["__typename"] == "IntMetadataEntry":
            # intValue is null beyond 32 bits; intRepr always holds the value
            out[entry["label"]] = ("IntMetadataEntry", int(entry["intRepr"]))
        elif entry["__typename"] == "FloatMetadataEntry":
            out[entry["label"]] = ("FloatMetadataEntry", float(entry["floatValue"]))
    return out


def png_facts(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct colours) of an 8-bit RGB/RGBA non-interlaced PNG, decoded here.

    A full decode (zlib + the five scanline filters), so a truncated or corrupt file fails.
    """
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    pos, idat, header = 8, [], None
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"{path}: bad CRC in chunk {kind!r}"
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    assert header is not None, f"{path}: no IHDR chunk"
    width, height, depth, colour_type, _, _, interlace = header
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, f"unexpected PNG {header}"
    bpp = 3 if colour_type == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(b"".join(idat))
    assert len(raw) == height * (stride + 1), f"{path}: pixel data of the wrong size"
    prev = bytearray(stride)
    colours: set[bytes] = set()
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:  # Sub
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:  # Up
            line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
        elif kind == 3:  # Average
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
        elif kind == 4:  # Paeth
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        else:
            assert kind == 0, f"{path}: unknown filter {kind} on row {y}"
        colours.update(bytes(line[i : i + 3]) for i in range(0, stride, bpp))
        prev = line
    return width, height, len(colours)


def screenshot_dir(tmp_path: Path) -> Path:
    configured = os.environ.get("TWINME_UI_SCREENSHOT_DIR")
    path = Path(configured) if configured else tmp_path
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def loaded_definitions() -> dg.RepositoryDefinition:
    """The Definitions the code location serves, loaded in this process for comparison."""
    return build_definitions().get_repository_def()


@pytest.fixture(scope="module")
def backup_run(dagster_dev: DagsterDev) -> BackupRun:
    """Tonight's set (the newest partition, as the schedule picks it), launched like the UI does."""
    partition = backup_partitions.get_last_partition_key()
    assert partition is not None
    client = dagster_dev.client()
    started = time.monotonic()
    run_id = client.submit_job_execution(
        "nightly_backup_job",
        repository_location_name=LOCATION_NAME,
        tags={"dagster/partition": partition},
    )
    status = client.get_run_status(run_id)
    while time.monotonic() - started < RUN_TIMEOUT_S:
        status = client.get_run_status(run_id)
        if status in (
            DagsterRunStatus.SUCCESS,
            DagsterRunStatus.FAILURE,
            DagsterRunStatus.CANCELED,
        ):
            break
        time.sleep(1)
    return BackupRun(run_id, partition, status, time.monotonic() - started)


# ------------------------------------------------------------------------------------------
# tests (in this order: the last one stops the servers)


def test_ui_serves_every_job_schedule_and_sensor_with_its_default_status(
    dagster_dev: DagsterDev, loaded_definitions: dg.RepositoryDefinition
) -> None:
    data = dagster_dev.graphql(_AUTOMATION_QUERY)
    repos = data["repositoriesOrError"]
    assert repos["__typename"] == "RepositoryConnection", repos
    (repo,) = [r for r in repos["nodes"] if r["location"]["name"] == LOCATION_NAME]

    jobs = {j["name"]: j for j in repo["jobs"] if not j["name"].startswith("__")}
    schedules = {s["name"]: s for s in repo["schedules"]}
    sensors = {s["name"]: s for s in repo["sensors"]}
    defined_jobs = {j.name for j in loaded_definitions.get_all_jobs()} - {"__ASSET_JOB"}
    defined_schedules = {s.name: s for s in loaded_definitions.schedule_defs}
    defined_sensors = {s.name: s for s in loaded_definitions.sensor_defs}

    # what the UI lists is exactly what the code location defines...
    assert set(jobs) == defined_jobs
    assert set(schedules) == set(defined_schedules)
    assert set(sensors) == set(defined_sensors)
    # ...and holds the public names runbooks use (those defined so far)
    assert PUBLIC_JOBS & defined_jobs == PUBLIC_JOBS, PUBLIC_JOBS - defined_jobs
    assert set(schedules) >= PUBLIC_SCHEDULES, PUBLIC_SCHEDULES - set(schedules)
    assert {"git_push_sensor", "backup_freshness_sensor"} <= set(sensors)
    assert (PUBLIC_SENSORS & set(defined_sensors)) <= set(sensors)
    assert all(n.endswith("_job") for n in jobs), "jobs are named <noun>_job (docs/architecture.md)"

    # a fresh instance starts each schedule and sensor in its declared default state
    for name, schedule in schedules.items():
        assert schedule["scheduleState"]["status"] == defined_schedules[name].default_status.value
    for name, sensor in sensors.items():
        assert sensor["sensorState"]["status"] == defined_sensors[name].default_status.value
    assert schedules["nightly_backup_schedule"]["scheduleState"]["status"] == "RUNNING"
    assert sensors["git_push_sensor"]["sensorState"]["status"] == "STOPPED"  # until a remote is set

    # the daemon evaluates running sensors: the freshness sensor has ticked since start-up
    deadline = time.monotonic() + 90
    while True:
        repos_now = dagster_dev.graphql(_AUTOMATION_QUERY)["repositoriesOrError"]["nodes"]
        sensor = next(
            s for r in repos_now for s in r["sensors"] if s["name"] == "backup_freshness_sensor"
        )
        if sensor["sensorState"]["ticks"] or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert sensor["sensorState"]["ticks"], "the daemon never evaluated backup_freshness_sensor"

    # the UI shows each definition's description (what test_descriptions.py checks in process)
    for name, job in jobs.items():
        assert job["description"] == loaded_definitions.get_job(name).description
    for name, schedule in schedules.items():
        assert schedule["description"] == defined_schedules[name].description
    asset_graph = loaded_definitions.asset_graph
    for node in data["assetNodes"]:
        key = dg.AssetKey(node["assetKey"]["path"])
        assert node["description"] == asset_graph.get(key).description, key
        for check in node["assetChecksOrError"].get("checks", []):
            spec = asset_graph.get_check_spec(dg.AssetCheckKey(key, check["name"]))
            assert check["description"] == spec.description


def test_nightly_backup_launched_through_graphql_records_numbers_and_a_passed_drill(
    dagster_dev: DagsterDev, backup_run: BackupRun
) -> None:
    assert backup_run.status == DagsterRunStatus.SUCCESS, (
        f"run {backup_run.run_id} ended {backup_run.status} after {backup_run.seconds:.0f} s; "
        f"dagster dev log:\n{dagster_dev.log_tail(120)}"
    )
    print(f"nightly_backup_job for {backup_run.partition}: {backup_run.seconds:.1f} s")
    data = dagster_dev.graphql(
        _RESULTS_QUERY, {"partition": backup_run.partition, "checkName": DRILL_CHECK}
    )

    # each of the four assets materialized for this partition by this run, with its numbers
    component_bytes = 0
    set_values: dict[str, tuple[str, float]] = {}
    for key in BACKUP_ASSET_KEYS:
        name = key.path[-1]
        asset = data[name]
        assert asset["__typename"] == "Asset", asset
        (mat,) = asset["assetMaterializations"]
        assert (mat["runId"], mat["partition"]) == (backup_run.run_id, backup_run.partition)
        values = numbers(mat["metadataEntries"])
        expected = SET_NUMBERS if name == "backup_set" else COMPONENT_NUMBERS
        for label, kind in expected.items():
            assert label in values, f"{name} lacks numeric metadata {label}: {sorted(values)}"
            assert values[label][0] == kind, f"{name}.{label} is {values[label][0]}, not {kind}"
        if name != "backup_set":
            assert values["bytes_out"][1] > 0 and values["bytes_in"][1] > 0
            assert values["duration_s"][1] >= 0
            component_bytes += int(values["bytes_out"][1])
            if name == "postgres_backup":  # the set's roles artifact comes with the dump
                assert values["roles"][1] > 0 and values["roles_bytes"][1] > 0
                component_bytes += int(values["roles_bytes"][1])
        else:
            set_values = values
            texts = {e["label"]: e.get("text") for e in mat["metadataEntries"]}
            assert texts["set_id"] == backup_run.partition
    assert set_values["total_bytes"][1] == component_bytes
    assert set_values["backup_duration_s"][1] > 0
    assert min(set_values[k][1] for k in ("rows_total", "keys_total", "files")) > 0

    # the numbers are those of the set on disk: its manifest (written last) says the same
    manifest = json.loads(
        (dagster_dev.backup_dir / backup_run.partition / "manifest.json").read_text()
    )
    assert manifest["total_bytes"] == set_values["total_bytes"][1]
    assert manifest["run_id"] == backup_run.run_id

    # the restore drill ran in the same run and passed, with its RTO recorded as numbers
    executions = [e for e in data["assetCheckExecutions"] if e["runId"] == backup_run.run_id]
    assert len(executions) == 1, data["assetCheckExecutions"]
    (execution,) = executions
    assert execution["status"] == "SUCCEEDED" and execution["partition"] == backup_run.partition
    evaluation = execution["evaluation"]
    assert evaluation["success"] is True, evaluation["description"]
    drill = numbers(evaluation["metadataEntries"])
    assert drill["rto_total_s"][0] == "FloatMetadataEntry" and drill["rto_total_s"][1] > 0
    for component in ("postgres", "redis", "files"):
        assert f"rto_{component}_s" in drill, sorted(drill)

    # and the team heard about it
    assert dagster_dev.slack is not None
    done = [m for m in dagster_dev.slack.messages if "backup completed successfully" in m]
    assert len(done) == 1 and backup_run.partition in done[0], dagster_dev.slack.messages


def test_asset_graph_renders_in_headless_chromium(
    dagster_dev: DagsterDev, backup_run: BackupRun, tmp_path: Path
) -> None:
    assert backup_run.status == DagsterRunStatus.SUCCESS
    # the repo's dagster.yaml turns off the one-time "Join the Dagster community" dialog that
    # would cover the graph
    url = dagster_dev.url + GRAPH_PATH
    out_dir = screenshot_dir(tmp_path)
    png = out_dir / "asset-graph.png"
    png.unlink(missing_ok=True)

    names = [key.path[-1] for key in BACKUP_ASSET_KEYS]

    def rendered(html: str) -> bool:
        # every backup asset is a node of the graph, and backup_set shows its passed drill
        return all(name in html for name in names) and "Passed" in html

    t0 = time.monotonic()
    with open_page(url, tmp_path / "profile", WINDOW) as page:
        html = page.wait_for("the backup assets with backup_set's drill passed", rendered)
        # the layout settles (edges, fonts) a moment after the data arrives
        time.sleep(1.0)
        page.screenshot(png)
    print(f"asset graph screenshot: {png} ({time.monotonic() - t0:.1f} s)")
    assert "Join the Dagster community" not in html
    width, height, colours = png_facts(png)
    assert (width, height) == WINDOW
    # measured at 1600x1000: a blank page has 1 colour, the app shell still "Loading
    # twinme_ops..." about 850 (antialiased navigation text), the rendered graph (node cards,
    # edges, kind badges, check status) about 2,800
    assert colours > 1500, f"{png} looks blank or still loading ({colours} colours)"


_EXPOSURE_QUERY = """
query Exposure($runId: ID!, $repo: RepositorySelector!) {
  allTopLevelResourceDetailsOrError(repositorySelector: $repo) {
    __typename
    ... on ResourceDetailsList {
      results { name description configuredValues { key value type } }
    }
  }
  logsForRun(runId: $runId, limit: 10000) {
    __typename
    ... on EventConnection {
      events {
        __typename
        ... on MessageEvent { message }
        ... on MaterializationEvent {
          metadataEntries {
            label
            ... on TextMetadataEntry { text }
            ... on JsonMetadataEntry { jsonString }
            ... on UrlMetadataEntry { url }
            ... on PathMetadataEntry { path }
          }
        }
      }
    }
  }
}
"""


def test_the_ui_shows_the_slack_webhook_by_variable_name_never_its_value(
    dagster_dev: DagsterDev, backup_run: BackupRun
) -> None:
    assert dagster_dev.slack is not None
    webhook = dagster_dev.slack.url
    secret = webhook.rsplit("/", 1)[-1]
    repo = {"repositoryLocationName": LOCATION_NAME, "repositoryName": "__repository__"}
    data = dagster_dev.graphql(_EXPOSURE_QUERY, {"runId": backup_run.run_id, "repo": repo})
    resources = data["allTopLevelResourceDetailsOrError"]
    assert resources["__typename"] == "ResourceDetailsList", resources
    slack = next(r for r in resources["results"] if r["name"] == "slack")
    values = {v["key"]: v for v in slack["configuredValues"]}
    # the resources page names the variable to set; the value stays in the environment
    assert values["webhook_url"]["type"] == "ENV_VAR"
    assert values["webhook_url"]["value"] == "SLACK_WEBHOOK_URL"
    logs = data["logsForRun"]
    assert logs["__typename"] == "EventConnection" and len(logs["events"]) > 20
    # neither the resources page nor anything the backup run recorded (log lines, metadata)
    # shows the webhook
    text = json.dumps(data)
    assert webhook not in text and secret not in text


def test_stopping_dagster_dev_ends_its_whole_process_group(dagster_dev: DagsterDev) -> None:
    members = dagster_dev.group_members()
    # webserver, daemon and code server at least, all in the one group the test stops
    assert len(members) >= 3, members
    t0 = time.monotonic()
    survivors = dagster_dev.stop()
    print(f"dagster dev stopped in {time.monotonic() - t0:.1f} s")
    assert survivors == [], f"survived SIGTERM: {survivors}"
    assert dagster_dev.group_members() == []
    assert dagster_dev.process.returncode is not None
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(dagster_dev.url + "/server_info", timeout=5)
