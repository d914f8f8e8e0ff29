"""The Redis production config template: fill in the password, apply overrides, write it 0600.

``deploy/redis/production.conf`` is a template: Redis does not expand environment variables, so
:func:`render` fills in ``${REDIS_PASSWORD}`` (and test overrides such as port or dir) and
:func:`write_rendered` writes the result atomically with mode 0600. A password that cannot sit
unquoted on the ``requirepass`` line is refused without being shown (:func:`check_password`).
The rendered text holds the password: it is never logged.

No server and no Dagster in this module.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

from twinme_ops.common.deploy_files import REPO_DEPLOY, deploy_file
from twinme_ops.database.redis.declared import SECRET_DIRECTIVES, RedisConfigError, parse_line

PASSWORD_PLACEHOLDER = "${REDIS_PASSWORD}"

REPO_TEMPLATE = REPO_DEPLOY / "redis" / "production.conf"

_DIRECTIVE_NAME_RE = re.compile(r"^[a-z][a-z0-9-]*$")


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
        if name in SECRET_DIRECTIVES:
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
    parsed = parse_line(line)
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


__all__ = [
    "PASSWORD_PLACEHOLDER",
    "REPO_TEMPLATE",
    "check_password",
    "load_template",
    "render",
    "write_rendered",
]
