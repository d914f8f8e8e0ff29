"""postgres_base_backup with the local engine, against a real PostgreSQL 18 server (issue 14).

One source server per module, with a password for TCP logins (no secret may reach a log line or
metadata), prepared for archiving by prepare_local_source as an operator would, then backed up by
the asset itself: a full backup, an incremental one on it, a server that is not ready, and a run
killed in the middle of its copy.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from twinme_ops.backups.pitr.archive import WalArchive
from twinme_ops.backups.pitr.basebackup import TMP_PREFIX, choose_kind, list_backups
from twinme_ops.backups.pitr.layout import ArchiveLayout, parse_lsn
from twinme_ops.backups.pitr.source import prepare_local_source
from twinme_ops.defs.backups.base_backup import postgres_base_backup
from twinme_ops.scratch.postgres import PostgresServer
from twinme_ops.servers.postgres import PostgresResource

PASSWORD = "base-backup-Passw0rd"
FIGURES: dict[str, object] = {}


@dataclass
class Source:
    base: Path
    server: PostgresServer
    root: Path

    @property
    def url(self) -> str:
        return self.server.url(with_password=True)

    @property
    def layout(self) -> ArchiveLayout:
        return ArchiveLayout.at(self.root)


@pytest.fixture(scope="module")
def source(server_tmp_root: Path) -> Iterator[Source]:
    base = Path(tempfile.mkdtemp(prefix="basebackup-", dir=server_tmp_root))
    base.chmod(0o755)
    server = PostgresServer.start(base / "source", password=PASSWORD)
    try:
        prepare_local_source(server)
        yield Source(base, server, base / "archive")
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
        print("\nbase backup figures:", FIGURES)


def _materialize(
    url: str, root: Path, config: dict[str, Any] | None = None
) -> tuple[dg.ExecuteInProcessResult, list[str]]:
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [postgres_base_backup],
        resources={
            "postgres": PostgresResource(url=url),
            "wal_archive": WalArchive(engine="local", root=str(root)),
        },
        run_config={"ops": {"postgres_base_backup": {"config": config or {}}}},
        instance=instance,
        raise_on_error=False,
    )
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    return result, logs


def _metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    [event] = result.get_asset_materialization_events()
    meta = event.materialization.metadata
    return {key: getattr(value, "value", value) for key, value in meta.items()}


def _failure(result: dg.ExecuteInProcessResult) -> str:
    [event] = [e for e in result.all_events if e.is_step_failure]
    data = event.step_failure_data
    assert data is not None
    return (data.user_failure_data.description if data.user_failure_data else "") or str(data.error)


def _no_secret(*texts: object) -> None:
    for text in texts:
        assert PASSWORD not in str(text)


def test_full_then_incremental(source: Source) -> None:
    first, logs = _materialize(source.url, source.root, {"progress_interval_s": 0.05})
    assert first.success, _failure(first)
    full = _metadata(first)
    assert full["kind"] == "full" and full["parent"] == "" and full["chain_length"] == 1
    assert full["verified"] is True and full["size"] > 1_000_000
    assert parse_lsn(full["stop_lsn"]) >= parse_lsn(full["start_lsn"]) > 0
    assert full["duration_s"] > 0 and full["throughput_mib_s"] > 0
    assert any("MiB copied" in line for line in logs), logs  # progress in the run's log
    assert any("pg_verifybackup" in line for line in logs)
    _no_secret(logs, full)

    with source.server.connect() as conn:
        conn.execute("CREATE TABLE notes (id serial PRIMARY KEY, body text)")
        conn.execute(
            "INSERT INTO notes (body) SELECT repeat('x', 200) FROM generate_series(1, 5000)"
        )
    second, logs = _materialize(source.url, source.root)
    assert second.success, _failure(second)
    inc = _metadata(second)
    assert inc["kind"] == "incremental" and inc["parent"] == full["backup_id"]
    assert inc["chain_length"] == 2 and inc["chain"] == [full["backup_id"], inc["backup_id"]]
    assert parse_lsn(inc["start_lsn"]) > parse_lsn(full["stop_lsn"])
    assert inc["size"] < full["size"]
    _no_secret(logs, inc)
    backups = list_backups(source.layout)
    assert [b.id for b in backups] == [full["backup_id"], inc["backup_id"]]
    FIGURES["full"] = {k: full[k] for k in ("size_mib", "duration_s", "throughput_mib_s")}
    FIGURES["incremental"] = {k: inc[k] for k in ("size_mib", "duration_s", "throughput_mib_s")}


def test_a_full_backup_comes_back_after_full_every_days(source: Source) -> None:
    if not list_backups(source.layout):  # run alone: take the full backup it starts from
        result, _ = _materialize(source.url, source.root)
        assert result.success, _failure(result)
    newest_full = [b for b in list_backups(source.layout) if b.kind == "full"][-1]
    kind, parent, _ = choose_kind(source.layout, 7, newest_full.finished + timedelta(days=6))
    assert kind == "incremental" and parent == list_backups(source.layout)[-1]
    kind, parent, why = choose_kind(source.layout, 7, newest_full.finished + timedelta(days=7))
    assert kind == "full" and parent is None and "7.0 days old" in why
    empty = ArchiveLayout.at(source.base / "empty-archive")
    assert choose_kind(empty, 7)[:2] == ("full", None)


def test_a_server_that_is_not_ready_fails_with_the_fix(server_tmp_root: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="basebackup-raw-", dir=server_tmp_root))
    base.chmod(0o755)
    server = PostgresServer.start(
        base / "raw", password=PASSWORD, settings={"wal_level": "minimal", "max_wal_senders": "0"}
    )
    try:
        result, logs = _materialize(server.url(with_password=True), base / "archive")
        assert not result.success
        message = _failure(result)
        assert "not ready for base backups" in message and "Fix:" in message
        assert "wal_level is minimal" in message and "summarize_wal" in message
        assert not (base / "archive" / "base").exists() or not list_backups(
            ArchiveLayout.at(base / "archive")
        )
        _no_secret(message, logs)
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


_KILLED_BACKUP = """
import sys
from twinme_ops.backups.pitr.basebackup import take_base_backup
from twinme_ops.backups.pitr.layout import ArchiveLayout
take_base_backup(ArchiveLayout.at(sys.argv[1]), sys.argv[2], max_rate="32k")
"""


def test_a_killed_run_leaves_nothing_complete(source: Source) -> None:
    before = [b.id for b in list_backups(source.layout)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_BACKUP, str(source.root), source.url],
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        partial: list[Path] = []
        while time.monotonic() < deadline:
            partial = [
                p for p in source.layout.base_dir.glob(f"{TMP_PREFIX}*") if (p / "data").is_dir()
            ]
            if partial and any((partial[0] / "data").iterdir()):
                break
            assert proc.poll() is None, "the throttled backup ended before it could be killed"
            time.sleep(0.1)
        assert partial, "the backup never started copying"
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its pg_basebackup, mid-copy
        proc.wait(10)
    assert [b.id for b in list_backups(source.layout)] == before  # nothing half-seen
    assert partial[0].exists()  # the killed copy stays until a run sweeps it

    result, logs = _materialize(source.url, source.root)
    assert result.success, _failure(result)
    assert not partial[0].exists()
    assert any("removed the unfinished base backups" in line for line in logs), logs
    assert len(list_backups(source.layout)) == len(before) + 1


def test_only_the_sandbox_is_prepared_by_the_step(tmp_path: Path) -> None:
    """prepare_local_source (settings, pg_hba.conf, a restart) is for the server we run; a
    configured server (even locally) is only checked."""
    from twinme_ops.defs.resources import SandboxPostgres, sandbox_postgres_server

    assert sandbox_postgres_server(PostgresResource(url="postgresql://u@db.example:5432/x")) is None
    local_but_configured = SandboxPostgres(url="postgresql://u@127.0.0.1:5432/x", sandbox_home="")
    assert sandbox_postgres_server(local_but_configured) is None
