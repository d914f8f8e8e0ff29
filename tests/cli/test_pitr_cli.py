"""Issue 14's "done means", as a newcomer types it on a fresh sandbox: continuous archiving with
its RPO measured (``twinme-ops pitr status``), a point-in-time drill to a random second proved by
the heartbeats (``pitr drill``), and ``recover_job`` with ``target_time`` returning the sandbox's
PostgreSQL to that second (``pitr recover``): every heartbeat up to it back, none after it.

Each command runs in a process of its own, in an empty working directory, with nothing but
``TWINME_HOME`` set: no DATABASE_URL, no archive root, no Dagster home."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

SCRUBBED = (
    "DATABASE_URL",
    "REDIS_URL",
    "TWINME_FILES_DIR",
    "TWINME_BACKUP_URL",
    "TWINME_WAL_ARCHIVE",
    "TWINME_WAL_ARCHIVE_ROOT",
    "TWINME_ENV",
    "DAGSTER_HOME",
    "SLACK_WEBHOOK_URL",
    "KUBECONFIG",
    "TWINME_ACCESS_POLICY",
    "TWINME_API_URL",
)


@pytest.fixture
def fresh(server_tmp: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """An empty working directory and a TWINME_HOME of its own; its sandbox stopped after."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
    env["TWINME_HOME"] = str(server_tmp / ".twinme")
    env["TWINME_HEARTBEAT_INTERVAL_S"] = "1"
    yield server_tmp, env
    subprocess.run(
        [sys.executable, "-m", "twinme_ops.cli", "sandbox", "down"],
        cwd=server_tmp,
        env=env,
        capture_output=True,
        timeout=120,
    )


def _twinme_ops(where: tuple[Path, dict[str, str]], *argv: str) -> subprocess.CompletedProcess:
    cwd, env = where
    return subprocess.run(
        [sys.executable, "-m", "twinme_ops.cli", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_archive_measure_drill_and_recover_the_sandbox_to_a_second(
    fresh: tuple[Path, dict[str, str]],
) -> None:
    up = _twinme_ops(fresh, "sandbox", "up")
    assert up.returncode == 0, up.stderr[-3000:]
    url = re.search(r"^DATABASE_URL=(\S+)$", up.stdout, re.M)
    assert url, up.stdout
    time.sleep(6)  # a few heartbeats inside the recovery window

    status = _twinme_ops(fresh, "pitr", "status")
    assert status.returncode == 0, status.stdout + status.stderr[-3000:]
    assert "receiver (pg_receivewal --synchronous): streaming" in status.stdout
    rpo = re.search(r"RPO now: ([0-9.]+) s", status.stdout)
    assert rpo and float(rpo.group(1)) < 120, status.stdout
    assert "heartbeat writer: running" in status.stdout and "PROBLEM" not in status.stdout

    drill = _twinme_ops(fresh, "pitr", "drill", "--seed", "7")
    assert drill.returncode == 0, drill.stdout + drill.stderr[-3000:]
    out = drill.stdout
    assert "point-in-time drill passed (local archive, seed 7)" in out
    target = re.search(r"random target (\S+) ", out)
    assert target, out
    proofs = re.findall(r"(\d+) of (\d+) heartbeats before it present, (\d+) after it", out)
    assert len(proofs) == 2, out  # the random target, then the latest point
    for present, expected, after in proofs:
        assert int(expected) > 0 and present == expected and after == "0", out
    assert "achieved RPO" in out
    assert "Warning" not in drill.stderr  # the summary is what a person sees

    at = datetime.fromisoformat(target.group(1))
    with psycopg.connect(url.group(1), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM twinme_ops.heartbeat WHERE at <= %s", (at,))
        before = row.fetchone()
        conn.execute("CREATE TABLE mistake AS SELECT 1 AS written_after_the_target")

    started = datetime.now(UTC)
    recover = _twinme_ops(fresh, "pitr", "recover", target.group(1), "--confirm", "twinme")
    assert recover.returncode == 0, recover.stdout + recover.stderr[-3000:]
    assert f"recovered PostgreSQL (twinme) to {target.group(1)}" in recover.stdout
    assert "safety backup of what was there: set safety-" in recover.stdout
    with psycopg.connect(url.group(1), autocommit=True) as conn:
        counts = conn.execute(
            "SELECT count(*) FILTER (WHERE at <= %s), "
            "count(*) FILTER (WHERE at > %s AND at < %s) FROM twinme_ops.heartbeat",
            (at, at, started),
        ).fetchone()
        mistake = conn.execute("SELECT to_regclass('public.mistake')").fetchone()
    # every heartbeat up to the second is back, none from after it until the recovery began
    # (the writer keeps committing into the recovered database), and the later table is gone
    assert before is not None and counts is not None and mistake is not None
    assert tuple(counts) == (before[0], 0)
    assert mistake[0] is None


def test_recover_refuses_a_time_without_a_zone_before_anything(
    fresh: tuple[Path, dict[str, str]],
) -> None:
    refused = _twinme_ops(fresh, "pitr", "recover", "2026-12-05T09:14:00", "--confirm", "twinme")
    assert refused.returncode == 2
    assert "has no time zone. Fix: add one" in refused.stderr
    assert not (fresh[0] / ".twinme" / "sandbox").exists()  # nothing was started
