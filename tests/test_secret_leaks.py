"""No password leaks, however malformed the URL that carries it (issue 11, defect 2).

``DATABASE_URL=postgresql//postgres:PASSWORD@host:5432/db`` (a missing colon) printed the password
in the run's error and in the Slack alert: the redactor only knew well-formed ``scheme://`` URLs.
Here the whole malformed family goes through the real paths a person hits: the redactor itself,
the libraries that echo a rejected value (pydantic, psycopg, redis-py, git), the nightly backup
job (its event log, as the UI shows it, and the Slack alert its failure hook sends to a real HTTP
receiver) and ``twinme-ops backup`` in its own process. Every case carries a distinctive password
of its own: registered secrets stay registered for the whole session, and a case must not pass
because an earlier one registered its password.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import psycopg.conninfo
import pydantic
import pyrage
import pytest

from tests.support.backup_helpers import run_backup, run_text
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.common.redact import redact
from twinme_ops.release.git import GitError, GitRepoResource
from twinme_ops.servers.postgres import PostgresError, PostgresResource
from twinme_ops.servers.redis import RedisResource, RedisSnapshotError

ROOT = Path(__file__).resolve().parents[1]

# --- the redactor on the whole family ------------------------------------------------------

# (text with the password "{pw}", parts that must stay readable)
FAMILY: list[tuple[str, list[str]]] = [
    (
        "postgresql//postgres:{pw}@db.internal:5432/twinme",
        ["postgresql//postgres:", "@db.internal"],
    ),
    ("postgresql:/postgres:{pw}@db.internal/twinme", ["postgresql:/postgres:", "@db.internal"]),
    ("postgresql:postgres:{pw}@db.internal/twinme", ["postgresql:", "@db.internal/twinme"]),
    ("postgres:/app:{pw}@h:5432/db", ["postgres:/app:", "@h:5432/db"]),
    ("redis:/:{pw}@cache:6379/0", ["redis:/:", "@cache:6379/0"]),
    ("redis//:{pw}@cache:6379/0", ["redis//:", "@cache:6379/0"]),
    ("redis:/default:{pw}@cache", ["redis:/default:", "@cache"]),
    ("app:{pw}@db.internal:5432/twinme", ["app:", "@db.internal:5432/twinme"]),
    (":{pw}@cache:6379", ["@cache:6379"]),
    ("weird+scheme://app:{pw}@host/x", ["weird+scheme://app:", "@host/x"]),
    ("s3//AKIAEXAMPLE:{pw}@bucket/prefix", ["s3//AKIAEXAMPLE:", "@bucket/prefix"]),
    ("postgresql://app:{pw}%40x%2Fy@db/twinme", ["postgresql://app:", "@db/twinme"]),
    ("postgresql://app:p@ss{pw}@db/twinme", ["postgresql://app:", "@db/twinme"]),
    ("app:p@ss{pw}@db:5432/twinme", ["app:", "@db:5432/twinme"]),
    ("postgresql://app:a/b{pw}@db/twinme", ["postgresql://app:", "@db/twinme"]),
    ("postgresql://app:a#b{pw}@db/twinme", ["postgresql://app:", "@db/twinme"]),
    ("postgresql://app:a?b{pw}@db/twinme", ["postgresql://app:", "@db/twinme"]),
    ("postgresql//app:a/b#c?d{pw}@db/twinme", ["postgresql//app:", "@db/twinme"]),
    ("postgresql://app:{pw}@[2001:db8::1]:5432/twinme", ["@[2001:db8::1]:5432/twinme"]),
    ("postgresql//app:{pw}@[::1]/twinme", ["postgresql//app:", "@[::1]/twinme"]),
    ("postgresql://app:two words {pw}@db/twinme", ["postgresql://app:", "@db/twinme"]),
    ("postgresql//app:{pw} x@db/twinme", ["postgresql//app:", "@db/twinme"]),
    ("got 'postgresql//app:has space {pw}@db/twinme'", ["got 'postgresql//app:", "@db/twinme'"]),
    ("got 'app:has space {pw}@db/twinme' here", ["got 'app:", "@db/twinme' here"]),
    ('got "postgresql//app:quo\'te{pw}@db/twinme"', ["@db/twinme"]),
    (
        "connection to app:{pw}@db.internal:5432/twinme failed; retry later",
        ["connection to app:", "@db.internal:5432/twinme failed; retry later"],
    ),
    ("DATABASE_URL=postgresql//app:{pw}@db/twinme", ["DATABASE_URL=postgresql//app:", "@db/"]),
    ("{{'url': 'postgresql//app:{pw}@db/twinme'}}", ["{'url': 'postgresql//app:", "@db/"]),
    ('{{"dsn": "app:{pw}@db:5432/twinme"}}', ['{"dsn": "app:', "@db:5432/twinme"]),
    ("host=db user=app password='two {pw} words' dbname=twinme", ["host=db", "dbname=twinme"]),
    ("host=db password = {pw} dbname=twinme", ["host=db", "dbname=twinme"]),
    ("{{'password': '{pw}', 'user': 'app'}}", ["'user': 'app'"]),
    ('{{"client_secret": "{pw}"}}', ['"client_secret"']),
    ("postgresql//app:{pw}", ["postgresql//app:"]),  # cut short, no host
    ("input_value='postgresql//postgres:{pw}...5432/db', input_type=str", ["input_type=str"]),
    ("Authorization: Bearer {pw}", ["Authorization: Bearer"]),
    ("https//hooks.slack.com/services/T0/B0/{pw}", ["hooks.slack.com/services/"]),
]


@pytest.mark.parametrize(("template", "kept"), FAMILY, ids=[t for t, _ in FAMILY])
def test_redact_masks_the_malformed_url_family(template: str, kept: list[str]) -> None:
    password = f"Shape-{abs(hash(template)) % 10**8}-pw"  # never registered: found by its shape
    text = template.format(pw=password)
    shown = redact(text)
    assert password not in shown, shown
    assert "***" in shown
    for part in kept:  # the scheme, the user, the host and the fix stay readable
        assert part in shown, (part, shown)
    assert redact(repr(text)).count(password) == 0  # repr() quoting
    assert password not in redact(json.dumps({"error": text}))  # JSON quoting


@pytest.mark.parametrize(
    "text",
    [
        "postgresql://postgres@127.0.0.1:5432/postgres",
        "redis://127.0.0.1:6379/0 and http://[::1]:8080/health",
        "GET http://127.0.0.1:8080: Connection refused (redis://127.0.0.1:6379)",
        "image 127.0.0.1:5000/twinme-api@sha256:" + "a" * 64,
        "git@github.com:twinme/api.git, ops@twinme.ai",
        "s3://bucket/prefix/2026-11-24 and file:///var/backups/twinme",
        "DATABASE_URL must look like postgresql://user:password@host:5432/dbname",
        "step_key=postgres_backup partition_key=2026-11-24 at 02:00",
    ],
)
def test_redact_leaves_what_is_not_a_secret(text: str) -> None:
    assert redact(text) == text


def test_registered_secrets_are_masked_in_their_encoded_forms() -> None:
    from twinme_ops.common.redact import register_secrets_in

    register_secrets_in("postgresql//app:Reg'd p@ss&<7>/x@db/twinme")  # unparseable as a URL
    secret = "Reg'd p@ss&<7>/x"
    for shown in (
        secret,
        repr(secret),
        json.dumps(secret),
        "Reg%27d%20p%40ss%26%3C7%3E%2Fx",  # percent-encoded
        "Reg'd p@ss&amp;&lt;7&gt;/x",  # as Slack's escaping shows it
    ):
        assert "p@ss" not in redact(f"error near {shown} here"), shown


# --- libraries that echo the value they reject ----------------------------------------------


def test_pydantic_validation_error_echoing_the_input_is_masked() -> None:
    password = "Pydantic-Echo-Pw-31"
    with pytest.raises(pydantic.ValidationError) as info:
        pydantic.TypeAdapter(pydantic.AnyUrl).validate_python(
            f"postgresql//app:{password}@db/x"  # short: pydantic shortens long inputs
        )
    assert password in str(info.value)  # pydantic does echo it
    assert password not in redact(info.value) and password not in redact(repr(info.value))


def test_psycopg_conninfo_error_is_masked() -> None:
    password = "Psycopg-Echo-Pw-32"
    with pytest.raises(psycopg.ProgrammingError) as info:
        psycopg.conninfo.conninfo_to_dict(f"postgresql//postgres:{password}@db:5432/twinme")
    assert password in str(info.value)
    assert password not in redact(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql//postgres:{pw}@127.0.0.1:1/twinme",
        "postgresql:/postgres:{pw}@127.0.0.1:1/twinme",
        "postgres:{pw}@127.0.0.1:1/twinme",
        "postgresql://postgres:a#{pw}@127.0.0.1:1/twinme",
        "postgresql://postgres:a/{pw}@127.0.0.1:1/twinme",
    ],
)
def test_postgres_resource_refuses_a_malformed_url_without_its_password(url: str) -> None:
    password = f"PgRes-{abs(hash(url)) % 10**6}-Pw"
    pg = PostgresResource(url=url.format(pw=password))
    for call in (pg.describe, pg.tool_dsn, lambda: pg.database_name, pg.get_connection().__enter__):
        with pytest.raises(PostgresError) as info:
            call()
        message = str(info.value)
        assert password not in message
        assert (
            "DATABASE_URL" in message and "postgresql://user:password@host:5432/dbname" in message
        )


@pytest.mark.parametrize(
    "url",
    [
        "redis:/:{pw}@127.0.0.1:1/0",
        "redis//:{pw}@127.0.0.1:1/0",
        ":{pw}@127.0.0.1:1",
        "redis://:{pw}#x:y@127.0.0.1:1/0",  # urlsplit's port error quotes "{pw}"
        "redis://:{pw}@127.0.0.1:6x/0",
    ],
)
def test_redis_resource_refuses_a_malformed_url_without_its_password(url: str) -> None:
    password = f"RdRes-{abs(hash(url)) % 10**6}-Pw"
    res = RedisResource(url=url.format(pw=password))
    for call in (res.describe, res.get_client, res.facts):
        with pytest.raises(RedisSnapshotError) as info:
            call()
        message = str(info.value)
        assert password not in message
        assert "REDIS_URL" in message and "redis://:password@host:6379/0" in message


@pytest.mark.parametrize(
    "remote",
    ["https//deploy:{pw}@127.0.0.1:1/x.git", "https:/deploy:{pw}@127.0.0.1:1/x.git"],
)
def test_git_errors_on_a_malformed_remote_are_masked(remote: str, tmp_path: Path) -> None:
    password = f"GitTok-{abs(hash(remote)) % 10**6}-x"
    git = GitRepoResource(remote=remote.format(pw=password), workdir_root=str(tmp_path))
    with pytest.raises(GitError) as info:
        git.ls_remote_head(timeout=20)
    assert password not in str(info.value)
    assert password not in git.remote_display


# --- the nightly backup job: event log, console and Slack ------------------------------------

# (variable, malformed value with "{pw}", what the error must name as the fix)
JOB_CASES: list[tuple[str, str, str]] = [
    ("DATABASE_URL", "postgresql//postgres:{pw}@127.0.0.1:5432/twinme", "postgresql://user:"),
    ("DATABASE_URL", "postgresql:/postgres:{pw}@127.0.0.1:5432/twinme", "postgresql://user:"),
    ("DATABASE_URL", "postgres:{pw}@127.0.0.1:5432/twinme", "postgresql://user:"),
    ("DATABASE_URL", "postgresql//postgres:p@ss/w#rd?{pw}@[::1]:5432/twinme", "postgresql://"),
    ("REDIS_URL", "redis:/:{pw}@127.0.0.1:6379/0", "redis://:password@host:6379/0"),
    ("REDIS_URL", "redis//default:{pw}@127.0.0.1:6379/0", "redis://:password@host:6379/0"),
    ("REDIS_URL", "redis://:{pw}#x:y@127.0.0.1:6379/0", "redis://:password@host:6379/0"),
    ("TWINME_BACKUP_URL", "s3//AKIAEXAMPLE:{pw}@twinme-backups/nightly", "s3://bucket/prefix"),
    ("TWINME_BACKUP_URL", "s3:/AKIAEXAMPLE:{pw}@twinme-backups/nightly", "s3://bucket/prefix"),
]
JOB_IDS = [f"{var}={value}" for var, value, _ in JOB_CASES]


def _password(case_id: str, n: int = 0) -> str:
    return f"Leak{n}-{abs(hash(case_id)) % 10**8}-Pw"


def _event_log_text(instance: dg.DagsterInstance, run_id: str) -> str:
    """Every event of the run as stored: messages, error infos with causes, metadata."""
    parts = []
    for entry in instance.all_logs(run_id):
        parts.append(repr(entry))
        event = entry.dagster_event
        if event is not None and event.is_step_failure and event.step_failure_data:
            error = event.step_failure_data.error
            while error is not None:  # what the UI shows: message, stack and causes
                parts += [error.message, "".join(error.stack)]
                error = error.cause
    return "\n".join(parts)


def _error_chain(event: dg.DagsterEvent) -> str:
    """A step failure's error and its causes (a user code error is the cause of Dagster's)."""
    data = event.step_failure_data
    error, messages = (data.error if data else None), []
    while error is not None:
        messages.append(error.message)
        error = error.cause
    return "\n".join(messages)


def _slack_text(receiver: SlackReceiver) -> str:
    return "\n".join(receiver.messages) + json.dumps(receiver.payloads) + repr(receiver.raw)


@pytest.mark.parametrize(("var", "value", "fix"), JOB_CASES, ids=JOB_IDS)
def test_backup_job_with_a_malformed_url_leaks_no_password(
    var: str,
    value: str,
    fix: str,
    sandbox,
    backup_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    slack_receiver: SlackReceiver,
    capfd: pytest.CaptureFixture[str],
) -> None:
    password = _password(f"{var}={value}")
    monkeypatch.setenv(var, value.format(pw=password))
    instance = dg.DagsterInstance.ephemeral()
    result = run_backup(instance=instance)
    assert not result.success
    out, err = capfd.readouterr()

    log = _event_log_text(instance, result.run_id) + run_text(instance, result)
    assert password not in log, "in the event log"
    assert password not in out + err, "on the console"
    assert slack_receiver.messages, "no failure alert was sent"
    assert password not in _slack_text(slack_receiver), "in Slack"
    # the error still names the variable and how to write it, in the run and in Slack
    failures = [_error_chain(e) for e in result.all_events if e.is_step_failure]
    assert any(var in f and fix in f for f in failures), failures
    assert any(var in m for m in slack_receiver.messages), slack_receiver.messages


# --- twinme-ops backup, as an operator runs it -----------------------------------------------

CLI_CASES = [JOB_CASES[0], JOB_CASES[4], JOB_CASES[7]]


def _run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``twinme-ops`` in its own process, importing this checkout's code."""
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from twinme_ops.cli import main; sys.exit(main())",
            *args,
        ],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=600,
    )


def _all_runs_text(dagster_home: Path) -> str:
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        return "\n".join(_event_log_text(instance, run.run_id) for run in instance.get_runs())


@pytest.mark.parametrize(
    ("var", "value", "fix"), CLI_CASES, ids=[JOB_IDS[0], JOB_IDS[4], JOB_IDS[7]]
)
def test_cli_backup_with_a_malformed_url_leaks_no_password(
    var: str,
    value: str,
    fix: str,
    sandbox,
    backup_env: dict[str, str],
    tmp_path: Path,
    slack_receiver: SlackReceiver,
) -> None:
    password = _password(f"cli {var}={value}", 1)
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    env: dict[str, Any] = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")
    }
    env.update(backup_env)
    env.update({"DAGSTER_HOME": str(dagster_home), var: value.format(pw=password)})
    proc = _run_cli(env, "backup")
    assert proc.returncode != 0, proc.stdout + proc.stderr
    shown = proc.stdout + proc.stderr
    assert password not in shown, "on the console"
    assert var in shown and fix in shown, shown[-3000:]
    assert password not in _all_runs_text(dagster_home), "in the event log"
    assert password not in _slack_text(slack_receiver), "in Slack"


# --- age identities (issue 14) ----------------------------------------------------------------


def test_an_age_identity_is_masked_even_when_never_registered() -> None:
    identity = str(pyrage.x25519.Identity.generate())
    shown = redact(f"failed with key file contents: {identity}\n")
    assert identity not in shown and "AGE-SECRET-KEY-1***" in shown
    public = str(pyrage.x25519.Identity.generate().to_public())
    assert public in redact(f"encrypted to {public}")  # a recipient is public: kept


def test_backup_job_with_an_identity_as_recipient_leaks_nothing(
    sandbox,
    backup_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    slack_receiver: SlackReceiver,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """The private key pasted into TWINME_BACKUP_AGE_RECIPIENTS: refused, named, never shown."""
    identity = str(pyrage.x25519.Identity.generate())
    monkeypatch.setenv("TWINME_BACKUP_AGE_RECIPIENTS", identity)
    instance = dg.DagsterInstance.ephemeral()
    result = run_backup(instance=instance)
    assert not result.success
    out, err = capfd.readouterr()
    log = _event_log_text(instance, result.run_id) + run_text(instance, result)
    assert identity not in log + out + err + _slack_text(slack_receiver)
    assert identity.removeprefix("AGE-SECRET-KEY-1") not in log + out + err
    failures = [_error_chain(e) for e in result.all_events if e.is_step_failure]
    failures += [log]
    assert any("TWINME_BACKUP_AGE_RECIPIENTS" in f and "age-keygen -y" in f for f in failures)
