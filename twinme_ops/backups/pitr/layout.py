"""The archive root's layout, who its files belong to, and how the PostgreSQL tools are run.

One archive root per source server::

    <root>/wal/                     pg_receivewal's segments (and the current ``.partial``)
    <root>/base/<UTC stamp>/data/   one pg_basebackup (plain format, with its backup_manifest)
    <root>/base/<UTC stamp>/label.json   what it is and which backup it depends on (written last)
    <root>/base/.tmp-<stamp>/       a backup being taken (or a killed one's leftovers)
    <root>/base/.trash-<stamp>/     a backup retention is removing (retention_apply.py)
    <root>/drill-passed.json        the newest passing point-in-time drill (drill_record.py)
    <root>/.archive.lock            restores share it, retention takes it alone (lock.py)
    <root>/receiver/                the supervisor's pid file, state and log
    <root>/heartbeat/               the heartbeat writer's pid file, state and log

When we are root, PostgreSQL refuses to run as root: the tools run as the scratch servers' system
user, which owns ``wal/`` and ``base/`` so that a restored server (same user) can read them in its
``restore_command``. LSNs are handled as integers; WAL segment names are PostgreSQL's own.
"""

from __future__ import annotations

import os
import pwd
import re
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from twinme_ops.common.pgtools import pg_bin
from twinme_ops.common.redact import redact, register_secret
from twinme_ops.scratch.local import PG_SYSTEM_USER, check_traversable, ensure_system_user

WAL_DIR = "wal"
BASE_DIR = "base"
RECEIVER_DIR = "receiver"
HEARTBEAT_DIR = "heartbeat"
DEFAULT_SEGMENT_SIZE = 16 << 20
# 24 hex digits: timeline, then the segment number in two halves
SEGMENT_RE = re.compile(r"^(?P<tli>[0-9A-F]{8})(?P<hi>[0-9A-F]{8})(?P<lo>[0-9A-F]{8})$")
PARTIAL_SUFFIX = ".partial"
HISTORY_RE = re.compile(r"^[0-9A-F]{8}\.history$")


class PitrError(RuntimeError):
    """Continuous archiving or a point-in-time restore failed; the message names the fix."""


def pitr_error(message: str) -> PitrError:
    """A :class:`PitrError` whose message has no secret left in it."""
    return PitrError(redact(message))


@dataclass(frozen=True)
class ArchiveLayout:
    """Where one source server's WAL and base backups live, and who owns them."""

    root: Path
    # the system user the PostgreSQL tools (and restored servers) run as; None: ourselves
    run_as: str | None = None

    @classmethod
    def at(cls, root: Path | str, run_as: str | None = None) -> ArchiveLayout:
        """The layout under ``root``; as root, the tools run as the scratch servers' user."""
        if run_as is None and os.geteuid() == 0:
            run_as = PG_SYSTEM_USER
        return cls(Path(root).absolute(), run_as)

    @property
    def wal_dir(self) -> Path:
        return self.root / WAL_DIR

    @property
    def base_dir(self) -> Path:
        return self.root / BASE_DIR

    @property
    def receiver_dir(self) -> Path:
        return self.root / RECEIVER_DIR

    @property
    def heartbeat_dir(self) -> Path:
        return self.root / HEARTBEAT_DIR

    def create(self) -> ArchiveLayout:
        """Create the folders (idempotent); ``wal/`` and ``base/`` belong to the tools' user."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self.run_as:
            ensure_system_user(self.run_as)
            try:
                check_traversable(self.root, self.run_as)
            except RuntimeError as exc:
                raise pitr_error(f"archive root {self.root}: {exc}") from None
        for path in (self.wal_dir, self.base_dir, self.receiver_dir, self.heartbeat_dir):
            path.mkdir(exist_ok=True)
        for path in (self.wal_dir, self.base_dir):
            path.chmod(0o750)
            if self.run_as:
                uid, gid = user_ids(self.run_as)
                os.chown(path, uid, gid)
        return self

    def segment_files(self) -> list[Path]:
        """Completed WAL segments in the archive, oldest first (names sort by timeline, LSN)."""
        if not self.wal_dir.is_dir():
            return []
        return sorted(p for p in self.wal_dir.iterdir() if SEGMENT_RE.match(p.name))

    def partial_files(self) -> list[Path]:
        """The ``.partial`` segment(s) pg_receivewal is writing (or left at a timeline switch)."""
        if not self.wal_dir.is_dir():
            return []
        return sorted(
            p
            for p in self.wal_dir.iterdir()
            if p.name.endswith(PARTIAL_SUFFIX) and SEGMENT_RE.match(p.name[: -len(PARTIAL_SUFFIX)])
        )


def user_ids(user: str) -> tuple[int, int]:
    """uid and gid of ``user``."""
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def as_user(user: str | None) -> tuple[int | None, int | None, list[int] | None]:
    """``user``, ``group`` and ``extra_groups`` for :mod:`subprocess` to run a tool as ``user``."""
    if not user:
        return None, None, None
    uid, gid = user_ids(user)
    return uid, gid, []


# --------------------------------------------------------------------------------------------
# connections and tools


def split_password(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its password, and the environment that carries it (never argv)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, {}
    password = unquote(parts.password)
    register_secret(password)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc)), {"PGPASSWORD": password}


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a PostgreSQL tool: ours, plus ``extra`` (e.g. ``PGPASSWORD``)."""
    return {**os.environ, **(extra or {})}


def run_tool(
    name: str,
    args: Sequence[str],
    *,
    run_as: str | None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run one PostgreSQL binary (as ``run_as`` when given); never raises on its exit code."""
    return run_program(
        [pg_bin(name), *args],
        name=name,
        run_as=run_as,
        env=tool_env(env),
        timeout=timeout,
        timeout_fix="check that the server is reachable and not overloaded, or raise the timeout",
    )


def run_program(
    argv: Sequence[str],
    *,
    name: str,
    run_as: str | None,
    env: Mapping[str, str],
    timeout: float | None,
    timeout_fix: str,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` (as ``run_as`` when given) from ``/``; a timeout is an error with its fix."""
    uid, gid, groups = as_user(run_as)
    try:
        return subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            cwd="/",  # the tools' user may not be able to read our working directory
            env=dict(env),  # credentials travel in the environment, never in argv
            timeout=timeout,
            check=False,
            user=uid,
            group=gid,
            extra_groups=groups,
        )
    except subprocess.TimeoutExpired:
        raise pitr_error(
            f"{name} did not finish within {timeout or 0:.0f} s. Fix: {timeout_fix}"
        ) from None


def tool_failure(name: str, proc: subprocess.CompletedProcess[str], fix: str) -> PitrError:
    """The error for a failed tool: its last lines of stderr, then the fix."""
    tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-12:])
    return pitr_error(f"{name} failed (exit {proc.returncode}): {tail}\nFix: {fix}")


# --------------------------------------------------------------------------------------------
# LSNs and segment names


def parse_lsn(text: str) -> int:
    """``'0/16B3748'`` -> the byte position."""
    hi, _, lo = str(text).partition("/")
    if not lo:
        raise ValueError(f"not an LSN: {text!r}")
    return (int(hi, 16) << 32) | int(lo, 16)


def format_lsn(value: int) -> str:
    """The byte position -> ``'0/16B3748'``."""
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def segment_name(timeline: int, lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """The WAL file holding ``lsn`` on ``timeline``."""
    per_id = 0x100000000 // segment_size
    segno = lsn // segment_size
    return f"{timeline:08X}{segno // per_id:08X}{segno % per_id:08X}"


def segment_start(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int]:
    """``(timeline, first LSN)`` of a segment file name (a ``.partial`` suffix is ignored)."""
    match = SEGMENT_RE.match(name.removesuffix(PARTIAL_SUFFIX))
    if not match:
        raise ValueError(f"not a WAL segment name: {name!r}")
    per_id = 0x100000000 // segment_size
    segno = int(match["hi"], 16) * per_id + int(match["lo"], 16)
    return int(match["tli"], 16), segno * segment_size
