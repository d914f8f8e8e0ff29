"""Continuous archiving everywhere, and the RPO measured all the time (issue 14), with real
processes: PostgreSQL 18, pg_receivewal, the detached heartbeat writer, a Pushgateway and a Slack
receiver. No mocks.

* the sandbox, started through the resources with the local engine, archives itself: receiver,
  first full base backup, heartbeat writer; ``stop_sandbox`` stops both processes and the next
  start resumes archiving with no gap in the WAL;
* ``wal_archive_rpo_sensor`` on a password-protected server: RPO near 0 while streaming, a
  SIGKILLed receiver alerts at the next evaluation (once), restarting it resolves it; neither
  the alert nor the skip messages nor the metrics carry the password.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from tests.support.pushgateway import Gateway, start_gateway, stop_gateway, value
from tests.support.slack_receiver import SlackReceiver
from twinme_ops import cli
from twinme_ops.alerting.metrics import MetricsResource
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.backups.pitr.archive import WalArchive
from twinme_ops.backups.pitr.basebackup import list_backups
from twinme_ops.backups.pitr.continuous import (
    ensure_continuous_archiving,
    stop_continuous_archiving,
)
from twinme_ops.backups.pitr.heartbeat import read_heartbeats
from twinme_ops.backups.pitr.heartbeat_writer import heartbeat_writer_pid
from twinme_ops.backups.pitr.layout import ArchiveLayout
from twinme_ops.backups.pitr.receiver import receiver_pid, start_receiver, wait_for_flush
from twinme_ops.backups.pitr.rpo import measure_rpo
from twinme_ops.backups.pitr.walcheck import wal_gap
from twinme_ops.defs.alerts.sensors import CNPG_RPO_SKIP, wal_archive_rpo_sensor
from twinme_ops.defs.resources import SandboxPostgres
from twinme_ops.sandbox.servers import companions, stop_sandbox
from twinme_ops.scratch.local import pid_alive
from twinme_ops.scratch.postgres import PostgresServer
from twinme_ops.servers.postgres import PostgresResource

PASSWORD = "rpo-Secret-pw7"
FIGURES: dict[str, float] = {}


def _wait(predicate, timeout: float = 15.0, step: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def test_sandbox_archives_continuously_and_resumes_without_gap(
    server_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = server_tmp / "home"
    home.mkdir(mode=0o755)
    root = home / "wal-archive"
    resource = SandboxPostgres(
        sandbox_home=str(home), wal_archive_root=str(root), heartbeat_interval_s=0.5
    )
    layout = ArchiveLayout.at(root)
    try:
        t0 = time.monotonic()
        url = resource.resolved_url()  # starts the sandbox, and its archiving with it
        FIGURES["sandbox start with archiving (s)"] = round(time.monotonic() - t0, 1)
        receiver, writer = receiver_pid(layout), heartbeat_writer_pid(layout)
        assert receiver is not None and writer is not None
        (first,) = list_backups(layout)
        assert first.kind == "full" and first.verified
        assert set(companions(home)) == {"heartbeat-writer", "wal-receiver"}
        # heartbeats flow and the synchronous receiver keeps up with them
        with psycopg.connect(url, autocommit=True) as conn:
            assert _wait(lambda: len(read_heartbeats(conn)) >= 3)
        reading = measure_rpo(layout, url)
        assert reading.receiver_alive and reading.rpo_s is not None and reading.rpo_s < 2

        # both die: `twinme-ops sandbox up` (idempotent) starts them again, same archive
        os.kill(receiver, signal.SIGKILL)
        os.kill(writer, signal.SIGKILL)
        assert _wait(lambda: receiver_pid(layout) is None and heartbeat_writer_pid(layout) is None)
        monkeypatch.delenv("TWINME_WAL_ARCHIVE_ROOT", raising=False)
        monkeypatch.delenv("TWINME_WAL_ARCHIVE", raising=False)
        monkeypatch.setenv("TWINME_HEARTBEAT_INTERVAL_S", "0.5")
        assert cli.main(["sandbox", "--home", str(home), "up"]) == 0
        out = capsys.readouterr().out
        assert f"TWINME_WAL_ARCHIVE_ROOT={root}" in out and "heartbeat writer pid" in out
        receiver, writer = receiver_pid(layout), heartbeat_writer_pid(layout)
        assert receiver is not None and writer is not None
        assert len(list_backups(layout)) == 1

        assert stop_sandbox(home) is True
        assert not pid_alive(receiver) and not pid_alive(writer)
        assert receiver_pid(layout) is None and heartbeat_writer_pid(layout) is None

        # a restart resumes at the slot's position: the WAL since the first backup has no hole
        url = resource.resolved_url()
        assert receiver_pid(layout) is not None and heartbeat_writer_pid(layout) is not None
        assert len(list_backups(layout)) == 1  # no second full backup
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_switch_wal()")
            wait_for_flush(conn, timeout_s=30)
        assert wal_gap(layout, first) is None
    finally:
        stop_sandbox(home)
    assert receiver_pid(layout) is None and heartbeat_writer_pid(layout) is None
    print(json.dumps(FIGURES, indent=2))


@pytest.fixture(scope="module")
def source(server_tmp_root: Path) -> Iterator[tuple[PostgresServer, ArchiveLayout]]:
    base = Path(tempfile.mkdtemp(prefix="rpo-", dir=server_tmp_root))
    base.chmod(0o755)
    server = PostgresServer.start(base / "data", password=PASSWORD)
    layout = ArchiveLayout.at(base / "archive")
    try:
        yield server, layout
    finally:
        stop_continuous_archiving(layout)
        server.stop()


@pytest.fixture(scope="module")
def gateway(server_tmp_root: Path) -> Iterator[str]:
    tmp = Path(tempfile.mkdtemp(prefix="gw-", dir=server_tmp_root))
    proc, gw = start_gateway(tmp, auth=False)
    try:
        yield gw.url
    finally:
        stop_gateway(proc)


def test_rpo_sensor_alerts_on_a_dead_receiver_and_resolves(
    source: tuple[PostgresServer, ArchiveLayout], slack_receiver: SlackReceiver, gateway: str
) -> None:
    server, layout = source
    url = server.url("postgres", with_password=True)
    assert PASSWORD in url
    report = ensure_continuous_archiving(server, url, layout, heartbeat_interval_s=0.5)
    assert report.base_backup is not None
    resources = {
        "wal_archive": WalArchive(engine="local", root=str(layout.root), rpo_alert_s=120),
        "postgres": PostgresResource(url=url),
        "slack": SlackNotifier(webhook_url=slack_receiver.url),
        "metrics": MetricsResource(pushgateway_url=gateway),
    }
    skips: list[str] = []
    with dg.instance_for_test() as instance:

        def tick(cursor: str | None) -> str | None:
            with dg.build_sensor_context(
                instance=instance, resources=resources, cursor=cursor
            ) as ctx:
                result = wal_archive_rpo_sensor(ctx)
                assert isinstance(result, dg.SkipReason)
                skips.append(result.skip_message or "")
                return ctx.cursor

        # streaming: RPO near 0, no alert
        readings = []
        for _ in range(5):
            readings.append(measure_rpo(layout, url).rpo_s)
            time.sleep(0.2)
        assert all(r is not None and r < 1.0 for r in readings), readings
        FIGURES["RPO while streaming, max of 5 (s)"] = max(r for r in readings if r is not None)
        cursor = tick(None)
        assert "receiver streaming" in skips[-1] and not slack_receiver.messages
        gw = Gateway(int(gateway.rsplit(":", 1)[1]), None)
        samples = gw.samples()
        assert value(samples, "twinme_wal_archive_receiver_up", operation="wal_archive") == 1
        assert value(samples, "twinme_wal_archive_rpo_seconds", operation="wal_archive") < 2

        # SIGKILL the receiver: the next evaluation alerts, once
        pid = receiver_pid(layout)
        assert pid is not None
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        assert _wait(lambda: not pid_alive(pid, "pg_receivewal"))
        time.sleep(1.5)  # heartbeats continue; the archive does not get them
        evaluated = time.monotonic()
        cursor = tick(cursor)
        FIGURES["evaluation that alerts, Slack included (s)"] = round(
            time.monotonic() - evaluated, 3
        )
        FIGURES["kill -> alert delivered (1.5 s wait + evaluation) (s)"] = round(
            time.monotonic() - killed, 2
        )
        assert skips[-1].startswith("alerted: the WAL receiver is not running"), skips[-1]
        assert len(slack_receiver.messages) == 1
        text = slack_receiver.messages[0]
        assert "WAL archive falls behind" in text and "receiver is not running" in text
        assert "twinme-ops sandbox up" in text and "safe_wal_size" in text
        rpo = measure_rpo(layout, url).rpo_s
        assert rpo is not None and rpo >= 1.0, rpo  # grows from the last flush
        FIGURES["RPO 1.5 s after the kill (s)"] = rpo
        samples = gw.samples()
        assert value(samples, "twinme_wal_archive_receiver_up", operation="wal_archive") == 0
        cursor = tick(cursor)
        assert len(slack_receiver.messages) == 1 and "alerted 0 min ago" in skips[-1]

        # over the threshold too (threshold lowered to 1 s): the words say how far behind
        resources["wal_archive"] = WalArchive(engine="local", root=str(layout.root), rpo_alert_s=1)
        tick(None)
        assert "the archive is" in skips[-1] and "behind (threshold 1 s)" in skips[-1]
        assert len(slack_receiver.messages) == 2
        resources["wal_archive"] = WalArchive(engine="local", root=str(layout.root))

        # restart: the receiver catches up from the slot, the next evaluation resolves it
        start_receiver(layout, url, synchronous=True)
        with psycopg.connect(url, autocommit=True) as conn:
            wait_for_flush(conn, timeout_s=30)
        tick(cursor)
        assert "receiver streaming" in skips[-1]
        assert len(slack_receiver.messages) == 3
        assert "caught up" in slack_receiver.messages[-1]

    everything = "\n".join(skips) + "\n".join(
        m.decode(errors="replace") for m in slack_receiver.raw
    )
    everything += gw.get("/metrics").decode()
    assert PASSWORD not in everything
    print(json.dumps(FIGURES, indent=2))


def test_twinme_ops_heartbeat_writes_until_sigterm(
    source: tuple[PostgresServer, ArchiveLayout],
) -> None:
    """What the production Deployment runs: DATABASE_URL from the environment, SIGTERM stops it."""
    server, _ = source
    url = server.url("postgres", with_password=True)
    with psycopg.connect(url, autocommit=True) as conn:
        before = len(read_heartbeats(conn))
    env = {**os.environ, "DATABASE_URL": url, "TWINME_HEARTBEAT_INTERVAL_S": "0.2"}
    env.pop("TWINME_HEARTBEAT_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "twinme_ops.cli", "heartbeat"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            assert _wait(lambda: len(read_heartbeats(conn)) >= before + 3, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    text = out.decode()
    assert "every 0.2 s" in text and "stopped after" in text
    assert PASSWORD not in text
    # without a database it says what to set
    env.pop("DATABASE_URL")
    bad = subprocess.run(
        [sys.executable, "-m", "twinme_ops.cli", "heartbeat"], env=env, capture_output=True
    )
    assert bad.returncode == 2 and b"Fix: set DATABASE_URL" in bad.stderr


def test_cli_parser_has_stop_and_heartbeat() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["sandbox", "stop"]).handler is cli.cmd_sandbox_down
    args = parser.parse_args(["heartbeat", "--interval", "2"])
    assert args.handler is cli.cmd_heartbeat and args.interval == 2 and args.keep_days == 7
    with pytest.raises(SystemExit):
        parser.parse_args(["heartbeat", "--interval", "0"])


def test_rpo_sensor_skips_for_cloudnative_pg_and_off() -> None:
    for engine, expected in (("cloudnative-pg", CNPG_RPO_SKIP), ("off", "is off")):
        resources = {
            "wal_archive": WalArchive(engine=engine),
            "postgres": PostgresResource(url="postgresql://u:never-Shown1@127.0.0.1:1/x"),
            "slack": SlackNotifier(webhook_url=""),
            "metrics": MetricsResource(),
        }
        with dg.build_sensor_context(resources=resources) as ctx:
            result = wal_archive_rpo_sensor(ctx)
        assert isinstance(result, dg.SkipReason)
        assert expected in (result.skip_message or "")
    assert "cnpg_pg_stat_archiver_seconds_since_last_archival" in CNPG_RPO_SKIP


def test_the_sensor_loads_running_every_30_seconds() -> None:
    from twinme_ops.definitions import build_definitions

    sensor = build_definitions().get_sensor_def("wal_archive_rpo_sensor")
    assert sensor.minimum_interval_seconds == 30
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert {"wal_archive", "postgres", "slack", "metrics"} <= set(sensor.required_resource_keys)
