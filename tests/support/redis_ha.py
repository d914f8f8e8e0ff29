"""Redis with high availability on 127.0.0.1, from deploy/redis/ha/ as production runs it.

A primary, a replica and three Sentinels: each server's config is rendered by the same init
scripts the pods run (deploy/redis/ha/init-redis.sh, init-sentinel.sh) and loaded by the real
``redis-server`` and ``redis-sentinel`` binaries (Debian's redis-server and redis-sentinel,
.ci/deps). Only what differs on one machine is given on the command line: the port, the data
directory (Redis changes into ``dir /data`` as it reads the file, so that line is rewritten in
a copy of the template), ``bind 127.0.0.1`` and a smaller ``maxmemory``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

REPO = Path(__file__).resolve().parents[2]
HA_DIR = REPO / "deploy" / "redis" / "ha"
SERVICE = "mymaster"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisHA:
    """The running set; ``url`` is the ``redis+sentinel://`` URL clients are given."""

    root: Path
    password: str = "ha-pass-7f3c9e"
    config_command: str = "CONFIG-b41d6a"
    slaveof_command: str = "SLAVEOF-92e0c7"
    redis_ports: list[int] = field(default_factory=list)
    sentinel_ports: list[int] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://:{self.password}@{hosts}/{SERVICE}/0"

    def server_url(self, port: int) -> str:
        return f"redis://:{self.password}@127.0.0.1:{port}/0"

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=port, password=self.password, socket_timeout=10)

    def sentinel(self, i: int = 0) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.sentinel_ports[i], password=self.password, socket_timeout=5
        )

    def primary_port(self) -> int:
        reply = self.sentinel().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE)
        assert reply, "the Sentinels know no primary"
        host, port = (v.decode() if isinstance(v, bytes) else str(v) for v in reply)
        assert host == "127.0.0.1", host
        return int(port)

    def replica_ports(self) -> list[int]:
        return [p for p in self.redis_ports if p != self.primary_port()]

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "REDIS_PASSWORD": self.password,
            "REDIS_CONFIG_COMMAND": self.config_command,
            "REDIS_SLAVEOF_COMMAND": self.slaveof_command,
            "SENTINEL_HOST": "127.0.0.1",
            "SENTINEL_PORT": str(self.sentinel_ports[0]),
            "MY_HOST": "127.0.0.1",
            "FIRST_HOST": "127.0.0.1",
            "FIRST_PORT": str(self.redis_ports[0]),
            **extra,
        }

    def _start(self, name: str, argv: list[str]) -> None:
        """Start ``argv`` as the pods do: with umask 077 (CONFIG REWRITE keeps files private)."""
        log = (self.root / f"{name}.log").open("wb")
        wrapped = ["sh", "-c", 'umask 077 && exec "$@"', "sh", *argv]
        self.procs[name] = subprocess.Popen(wrapped, stdout=log, stderr=subprocess.STDOUT)

    def start_redis(self, i: int) -> None:
        port = self.redis_ports[i]
        conf, data = self.root / f"redis-{i}.conf", self.root / f"data-{i}"
        data.mkdir(exist_ok=True)
        template = self.root / f"redis-{i}.template.conf"
        text = (HA_DIR / "redis.conf").read_text()
        assert "\ndir /data\n" in text
        template.write_text(text.replace("\ndir /data\n", f"\ndir {data}\n"))
        env = self.env(TEMPLATE=str(template), OUT=str(conf), MY_PORT=str(port))
        subprocess.run(["sh", str(HA_DIR / "init-redis.sh")], env=env, check=True, timeout=30)
        argv = ["redis-server", str(conf), "--port", str(port), "--bind", "127.0.0.1"]
        self._start(f"redis-{i}", [*argv, "--maxmemory", "256mb"])
        wait_until(lambda: _pings(self.client(port)), f"redis-{i} on {port}")

    def start_sentinel(self, i: int) -> None:
        port = self.sentinel_ports[i]
        conf = self.root / f"sentinel-{i}.conf"
        env = self.env(
            TEMPLATE=str(HA_DIR / "sentinel.conf"),
            OUT=str(conf),
            MY_PORT=str(port),
            DOWN_AFTER_MS="2000",
            FAILOVER_TIMEOUT_MS="10000",
        )
        subprocess.run(["sh", str(HA_DIR / "init-sentinel.sh")], env=env, check=True, timeout=30)
        self._start(f"sentinel-{i}", ["redis-sentinel", str(conf), "--port", str(port)])
        wait_until(lambda: _pings(self.sentinel(i)), f"sentinel-{i} on {port}")

    def wait_ready(self) -> None:
        """Every Sentinel knows the others and the replicas, and every replica is in sync."""

        def ready() -> bool:
            for i in range(len(self.sentinel_ports)):
                state: dict[str, Any] = self.sentinel(i).sentinel_master(SERVICE)  # type: ignore[assignment]
                if int(state["num-other-sentinels"]) != len(self.sentinel_ports) - 1:
                    return False
                if int(state["num-slaves"]) != len(self.redis_ports) - 1:
                    return False
            for port in self.replica_ports():
                info = self.client(port).info("replication")
                if info.get("master_link_status") != "up":
                    return False
            return True

        wait_until(ready, "the Sentinels and replicas to settle", timeout=60)

    def failover(self) -> int:
        """SENTINEL FAILOVER; returns the old primary's port."""
        old = self.primary_port()
        self.sentinel().execute_command("SENTINEL", "FAILOVER", SERVICE)
        return old

    def wait_new_primary(self, old: int, timeout: float = 60) -> int:
        def promoted() -> bool:
            port = self.primary_port()
            return port != old and self.client(port).info("replication")["role"] == "master"

        wait_until(promoted, "the failover to promote a replica", timeout=timeout)
        return self.primary_port()

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def wait_until(check, what: str, timeout: float = 30) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except redis.RedisError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def start_redis_ha(root: Path, replicas: int = 1, sentinels: int = 3) -> RedisHA:
    root.mkdir(parents=True, exist_ok=True)
    ha = RedisHA(root)
    ha.redis_ports = [free_port() for _ in range(1 + replicas)]
    ha.sentinel_ports = [free_port() for _ in range(sentinels)]
    try:
        for i in range(len(ha.redis_ports)):
            ha.start_redis(i)
        for i in range(sentinels):
            ha.start_sentinel(i)
        ha.wait_ready()
    except BaseException:
        ha.stop()
        raise
    return ha


@pytest.fixture
def redis_ha(server_tmp: Path) -> Iterator[RedisHA]:
    """A primary, one replica and three Sentinels (a fresh set per test: tests fail over)."""
    ha = start_redis_ha(server_tmp / "redis-ha")
    try:
        yield ha
    finally:
        ha.stop()
