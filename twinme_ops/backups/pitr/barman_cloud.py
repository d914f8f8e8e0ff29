"""barman-cloud's bucket, as CloudNativePG's Barman Cloud plugin writes it, read with its own tools.

The plugin archives each instance's WAL with ``barman-cloud-wal-archive`` and takes base backups
with ``barman-cloud-backup``, under the ObjectStore's ``destinationPath`` and the Cluster's
*server name* (the plugin's ``serverName`` parameter, by default the Cluster's name)::

    <destinationPath>/<serverName>/base/<backup id>/backup.info, data.tar[.gz]
    <destinationPath>/<serverName>/wals/<timeline + high 32 bits>/<segment>[.gz]
    <destinationPath>/<serverName>/wals/<timeline>.history[.gz]

The backups are listed with ``barman-cloud-backup-list --format json`` and restored with
``barman-cloud-restore`` and ``barman-cloud-wal-restore`` (the same tools, from PyPI
``barman[cloud]``, in ``bin_dir``); only the WAL listing, which no barman-cloud tool offers, is
read with boto3. The S3 endpoint and credentials come from the environment (``AWS_*``, as for
every S3 client here): never on a command line, never in a message. When we are root the tools
run as the scratch servers' user, like the restored server whose ``restore_command`` they are.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from twinme_ops.backups.pitr.layout import (
    DEFAULT_SEGMENT_SIZE,
    format_lsn,
    pitr_error,
    run_program,
    segment_name,
    segment_start,
)
from twinme_ops.common.redact import redact, register_secret
from twinme_ops.scratch.local import PG_SYSTEM_USER, ensure_system_user

DEFAULT_BARMAN_BIN = "/opt/barman/bin"
# barman's end_time is now() of the statement that calls pg_backup_stop, whose end-of-backup
# record is written a moment later: a target is counted inside the backup until this has passed
CONSISTENT_MARGIN = timedelta(seconds=1)
# a WAL object's name: a segment (or its .partial), a timeline history, a backup label; then
# barman's compression suffix, if any (.gz, .bz2, .snappy, .xz, .zst, .lz4)
_WAL_OBJECT = re.compile(
    r"^(?P<name>[0-9A-F]{24}(?:\.partial)?|[0-9A-F]{8}\.history|[0-9A-F]{24}\.[0-9A-F]{8}\.backup)"
    r"(?:\.[a-z0-9]+)?$"
)
_SEGMENT = re.compile(r"^[0-9A-F]{24}$")
_SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@dataclass(frozen=True)
class BarmanBackup:
    """One base backup barman-cloud completed (``status`` DONE), as ``backup-list`` reports it."""

    id: str
    begin_lsn: str
    end_lsn: str
    begin_wal: str
    end_wal: str
    timeline: int
    begin_time: datetime
    end_time: datetime  # the server's now() as pg_backup_stop was called
    system_identifier: str
    segment_size: int

    @property
    def finished(self) -> datetime:
        """From when a target time is past the backup's consistent point."""
        return self.end_time + CONSISTENT_MARGIN


def is_segment(name: str) -> bool:
    """A WAL segment's name (no ``.partial``, history or backup label)."""
    return bool(_SEGMENT.match(name))


@dataclass(frozen=True)
class BarmanBucket:
    """One server's folder in a barman-cloud bucket, and the tools that read it."""

    destination: str  # s3://bucket/prefix, the ObjectStore's destinationPath
    server_name: str
    bin_dir: Path = Path(DEFAULT_BARMAN_BIN)
    endpoint_url: str = ""
    run_as: str | None = None  # who runs the tools (and the restored server)

    @classmethod
    def at(cls, destination: str, server_name: str, bin_dir: str = "") -> BarmanBucket:
        """The bucket folder; the endpoint from ``AWS_ENDPOINT_URL_S3`` (or
        ``AWS_ENDPOINT_URL``); as root, the tools run as the scratch servers' user."""
        parts = urlsplit(destination.strip())
        if parts.scheme != "s3" or not parts.netloc:
            raise pitr_error(
                f"the barman-cloud destination {destination!r} is not s3://bucket/prefix. Fix: "
                "set TWINME_WAL_ARCHIVE_DESTINATION to the ObjectStore's destinationPath "
                "(deploy/postgres/20-objectstore.yaml)"
            )
        if not server_name.strip():
            raise pitr_error(
                "the barman-cloud server name is empty. Fix: set TWINME_WAL_ARCHIVE_SERVER_NAME "
                "(the plugin's serverName), or leave it empty for the Cluster's name"
            )
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return cls(
            destination=destination.strip().rstrip("/"),
            server_name=server_name.strip(),
            bin_dir=Path(bin_dir or DEFAULT_BARMAN_BIN),
            endpoint_url=(endpoint or "").strip(),
            run_as=PG_SYSTEM_USER if os.geteuid() == 0 else None,
        )

    @property
    def where(self) -> str:
        """The server's folder, for messages."""
        return f"{self.destination}/{self.server_name}"

    # ---- the tools

    def tool(self, name: str) -> str:
        path = self.bin_dir / name
        if not os.access(path, os.X_OK):
            raise pitr_error(
                f"{name} not found in {self.bin_dir}. Fix: install barman[cloud]==3.19.1 in a "
                "virtualenv built from the system Python (bash .ci/deps makes /opt/barman; the "
                "production image has it), or set TWINME_BARMAN_BIN to its bin directory"
            )
        return str(path)

    def cloud_args(self) -> list[str]:
        args = ["--cloud-provider", "aws-s3"]
        return [*args, "--endpoint-url", self.endpoint_url] if self.endpoint_url else args

    def run(
        self, name: str, args: Sequence[str], *, timeout: float = 600.0
    ) -> subprocess.CompletedProcess[str]:
        """Run one barman-cloud tool on this server's folder; never raises on its exit code."""
        for var in _SECRET_VARS:  # whatever the tool prints, the key never leaves redacted text
            register_secret(os.environ.get(var))
        if self.run_as:
            ensure_system_user(self.run_as)
        return run_program(
            [self.tool(name), *self.cloud_args(), *args],
            name=f"{name} on {self.where}",
            run_as=self.run_as,
            env=os.environ,  # AWS_* credentials: the environment, never argv
            timeout=timeout,
            timeout_fix="check the S3 endpoint is reachable (AWS_ENDPOINT_URL_S3), or raise "
            "the timeout",
        )

    def failure(self, name: str, proc: subprocess.CompletedProcess[str], fix: str = "") -> str:
        """A failed tool's message: its last lines, then the fix."""
        tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-8:])
        who = f", readable by {self.run_as}" if self.run_as else ""
        fix = fix or (
            f"check the destination and server name ({self.where}: TWINME_WAL_ARCHIVE_DESTINATION"
            ", TWINME_WAL_ARCHIVE_SERVER_NAME), the endpoint (AWS_ENDPOINT_URL_S3) and the "
            f"credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment{who}; "
            "s3:ListBucket and s3:GetObject on the prefix)"
        )
        return redact(f"{name} failed (exit {proc.returncode}) on {self.where}: {tail}\nFix: {fix}")

    def list_backups(self) -> list[BarmanBackup]:
        """The completed base backups, oldest first."""
        proc = self.run(
            "barman-cloud-backup-list",
            ["--format", "json", self.destination, self.server_name],
            timeout=300,
        )
        if proc.returncode != 0:
            raise pitr_error(self.failure("barman-cloud-backup-list", proc))
        try:
            listed = json.loads(proc.stdout)["backups_list"]
        except (ValueError, KeyError, TypeError):
            raise pitr_error(
                f"barman-cloud-backup-list printed no backup list for {self.where}: "
                f"{proc.stdout[-300:]!r}. Fix: use barman[cloud] 3.19 (TWINME_BARMAN_BIN)"
            ) from None
        backups = [_backup(item) for item in listed if item.get("status") == "DONE"]
        return sorted((b for b in backups if b is not None), key=lambda b: b.end_time)

    def restore_command(self, spool_dir: Path, requests: Path, parallel: int) -> str:
        """``barman-cloud-wal-restore`` for ``%f``, prefetching ``parallel`` segments into
        ``spool_dir`` (this restore's own: barman's default spool is shared by every restore on
        the machine); each request and its exit code is appended to ``requests``.

        A segment already in the spool is moved in place by the shell, as the plugin does: the
        tool costs a Python start and a boto3 session (~0.8 s) per call, for a ``mv``. Each call
        waits for its prefetches before it exits, so the next one never sees half a file."""

        def q(value: str) -> str:  # restore_command expands %-escapes: a literal % is %%
            return shlex.quote(value).replace("%", "%%")

        args = [*self.cloud_args()]
        if parallel > 1:
            args += ["--parallel", str(parallel), "--spool-dir", str(spool_dir)]
        args += [self.destination, self.server_name]
        fetch = " ".join([q(self.tool("barman-cloud-wal-restore")), *map(q, args), '%f "%p"'])
        if parallel > 1:
            spooled = f"{q(str(spool_dir))}/%f"
            fetch = f'if [ -f {spooled} ]; then mv {spooled} "%p"; else {fetch}; fi'
        return f'{fetch}; rc=$?; echo "%f $rc" >> {q(str(requests))}; exit $rc'

    # ---- the WAL listing

    def wal_names(self) -> set[str]:
        """The names of every archived WAL file (segments, ``.partial``, histories, backup
        labels), compression suffix removed."""
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        parts = urlsplit(self.destination)
        prefix = "/".join(p for p in (parts.path.strip("/"), self.server_name, "wals") if p) + "/"
        client = boto3.client("s3", endpoint_url=self.endpoint_url or None)
        names: set[str] = set()
        try:
            pages = client.get_paginator("list_objects_v2").paginate(
                Bucket=parts.netloc, Prefix=prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    match = _WAL_OBJECT.match(obj["Key"].rsplit("/", 1)[-1])
                    if match:
                        names.add(match["name"])
        except (BotoCoreError, ClientError) as exc:
            raise pitr_error(
                f"could not list the WAL archive {self.where}/wals/: {exc}. Fix: check the "
                "endpoint (AWS_ENDPOINT_URL_S3) and that the credentials may s3:ListBucket there"
            ) from None
        return names


def _backup(item: dict[str, object]) -> BarmanBackup | None:
    try:
        return BarmanBackup(
            id=str(item["backup_id"]),
            begin_lsn=str(item["begin_xlog"]),
            end_lsn=str(item["end_xlog"]),
            begin_wal=str(item["begin_wal"]),
            end_wal=str(item["end_wal"]),
            timeline=int(str(item["timeline"])),
            begin_time=datetime.fromisoformat(str(item["begin_time_iso"])),
            end_time=datetime.fromisoformat(str(item["end_time_iso"])),
            system_identifier=str(item.get("systemid") or ""),
            segment_size=int(str(item.get("xlog_segment_size") or DEFAULT_SEGMENT_SIZE)),
        )
    except (KeyError, ValueError):  # a backup barman itself could not describe: not restorable
        return None


def segments_by_timeline(names: Iterable[str], size: int) -> dict[int, set[int]]:
    """Archived segment numbers per timeline (a ``.partial`` counts: barman restores it)."""
    found: dict[int, set[int]] = {}
    for name in names:
        base = name.removesuffix(".partial")
        if is_segment(base):
            tli, start = segment_start(base, size)
            found.setdefault(tli, set()).add(start // size)
    return found


def wal_gap(names: Iterable[str], backup: BarmanBackup, where: str) -> tuple[str, str] | None:
    """``(first missing LSN, description)`` when the archive cannot replay from ``backup`` to
    its newest segment: a segment missing in a timeline's run from the backup's first segment
    on, or the backup's own WAL (up to its end) not archived. None when complete."""
    size = backup.segment_size
    found = segments_by_timeline(names, size)
    first = segment_start(backup.begin_wal, size)[1] // size
    last_needed = segment_start(backup.end_wal, size)[1] // size
    newest = first - 1
    for tli in sorted(t for t in found if t >= backup.timeline):
        run = {s for s in found[tli] if tli > backup.timeline or s >= first}
        if not run:
            continue
        start = first if tli == backup.timeline else min(run)
        for segno in range(start, max(run) + 1):
            if segno not in run:
                name = segment_name(tli, segno * size, size)
                return format_lsn(segno * size), f"segment {name} is missing from {where}/wals/"
        newest = max(newest, max(run))
    if newest < last_needed:
        name = segment_name(backup.timeline, (newest + 1) * size, size)
        return (
            format_lsn((newest + 1) * size),
            f"segment {name} (base backup {backup.id} ends in {backup.end_wal}) is not in "
            f"{where}/wals/",
        )
    return None


def newest_segment(names: Iterable[str]) -> str | None:
    """The newest complete segment archived (names sort by timeline, then position)."""
    return max((n for n in names if is_segment(n)), default=None)
