"""A CloudNativePG operator for tests: it takes the base backups that ``Backup`` objects ask for.

No cluster and no operator can run here, so :class:`BackupOperator` plays CloudNativePG with the
Barman Cloud plugin against kmock's emulator (``k8s_emulator.py``): it polls the ``Backup``
objects of the namespace through the official client and, for each new one, does what the plugin
does, then writes ``status`` through the ``/status`` subresource as the operator does:

- ``"barman"``: phase ``started``, then a real ``barman-cloud-backup`` of an embedded PostgreSQL
  into a moto S3 bucket (the tool production's plugin runs; installed under /opt/barman by
  ``.ci/deps``), then ``completed`` with what ``barman-cloud-backup-show`` reports (backup id,
  begin/end LSN and WAL, times); a failing tool gives ``failed`` with its error, as the plugin's;
- ``"fail"``: ``failed`` at once, with an error like the plugin's when the bucket is unreachable;
- ``"stuck"``: ``started`` and nothing more (an operator that never finishes).

``seen`` lists the Backup names handled, in order; a Backup whose phase is already set (a
finished one, or one created again on a retry) is never taken twice.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import kmock
import pytest
from kubernetes import client, config

from tests.support.k8s_emulator import ControllerLoop, EmulatorHandle
from twinme_ops.backups.pitr.cnpg_backup import GROUP, PLURAL, VERSION
from twinme_ops.scratch.postgres import PostgresServer

NAMESPACE = "twinme-postgres"
CLUSTER = "twinme-db"
BARMAN_BIN = Path(os.environ.get("TWINME_BARMAN_BIN", "/opt/barman/bin"))
BACKUPS = kmock.resource(f"{GROUP}/{VERSION}/{PLURAL}")
FAIL_ERROR = (
    "rpc error: code = Unknown desc = while taking the backup: exit status 4: "
    "barman-cloud-backup: ERROR: Bucket twinme-db-backups does not exist"
)

OperatorMode = Literal["barman", "fail", "stuck"]


def barman_available() -> bool:
    return (BARMAN_BIN / "barman-cloud-backup").exists()


def declare_backups(handle: EmulatorHandle) -> None:
    """Make ``backups.postgresql.cnpg.io`` known to the emulator (list and /status need it)."""

    def declare(km: Any) -> None:
        km.resources[BACKUPS] = kmock.ResourceInfo(
            kind="Backup",
            singular="backup",
            namespaced=True,
            verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
            subresources={"status"},
        )

    handle.run_in_loop(declare)


def custom_api(kubeconfig: Path) -> client.CustomObjectsApi:
    api_client = config.new_client_from_config(config_file=str(kubeconfig), persist_config=False)
    return client.CustomObjectsApi(api_client)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _barman_time(text: str) -> str:
    """barman's ``2026-12-05 13:02:00.123456+00:00`` as the API's RFC 3339 ``...Z``."""
    try:
        return datetime.fromisoformat(text).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return _now()


class BackupOperator(ControllerLoop):
    """Plays CloudNativePG + the Barman Cloud plugin for the Backups of one namespace."""

    label = "cloudnative-pg operator"

    def __init__(
        self,
        kubeconfig: Path,
        *,
        mode: OperatorMode,
        server: PostgresServer | None = None,
        destination: str = "",
        endpoint: str = "",
        interval_s: float = 0.1,
    ) -> None:
        super().__init__(interval_s)
        self.api = custom_api(kubeconfig)
        self.mode: OperatorMode = mode
        self.server = server
        self.destination = destination
        self.endpoint = endpoint
        self.seen: list[str] = []
        self.commands: list[list[str]] = []

    def _patch_status(self, name: str, status: dict[str, Any]) -> None:
        self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, NAMESPACE, PLURAL, name, {"status": status}
        )

    def _reconcile(self) -> None:
        listed: Any = self.api.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)
        for item in listed.get("items", []):
            name = item["metadata"]["name"]
            if (item.get("status") or {}).get("phase") or name in self.seen:
                continue
            self.seen.append(name)
            self._take(name, item)

    def _take(self, name: str, backup: dict[str, Any]) -> None:
        cluster = backup["spec"]["cluster"]["name"]
        started = _now()
        self._patch_status(name, {"phase": "started", "method": "plugin", "startedAt": started})
        if self.mode == "stuck":
            return
        if self.mode == "fail":
            self._patch_status(name, {"phase": "failed", "error": FAIL_ERROR, "stoppedAt": _now()})
            return
        try:
            status = self._barman_backup(cluster, started)
        except Exception as exc:  # a bug of this fixture: fail the Backup now, not at timeout
            self.errors.append(exc)
            status = {"phase": "failed", "error": f"test operator: {exc!r}", "stoppedAt": _now()}
        self._patch_status(name, status)

    def _barman(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        assert self.server is not None
        argv = [str(BARMAN_BIN / tool), "--cloud-provider", "aws-s3"]
        argv += ["--endpoint-url", self.endpoint, *args]
        self.commands.append(argv)
        env = {**os.environ, "PGCONNECT_TIMEOUT": "10"}
        return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)

    def _barman_backup(self, cluster: str, started: str) -> dict[str, Any]:
        """``barman-cloud-backup`` of the embedded server, then the status the plugin writes."""
        assert self.server is not None
        proc = self._barman(
            "barman-cloud-backup",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.server.port),
            "-U",
            "postgres",
            self.destination,
            cluster,
        )
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return {"phase": "failed", "error": " ".join(tail)[:500], "stoppedAt": _now()}
        listed = self._barman(
            "barman-cloud-backup-list", "--format", "json", self.destination, cluster
        )
        backups = json.loads(listed.stdout)["backups_list"]
        backup_id = backups[-1]["backup_id"]
        show = self._barman(
            "barman-cloud-backup-show", "--format", "json", self.destination, cluster, backup_id
        )
        # one flat entry, under barman's own server name for a cloud catalog ("cloud")
        [info] = json.loads(show.stdout).values()
        return {
            "phase": "completed",
            "method": "plugin",
            "online": True,
            "backupId": backup_id,
            "backupName": info.get("backup_name") or f"backup-{backup_id}",
            "serverName": cluster,
            "destinationPath": self.destination,
            "endpointURL": self.endpoint,
            "beginLSN": info["begin_xlog"],
            "endLSN": info["end_xlog"],
            "beginWal": info["begin_wal"],
            "endWal": info["end_wal"],
            "startedAt": _barman_time(str(info.get("begin_time_iso") or "")) or started,
            "stoppedAt": _barman_time(str(info.get("end_time_iso") or "")),
        }


@pytest.fixture
def backup_operator_factory(
    k8s_emulator: tuple[Path, EmulatorHandle],
) -> Iterator[Any]:
    """Start a :class:`BackupOperator` in the mode a test asks for (stopped afterwards)."""
    kubeconfig, handle = k8s_emulator
    declare_backups(handle)
    started: list[BackupOperator] = []

    def start(mode: OperatorMode, **kwargs: Any) -> BackupOperator:
        operator = BackupOperator(kubeconfig, mode=mode, **kwargs).start()
        started.append(operator)
        return operator

    try:
        yield start
    finally:
        for operator in started:
            operator.stop()
