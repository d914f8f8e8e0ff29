"""Redis production configuration: render the template, read the live server, converge it.

``deploy/redis/production.conf`` is a template: Redis does not expand environment variables, so
:func:`render` fills in ``${REDIS_PASSWORD}`` (and test overrides such as port or dir) and
:func:`write_rendered` writes the result with mode 0600. :func:`desired_settings` extracts the
directives a live server can be checked against, normalised the way Redis reports them.

The production file renames ``CONFIG`` away, so :func:`redis_config_drift` reads the server with
``CONFIG GET`` when the command exists and falls back to ``INFO`` when it does not, saying which
it used and which settings ``INFO`` cannot show. :func:`converge_redis` changes a server only
through ``CONFIG SET``; without ``CONFIG`` it changes nothing and says how to apply the file.
``requirepass`` is out of scope everywhere: the password is never read back, compared, set or
logged, and the rendered text is never logged.

No Dagster in this module: it is plain library code.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.exceptions import NoPermissionError

from twinme_ops.common.deploy_files import REPO_DEPLOY, deploy_file
from twinme_ops.common.redact import redact
from twinme_ops.database.convergence import ConvergeReport, Log

PASSWORD_PLACEHOLDER = "${REDIS_PASSWORD}"

REPO_TEMPLATE = REPO_DEPLOY / "redis" / "production.conf"

METHOD_CONFIG = "CONFIG GET"
METHOD_INFO = "INFO"

# Directives that are not tuning: where this instance lives (tests override them, production
# mounts them), secrets, and file-level statements that CONFIG GET cannot report.
_DEPLOYMENT_DIRECTIVES = frozenset(
    {
        "port",
        "bind",
        "dir",
        # with dir, names the instance's files (and CONFIG SET refuses it: protected config)
        "dbfilename",
        "appendfilename",
        "appenddirname",
        "logfile",
        "pidfile",
        "daemonize",
        "supervised",
        "unixsocket",
        "unixsocketperm",
        "syslog-enabled",
        "syslog-ident",
    }
)
_SECRET_DIRECTIVES = frozenset({"requirepass", "masterauth", "masteruser", "user", "aclfile"})
_FILE_ONLY_DIRECTIVES = frozenset({"rename-command", "include", "loadmodule"})

# What INFO shows of a setting: (section, field, conversion to the CONFIG GET form).
_INFO_FIELDS: dict[str, tuple[str, str, Callable[[Any], str]]] = {
    "maxmemory": ("memory", "maxmemory", str),
    "maxmemory-policy": ("memory", "maxmemory_policy", str),
    "appendonly": ("persistence", "aof_enabled", lambda v: "yes" if int(v) else "no"),
    "hz": ("server", "configured_hz", str),
    "maxclients": ("clients", "maxclients", str),
    "repl-backlog-size": ("replication", "repl_backlog_size", str),
    "cluster-enabled": ("cluster", "cluster_enabled", lambda v: "yes" if int(v) else "no"),
}

_MEMORY_RE = re.compile(r"^(-?\d+)(b|k|kb|m|mb|g|gb)?$", re.IGNORECASE)
_MEMORY_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1024,
    "m": 1000**2,
    "mb": 1024**2,
    "g": 1000**3,
    "gb": 1024**3,
}
# Settings whose plain numbers are byte counts (a unit suffix is converted for any setting).
_MEMORY_SETTINGS = frozenset(
    {
        "maxmemory",
        "auto-aof-rewrite-min-size",
        "repl-backlog-size",
        "client-query-buffer-limit",
        "proto-max-bulk-len",
        "stream-node-max-bytes",
        "active-defrag-ignore-bytes",
    }
)
# Enumerations Redis reports in lowercase whatever the file says.
_ENUM_SETTINGS = frozenset({"loglevel", "appendfsync", "maxmemory-policy", "supervised"})
_DIRECTIVE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]*$")


class RedisConfigError(ValueError):
    """The template, a password or an override cannot make a valid config; never shows a secret."""


# --------------------------------------------------------------------------------------------
# template and rendering


def load_template(path: Path | None = None) -> str:
    """The config template: ``path``, else the repository's ``deploy/redis/production.conf``.

    Without a repository next to the package (a non-editable install), the copy shipped as
    ``twinme_ops/common/templates/redis-production.conf`` is used.
    """
    if path is None:
        path = deploy_file("redis/production.conf", "redis-production.conf")
    return Path(path).read_text(encoding="utf-8")


def check_password(password: str) -> None:
    """Refuse a password that cannot sit unquoted on a ``requirepass`` line.

    The error names the problem, never the value.
    """
    if not isinstance(password, str) or not password:
        raise RedisConfigError("REDIS_PASSWORD is empty: Redis would accept anyone")
    problems = []
    if any(c.isspace() for c in password):
        problems.append("whitespace or a line break")
    if any(c in "\"'" for c in password):
        problems.append("a quote")
    if any(ord(c) < 32 or ord(c) == 127 for c in password if not c.isspace()):
        problems.append("a control character")
    if problems:
        raise RedisConfigError(
            f"REDIS_PASSWORD cannot go into redis.conf: it contains {' and '.join(problems)} "
            "(the value is not shown). Generate one from letters, digits and symbols other "
            "than quotes, e.g. `openssl rand -hex 32`"
        )


def render(template: str, password: str, overrides: Mapping[str, str | None] | None = None) -> str:
    """The template with ``${REDIS_PASSWORD}`` filled in and ``overrides`` applied.

    ``overrides`` maps a directive to its new arguments, written as given (quote a path with
    spaces yourself): an existing directive is replaced in place (every ``save`` line becomes
    one), a missing one is appended, ``None`` removes it. For directives that repeat per first
    argument, name both: ``{"rename-command CONFIG": None}`` drops only that rename.
    ``requirepass`` cannot be overridden: the password comes from ``password``. Never log the
    result: it holds the password.
    """
    check_password(password)
    if PASSWORD_PLACEHOLDER not in template:
        raise RedisConfigError(
            f"the Redis config template has no {PASSWORD_PLACEHOLDER} placeholder: the rendered "
            "server would run without a password"
        )
    text = _apply_overrides(template, overrides or {})
    # Checked before the password goes in, so that a password containing "${" is no problem.
    leftover = sorted(set(re.findall(r"\$\{[^}]*\}", text)) - {PASSWORD_PLACEHOLDER})
    if leftover:
        raise RedisConfigError(f"the Redis config template has unknown placeholders: {leftover}")
    return text.replace(PASSWORD_PLACEHOLDER, password)


def _apply_overrides(text: str, overrides: Mapping[str, str | None]) -> str:
    lines = text.splitlines()
    for key, value in overrides.items():
        parts = key.split()
        if not 1 <= len(parts) <= 2 or not _DIRECTIVE_NAME_RE.match(parts[0].lower()):
            raise RedisConfigError(
                f"bad override key {key!r}: use 'directive' or 'directive first-argument'"
            )
        name = parts[0].lower()
        if name in _SECRET_DIRECTIVES:
            raise RedisConfigError(f"{name} cannot be overridden: the password is an argument")
        if value is not None and any(c in value for c in "\r\n\0"):
            raise RedisConfigError(f"override for {key!r} contains a line break")
        matches = [i for i, line in enumerate(lines) if _matches(line, name, parts[1:])]
        # An empty value is written as "" (Redis reads it as an empty argument: save "", logfile "")
        new_line = None if value is None else " ".join([*parts, value or '""'])
        if matches:
            first, rest = matches[0], set(matches[1:])
            if new_line is not None:
                lines[first] = new_line
            else:
                rest.add(first)
            lines = [line for i, line in enumerate(lines) if i not in rest]
        elif new_line is not None:
            lines.append(new_line)
    return "\n".join(lines) + "\n"


def _matches(line: str, name: str, first_arg: list[str]) -> bool:
    parsed = _parse_line(line)
    if parsed is None or parsed[0] != name:
        return False
    if not first_arg:
        return True
    args = parsed[1]
    return bool(args) and args[0].lower() == first_arg[0].lower()


def write_rendered(rendered: str, path: Path) -> None:
    """Write a rendered config atomically with mode 0600 (it holds the password).

    A reader sees the old file or the new one, never half of it, and never a readable copy.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(rendered)
            fh.flush()
            os.fchmod(fh.fileno(), 0o600)
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --------------------------------------------------------------------------------------------
# parsing and normalisation


def _split_args(line: str) -> list[str]:
    """Split a config line like Redis's ``sdssplitargs``: quotes, and escapes inside quotes."""
    args: list[str] = []
    i, n = 0, len(line)
    escapes = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "a": "\a"}
    while True:
        while i < n and line[i].isspace():
            i += 1
        if i >= n:
            return args
        current: list[str] = []
        quote = line[i] if line[i] in "\"'" else ""
        i += 1 if quote else 0
        while True:
            if i >= n:
                if quote:
                    raise RedisConfigError("unbalanced quotes in a Redis config line")
                break
            c = line[i]
            if quote == '"' and c == "\\" and i + 1 < n:
                nxt = line[i + 1]
                if nxt == "x" and re.match(r"[0-9a-fA-F]{2}", line[i + 2 : i + 4]):
                    current.append(chr(int(line[i + 2 : i + 4], 16)))
                    i += 4
                    continue
                current.append(escapes.get(nxt, nxt))
                i += 2
                continue
            if quote == "'" and c == "\\" and line[i + 1 : i + 2] == "'":
                current.append("'")
                i += 2
                continue
            if quote and c == quote:
                i += 1
                if i < n and not line[i].isspace():
                    raise RedisConfigError("closing quote must be followed by a space")
                break
            if not quote and c.isspace():
                break
            current.append(c)
            i += 1
        args.append("".join(current))


def _parse_line(line: str) -> tuple[str, list[str]] | None:
    """``(directive, args)`` of a config line, or None for a blank line or a comment."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    args = _split_args(stripped)
    return args[0].lower(), args[1:]


def _directives(text: str) -> Iterator[tuple[str, list[str]]]:
    for line in text.splitlines():
        parsed = _parse_line(line)
        if parsed is not None:
            yield parsed


def normalize_value(name: str, value: str) -> str:
    """A setting's value in the form ``CONFIG GET`` reports it (bytes, lowercase, one space)."""
    value = " ".join(value.split())
    memory = _MEMORY_RE.match(value)
    if memory and (memory.group(2) or name in _MEMORY_SETTINGS):
        return str(int(memory.group(1)) * _MEMORY_UNITS[(memory.group(2) or "").lower()])
    if value.lower() in ("yes", "no") or name in _ENUM_SETTINGS or name.endswith("-policy"):
        return value.lower()
    return value


def desired_settings(rendered: str) -> dict[str, str]:
    """The directives of a config that a live server can be checked against, normalised.

    Left out: where the instance lives (port, bind, dir, logfile, daemonize…), secrets
    (requirepass…) and file-only statements (rename-command…). Repeated ``save`` lines add up
    as in Redis (``save ""`` clears them); for any other repeated directive the last one wins.
    """
    settings: dict[str, str] = {}
    save_seen = False
    for name, args in _directives(rendered):
        if name in _DEPLOYMENT_DIRECTIVES | _SECRET_DIRECTIVES | _FILE_ONLY_DIRECTIVES:
            continue
        value = " ".join(args)
        if name == "save":
            points = [] if value.strip() == "" else value.split()
            previous = settings.get("save", "").split() if save_seen else []
            settings["save"] = " ".join(previous + points) if points else ""
            save_seen = True
            continue
        settings[name] = normalize_value(name, value)
    return settings


# --------------------------------------------------------------------------------------------
# drift


@dataclass
class RedisDrift:
    """Desired settings against a live server, and how the live values were read.

    ``method`` is ``"CONFIG GET"`` or ``"INFO"`` (when CONFIG is renamed away); ``checked`` lists
    the settings compared, ``unverifiable`` those the method cannot show, ``differences`` one
    sentence per mismatch, ``differing`` maps each mismatch to ``(desired, live)``.
    """

    method: str
    differences: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    unverifiable: list[str] = field(default_factory=list)
    differing: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def drifted(self) -> bool:
        return bool(self.differences)

    def summary(self) -> str:
        """One line for logs and metadata."""
        head = "; ".join(self.differences) if self.differences else "no drift"
        tail = f" ({len(self.unverifiable)} not verifiable)" if self.unverifiable else ""
        return f"{head} [{self.method}: {len(self.checked)} settings checked{tail}]"


def _guard_desired(desired: Mapping[str, str]) -> None:
    secret = sorted(set(desired) & _SECRET_DIRECTIVES)
    if secret:
        raise RedisConfigError(f"{secret} is out of scope: the password is never read or set")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _config_unavailable(exc: redis.ResponseError) -> bool:
    """Whether CONFIG is renamed away (unknown command) or denied by an ACL."""
    message = str(exc).lower()
    return isinstance(exc, NoPermissionError) or (
        "unknown command" in message and "config" in message
    )


def _read_config(client: redis.Redis, names: list[str]) -> dict[str, str]:
    """Live values by CONFIG GET; a name the server does not know is left out."""
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.config_get(name)
    live: dict[str, str] = {}
    for name, reply in zip(names, pipe.execute(), strict=True):
        values = {_text(k).lower(): v for k, v in dict(reply).items()}
        if name in values:
            live[name] = normalize_value(name, _text(values[name]))
    return live


def _read_info(client: redis.Redis, names: list[str]) -> dict[str, str]:
    """Live values of the settings INFO shows (each INFO section fetched once)."""
    sections: dict[str, dict[str, Any]] = {}
    live: dict[str, str] = {}
    for name in names:
        if name not in _INFO_FIELDS:
            continue
        section, key, convert = _INFO_FIELDS[name]
        if section not in sections:
            sections[section] = dict(client.info(section))
        if key in sections[section]:
            live[name] = normalize_value(name, convert(sections[section][key]))
    return live


def redis_config_drift(client: redis.Redis, desired: Mapping[str, str]) -> RedisDrift:
    """Compare ``desired`` (from :func:`desired_settings`) with the live server; change nothing.

    Reads with ``CONFIG GET`` when the command exists; when it is renamed away (or denied),
    falls back to ``INFO`` and lists what INFO cannot show as unverifiable.
    """
    _guard_desired(desired)
    names = list(desired)
    try:
        live = _read_config(client, names)
        method = METHOD_CONFIG
    except redis.ResponseError as exc:
        if not _config_unavailable(exc):
            raise
        live = _read_info(client, names)
        method = METHOD_INFO
    drift = RedisDrift(method)
    for name in names:
        if name not in live:
            drift.unverifiable.append(name)
            continue
        drift.checked.append(name)
        want = normalize_value(name, desired[name])
        have = live[name]
        if want != have:
            drift.differing[name] = (want, have)
            drift.differences.append(f"{name}: desired {_show(want)}, live {_show(have)}")
    return drift


def _show(value: str) -> str:
    return f'"{value}"' if value == "" or " " in value else value


# --------------------------------------------------------------------------------------------
# convergence


def converge_redis(
    client: redis.Redis, desired: Mapping[str, str], log: Log | None = None
) -> ConvergeReport:
    """Bring a live server to ``desired`` with ``CONFIG SET``, only where it differs.

    Settings Redis cannot change at runtime (immutable, protected) are listed as pending a
    restart. After a change, ``CONFIG REWRITE`` persists it when the server was started from a
    config file. Without CONFIG (renamed away in production) nothing is changed: the report
    says to deploy the rendered file and restart Redis. The password is never touched.
    """
    drift = redis_config_drift(client, desired)
    report = ConvergeReport()

    def note(text: str) -> None:
        report.notes.append(text)
        if log:
            log(text)

    if drift.method == METHOD_INFO:
        report.pending_restart.extend(drift.differing)
        if drift.differences:
            note(
                "CONFIG is renamed away: deploy the rendered file and restart Redis to apply: "
                + "; ".join(drift.differences)
            )
        else:
            note(
                "CONFIG is renamed away: nothing changed; INFO shows no drift on "
                f"{', '.join(drift.checked) or 'no setting'}; not verifiable through INFO "
                f"(apply by deploying the rendered file): {', '.join(drift.unverifiable)}"
            )
        return report

    for name, (want, have) in drift.differing.items():
        try:
            client.config_set(name, want)
        except redis.ResponseError as exc:
            message = str(exc).lower()
            if "immutable" in message or "protected" in message:
                report.pending_restart.append(name)
                continue
            raise RedisConfigError(f"CONFIG SET {name} failed: {redact(exc)}") from None
        report.add(name, f"CONFIG SET {name} {_show(want)}", log, detail=f"was {_show(have)}")
    if report.pending_restart:
        note(
            "not settable at runtime, deploy the rendered file and restart Redis to apply: "
            + "; ".join(
                f"{n}: desired {_show(drift.differing[n][0])}" for n in report.pending_restart
            )
        )
    if report.changes:
        config_file = _text(client.info("server").get("config_file", "") or "")
        if not config_file:
            note(
                "Redis was started without a config file: the changes hold until the next "
                "restart; deploy the rendered file to keep them"
            )
            return report
        try:
            client.config_rewrite()
        except redis.ResponseError as exc:
            note(
                f"CONFIG REWRITE of {config_file} failed ({redact(exc)}): the changes hold until "
                "the next restart; deploy the rendered file to keep them"
            )
            return report
        report.add("config file", "CONFIG REWRITE", log, detail=config_file)
        note(
            f"CONFIG REWRITE rewrote {config_file}; Redis writes it with mode 0644 (less its "
            "umask) whatever it was, and it holds the password: restrict it again"
        )
    return report
