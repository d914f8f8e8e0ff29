"""A source PostgreSQL archived into a moto S3 bucket by barman-cloud, as production's plugin does.

CloudNativePG's Barman Cloud plugin runs ``barman-cloud-wal-archive`` as the instance's
``archive_command`` and ``barman-cloud-backup`` for base backups, into
``<destinationPath>/<serverName>/``. Here the same tools (``/opt/barman/bin``, from ``.ci/deps``)
do it for an embedded PostgreSQL 18: the ``archive_command`` runs as the server's own user and
finds the moto endpoint on its command line and the credentials in the environment the server
inherited from the test process (``s3_fixtures.py`` sets ``AWS_*`` for the session), never in
the configuration. Both compress with gzip, as ``deploy/postgres/20-objectstore.yaml`` asks.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3

from tests.support.cnpg_operator import BARMAN_BIN, CLUSTER
from twinme_ops.backups.pitr.barman_cloud import BarmanBucket
from twinme_ops.backups.pitr.engine import BarmanEngine
from twinme_ops.scratch.postgres import PostgresServer


def barman(tool: str, endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    """One barman-cloud tool against the moto endpoint (as root, like the plugin's sidecar,
    which reads the data directory)."""
    argv = [str(BARMAN_BIN / tool), "--cloud-provider", "aws-s3", "--endpoint-url", endpoint]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=300, check=False)


@dataclass
class BarmanSource:
    """A source server whose WAL (and base backups) go to ``destination``/``server_name``."""

    base: Path
    source: PostgresServer
    endpoint: str
    bucket_name: str
    prefix: str
    server_name: str
    backup_id: str = ""

    @property
    def destination(self) -> str:
        return f"s3://{self.bucket_name}/{self.prefix}"

    def take_backup(self) -> str:
        """``barman-cloud-backup`` of the source (immediate checkpoint), as the plugin takes it;
        the new backup's id (also in ``backup_id``)."""
        proc = barman(
            "barman-cloud-backup",
            self.endpoint,
            "--gzip",
            "--immediate-checkpoint",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.source.port),
            "-U",
            "postgres",
            self.destination,
            self.server_name,
        )
        assert proc.returncode == 0, proc.stderr
        listed = barman(
            "barman-cloud-backup-list",
            self.endpoint,
            "--format",
            "json",
            self.destination,
            self.server_name,
        )
        assert listed.returncode == 0, listed.stderr
        self.backup_id = str(json.loads(listed.stdout)["backups_list"][-1]["backup_id"])
        return self.backup_id

    def bucket(self) -> BarmanBucket:
        return BarmanBucket.at(self.destination, self.server_name, str(BARMAN_BIN))

    def engine(self) -> BarmanEngine:
        return BarmanEngine(self.bucket(), poll_s=0.2)

    def wal_keys(self) -> dict[str, str]:
        """Archived WAL segment name -> object key."""
        client = boto3.client("s3", endpoint_url=self.endpoint)
        prefix = f"{self.prefix}/{self.server_name}/wals/"
        keys: dict[str, str] = {}
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket_name, Prefix=prefix
        ):
            for obj in page.get("Contents", []):
                filename = obj["Key"].rsplit("/", 1)[-1]
                if re.fullmatch(r"[0-9A-F]{24}(\.gz)?", filename):
                    keys[filename[:24]] = obj["Key"]
        return keys


@contextmanager
def barman_archived_source(
    root: Path, endpoint: str, bucket_name: str, *, prefix: str = "cloudnative-pg"
) -> Iterator[BarmanSource]:
    """Start a source whose ``archive_command`` is barman-cloud-wal-archive (``archive_timeout``
    1 s: a commit is in the bucket about a second later); the caller takes the base backup
    (:meth:`BarmanSource.take_backup`) once the source holds what it needs. Stopped and removed
    afterwards."""
    assert (BARMAN_BIN / "barman-cloud-wal-archive").exists(), f"no barman-cloud in {BARMAN_BIN}"
    base = Path(tempfile.mkdtemp(prefix="barman-", dir=root))
    base.chmod(0o755)
    destination = f"s3://{bucket_name}/{prefix}"
    archive = [str(BARMAN_BIN / "barman-cloud-wal-archive"), "--cloud-provider", "aws-s3"]
    archive += ["--endpoint-url", endpoint, "--gzip", destination, CLUSTER]
    settings = {
        "wal_level": "replica",
        "archive_mode": "on",
        "archive_command": " ".join(shlex.quote(a) for a in archive) + " %p",
        "archive_timeout": "1",
    }
    source = PostgresServer.start(base / "source", settings=settings)
    try:
        yield BarmanSource(base, source, endpoint, bucket_name, prefix, CLUSTER)
    finally:
        source.stop()
        shutil.rmtree(base, ignore_errors=True)
