"""The production Redis config: rendering, and drift / convergence against real redis-servers.

The servers run Debian's redis-server 7 from the rendered ``deploy/redis/production.conf``, with
only port, bind, dir and logfile overridden (to a free loopback port and a temporary directory).
Each is started in its own session and killed by a finalizer, whatever the test does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.support.list_log import ListLog
from twinme_ops.database.redis.converge import converge_redis
from twinme_ops.database.redis.declared import RedisConfigError, desired_settings
from twinme_ops.database.redis.drift import redis_config_drift
from twinme_ops.database.redis.live import METHOD_CONFIG, METHOD_INFO
from twinme_ops.database.redis.template import (
    PASSWORD_PLACEHOLDER,
    REPO_TEMPLATE,
    load_template,
    render,
    write_rendered,
)
from twinme_ops.scratch.local import LOCALHOST, free_port
from twinme_ops.scratch.redis import redis_server_binary

PASSWORD = "Prod-Test_pw#1$x"
PACKAGED_COPY = (
    Path(__file__).resolve().parents[2] / "twinme_ops/common/templates/redis-production.conf"
)
# What INFO shows of the production file's settings; the rest is unverifiable through INFO.
INFO_VISIBLE = ["maxmemory", "maxmemory-policy", "appendonly"]


@dataclass
class LiveRedis:
    """A redis-server started from a rendered config file (or from stdin)."""

    proc: subprocess.Popen[bytes]
    port: int
    dir: Path
    conf: Path | None
    rendered: str

    def client(self, password: str | None = PASSWORD) -> redis.Redis:
        return redis.Redis(
            host=LOCALHOST, port=self.port, password=password, socket_timeout=10, protocol=2
        )

    @property
    def desired(self) -> dict[str, str]:
        return desired_settings(self.rendered)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        # SHUTDOWN is renamed away in production.conf; SIGTERM still shuts Redis down cleanly.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _start(
    request: pytest.FixtureRequest,
    root: Path,
    extra: Mapping[str, str | None] | None = None,
    *,
    from_stdin: bool = False,
) -> LiveRedis:
    """Render production.conf for a loopback test server and start redis-server on it."""
    binary, _ = redis_server_binary(7)
    for _attempt in range(3):
        port = free_port()
        overrides: dict[str, str | None] = {
            "port": str(port),
            "bind": LOCALHOST,
            "dir": str(root),
            "logfile": str(root / "redis.log"),
            "daemonize": "no",
            **(extra or {}),
        }
        rendered = render(load_template(), PASSWORD, overrides)
        conf = None if from_stdin else root / "redis.conf"
        if conf is not None:
            write_rendered(rendered, conf)
        proc = subprocess.Popen(
            [binary, str(conf) if conf else "-"],
            cwd=root,
            stdin=subprocess.PIPE if from_stdin else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        request.addfinalizer(lambda proc=proc: _stop(proc))
        if from_stdin:
            assert proc.stdin is not None
            proc.stdin.write(rendered.encode())
            proc.stdin.close()
        server = LiveRedis(proc, port, root, conf, rendered)
        if _wait_ready(server):
            return server
        log = (
            (root / "redis.log").read_text(errors="replace")
            if (root / "redis.log").exists()
            else ""
        )
        if "already in use" not in log:
            pytest.fail(f"redis-server did not start from the rendered config:\n{log[-2000:]}")
    pytest.fail("no free port for redis-server after 3 attempts")


def _wait_ready(server: LiveRedis, timeout: float = 30.0) -> bool:
    client = server.client()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                return False
            with contextlib.suppress(redis.ConnectionError, redis.BusyLoadingError, OSError):
                # process_id: a reply from another server that holds the port is no success
                if int(client.info("server")["process_id"]) == server.proc.pid:
                    return True
            time.sleep(0.05)
    finally:
        client.close()
    _stop(server.proc)
    return False


@pytest.fixture(scope="module")
def prod_redis(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveRedis]:
    """The production config as rendered: CONFIG, FLUSHALL, KEYS… renamed away."""
    yield _start(request, tmp_path_factory.mktemp("redis-prod"))


@pytest.fixture
def config_redis(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LiveRedis]:
    """The production config without the CONFIG rename, so that CONFIG GET/SET work."""
    yield _start(request, tmp_path, {"rename-command CONFIG": None})


@pytest.fixture
def log_lines() -> ListLog:
    return ListLog()


@pytest.fixture
def log(log_lines: ListLog) -> ListLog:
    return log_lines


# --------------------------------------------------------------------------------------------
# template and rendering


def test_template_has_the_placeholder_and_renders_without_any() -> None:
    template = load_template()
    assert template == REPO_TEMPLATE.read_text()
    assert template.count(PASSWORD_PLACEHOLDER) == 1
    rendered = render(template, PASSWORD)
    assert "${" not in rendered
    assert f"requirepass {PASSWORD}" in rendered.splitlines()


def test_packaged_copy_is_identical_to_the_deployed_template() -> None:
    assert PACKAGED_COPY.read_text() == REPO_TEMPLATE.read_text(), (
        "copy deploy/redis/production.conf to twinme_ops/common/templates/redis-production.conf"
    )
    assert load_template(PACKAGED_COPY) == load_template()


@pytest.mark.parametrize(
    "password",
    [
        "",
        "Kx7#Qp2 Vb8!Lm4",
        "Kx7#Qp2\nVb8!Lm4",
        "Kx7#Qp2\tVb8!Lm4",
        'Kx7#"Vb8!Lm4',
        "Kx7#'Vb8!Lm4",
        "Kx7#\x07Vb8!Lm4",
    ],
    ids=["empty", "space", "newline", "tab", "double-quote", "single-quote", "control"],
)
def test_render_refuses_a_bad_password_without_echoing_it(password: str) -> None:
    with pytest.raises(RedisConfigError) as exc:
        render(load_template(), password)
    message = str(exc.value)
    assert "REDIS_PASSWORD" in message
    if password:
        assert password not in message
        # no recognisable fragment either
        assert "Kx7#" not in message and "Vb8!" not in message


def test_render_refuses_a_template_without_password_and_unknown_placeholders() -> None:
    with pytest.raises(RedisConfigError, match="no .* placeholder"):
        render("port 6379\n", PASSWORD)
    with pytest.raises(RedisConfigError, match=r"\$\{OTHER\}"):
        render("requirepass ${REDIS_PASSWORD}\ndir ${OTHER}\n", PASSWORD)
    # a password that itself contains "${" is fine
    assert "requirepass a${b}" in render("requirepass ${REDIS_PASSWORD}\n", "a${b}")


def test_render_overrides_replace_append_and_remove() -> None:
    rendered = render(
        load_template(),
        PASSWORD,
        {
            "port": "7001",
            "save": "60 1",
            "rename-command CONFIG": None,
            "maxclients": "100",
        },
    )
    lines = [line for line in rendered.splitlines() if line and not line.startswith("#")]
    assert "port 7001" in lines and "port 6379" not in lines
    assert [line for line in lines if line.startswith("save")] == ["save 60 1"]
    assert 'rename-command CONFIG ""' not in lines
    assert 'rename-command FLUSHALL ""' in lines
    assert lines[-1] == "maxclients 100"
    with pytest.raises(RedisConfigError, match="requirepass cannot be overridden"):
        render(load_template(), PASSWORD, {"requirepass": "other"})
    with pytest.raises(RedisConfigError, match="line break"):
        render(load_template(), PASSWORD, {"dir": "/tmp\nrequirepass x"})


def test_desired_settings_are_normalised_like_redis_reports_them() -> None:
    desired = desired_settings(render(load_template(), PASSWORD))
    assert desired["maxmemory"] == str(2 * 1024**3)
    assert desired["auto-aof-rewrite-min-size"] == str(64 * 1024**2)
    assert desired["save"] == "900 1 300 10 60 10000"
    assert "appendfilename" not in desired and "dbfilename" not in desired  # locations
    assert desired["appendonly"] == "yes"
    assert desired["maxmemory-policy"] == "allkeys-lru"
    for left_out in ("requirepass", "rename-command", "port", "bind", "dir", "logfile"):
        assert left_out not in desired
    assert PASSWORD not in repr(desired)
    assert desired_settings('save ""\nsave 60 1\nmaxmemory 1MB\n') == {
        "save": "60 1",
        "maxmemory": str(1024**2),
    }


def test_write_rendered_is_atomic_and_0600(tmp_path: Path) -> None:
    target = tmp_path / "conf" / "redis.conf"
    target.parent.mkdir()
    target.write_text("old")
    target.chmod(0o644)
    write_rendered(render(load_template(), PASSWORD), target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert PASSWORD in target.read_text()
    assert [p.name for p in target.parent.iterdir()] == ["redis.conf"]  # no temp file left


# --------------------------------------------------------------------------------------------
# the production config on a real server (CONFIG renamed away)


def test_production_config_starts_and_requires_the_password(prod_redis: LiveRedis) -> None:
    assert prod_redis.conf is not None
    assert stat.S_IMODE(prod_redis.conf.stat().st_mode) == 0o600
    with pytest.raises(redis.AuthenticationError):
        prod_redis.client(password=None).ping()
    with pytest.raises(redis.AuthenticationError):
        prod_redis.client(password="wrong-password").ping()
    assert prod_redis.client().ping() is True


def test_production_config_renames_dangerous_commands(prod_redis: LiveRedis) -> None:
    client = prod_redis.client()
    for command in (
        ("CONFIG", "GET", "maxmemory"),
        ("FLUSHALL",),
        ("KEYS", "*"),
        ("DEBUG", "SLEEP", "0"),
    ):
        with pytest.raises(redis.ResponseError, match="unknown command"):
            client.execute_command(*command)


def test_production_config_has_aof_on(prod_redis: LiveRedis) -> None:
    client = prod_redis.client()
    assert client.info("persistence")["aof_enabled"] == 1
    assert client.info("memory")["maxmemory"] == 2 * 1024**3
    assert (prod_redis.dir / "appendonlydir").is_dir()


def test_drift_falls_back_to_info_and_finds_none(prod_redis: LiveRedis) -> None:
    drift = redis_config_drift(prod_redis.client(), prod_redis.desired)
    assert drift.method == METHOD_INFO
    assert drift.differences == []
    assert not drift.drifted
    assert drift.checked == INFO_VISIBLE
    assert set(drift.unverifiable) == set(prod_redis.desired) - set(INFO_VISIBLE)
    assert {"save", "appendfsync", "timeout", "tcp-keepalive", "loglevel"} <= set(
        drift.unverifiable
    )
    assert drift.summary().startswith("no drift [INFO")


def test_converge_without_config_changes_nothing_and_says_why(
    prod_redis: LiveRedis, log_lines: list[str], log: ListLog
) -> None:
    client = prod_redis.client()
    before = client.info("memory")["maxmemory"]
    report = converge_redis(client, prod_redis.desired, log)
    assert not report.changed
    assert report.pending_restart == []
    assert report.notes[0].startswith("CONFIG is renamed away")
    assert client.info("memory")["maxmemory"] == before
    assert all(PASSWORD not in line for line in log_lines + report.notes)


def test_drift_through_info_is_reported_and_left_to_a_restart(
    prod_redis: LiveRedis, log: ListLog
) -> None:
    # A newer file asks for 1gb and noeviction: INFO sees it, CONFIG SET is impossible.
    desired = {**prod_redis.desired, "maxmemory": "1gb", "maxmemory-policy": "noeviction"}
    drift = redis_config_drift(prod_redis.client(), desired)
    assert drift.method == METHOD_INFO
    assert drift.differences == [
        f"maxmemory: desired {1024**3}, live {2 * 1024**3}",
        "maxmemory-policy: desired noeviction, live allkeys-lru",
    ]
    report = converge_redis(prod_redis.client(), desired, log)
    assert not report.changed
    assert report.pending_restart == ["maxmemory", "maxmemory-policy"]
    assert report.notes == [
        "CONFIG is renamed away: deploy the rendered file and restart Redis to apply: "
        + "; ".join(drift.differences)
    ]


# --------------------------------------------------------------------------------------------
# the same config with CONFIG available


def test_drift_and_converge_with_config(
    config_redis: LiveRedis, log_lines: list[str], log: ListLog
) -> None:
    client = config_redis.client()
    desired = config_redis.desired
    drift = redis_config_drift(client, desired)
    assert drift.method == METHOD_CONFIG
    assert drift.differences == []
    assert drift.checked == list(desired) and drift.unverifiable == []
    assert not converge_redis(client, desired, log).changed

    client.config_set("maxmemory", "1mb")
    client.config_set("appendfsync", "always")
    drift = redis_config_drift(client, desired)
    assert drift.differences == [
        f"maxmemory: desired {2 * 1024**3}, live {1024**2}",
        "appendfsync: desired everysec, live always",
    ]

    report = converge_redis(client, desired, log)
    assert report.statements() == [
        f"CONFIG SET maxmemory {2 * 1024**3}",
        "CONFIG SET appendfsync everysec",
        "CONFIG REWRITE",
    ]
    assert report.pending_restart == []
    assert redis_config_drift(client, desired).differences == []
    assert not converge_redis(client, desired, log).changed
    assert any("mode 0644" in n for n in report.notes)
    assert all(PASSWORD not in line for line in log_lines + report.notes + report.statements())
    # CONFIG REWRITE persisted the value in the server's file
    assert config_redis.conf is not None
    assert "maxmemory 2gb" in config_redis.conf.read_text().splitlines()


def test_converge_lists_settings_only_a_restart_applies(
    config_redis: LiveRedis, log: ListLog
) -> None:
    client = config_redis.client()
    desired = {**config_redis.desired, "tcp-backlog": "1024", "dbfilename": "other.rdb"}
    report = converge_redis(client, desired, log)
    assert not report.changed
    assert sorted(report.pending_restart) == ["dbfilename", "tcp-backlog"]
    assert any(n.startswith("not settable at runtime") for n in report.notes)


def test_converge_without_config_file_does_not_rewrite(
    request: pytest.FixtureRequest, tmp_path: Path, log: ListLog
) -> None:
    server = _start(request, tmp_path, {"rename-command CONFIG": None}, from_stdin=True)
    client = server.client()
    assert client.info("server")["config_file"] == ""
    client.config_set("timeout", "30")
    report = converge_redis(client, server.desired, log)
    assert report.statements() == ["CONFIG SET timeout 0"]
    assert any("without a config file" in n for n in report.notes)
    assert redis_config_drift(client, server.desired).differences == []


def test_requirepass_is_out_of_scope(config_redis: LiveRedis) -> None:
    with pytest.raises(RedisConfigError, match="out of scope"):
        redis_config_drift(config_redis.client(), {"requirepass": PASSWORD})
    with pytest.raises(RedisConfigError, match="out of scope"):
        converge_redis(config_redis.client(), {"requirepass": "x"})
