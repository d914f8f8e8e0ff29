"""A real Prometheus Pushgateway on 127.0.0.1, with or without basic auth (tests, bench)."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from base64 import b64encode
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from twinme_ops.scratch.local import free_port

PUSHGATEWAY = "prometheus-pushgateway"
USER = "twinme"
PASSWORD = "push-Secret-pw9"
# bcrypt of PASSWORD (cost 10), as exporter-toolkit's basic_auth_users wants it
PASSWORD_HASH = "$2b$10$kWEL4fNYW04Smm3KbBybfuwOHyJRfa1sJvv2FgM3C0SjCwrxTn/pq"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Gateway:
    """A running Pushgateway: its base URL and how to read what it holds."""

    port: int
    auth: tuple[str, str] | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url_with_auth(self, password: str = PASSWORD) -> str:
        return f"http://{USER}:{password}@127.0.0.1:{self.port}"

    def get(self, path: str) -> bytes:
        request = urllib.request.Request(self.url + path)
        if self.auth:
            token = b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.read()

    def samples(self) -> Samples:
        """Every twinme_* sample the gateway exposes, keyed by name and label set."""
        out: Samples = {}
        for family in text_string_to_metric_families(self.get("/metrics").decode()):
            for s in family.samples:
                if s.name.startswith("twinme_"):
                    out[(s.name, frozenset(s.labels.items()))] = s.value
        return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of ``name`` whose labels include ``labels``; fails if none or several."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples in {sorted(samples)}"
    return found[0]


def names(samples: Samples) -> set[str]:
    return {n for n, _ in samples}


def start_gateway(tmp: Path, auth: bool) -> tuple[subprocess.Popen[bytes], Gateway]:
    if shutil.which(PUSHGATEWAY) is None:
        pytest.fail(f"{PUSHGATEWAY} is missing: apt-get install prometheus-pushgateway")
    args = [PUSHGATEWAY, f"--persistence.file={tmp / 'pushgateway.data'}"]
    if auth:
        web = tmp / "web.yml"
        web.write_text(f"basic_auth_users:\n  {USER}: {PASSWORD_HASH}\n")
        args.append(f"--web.config.file={web}")
    log = tmp / "pushgateway.log"
    for _ in range(3):
        port = free_port()
        gateway = Gateway(port, (USER, PASSWORD) if auth else None)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [*args, f"--web.listen-address=127.0.0.1:{port}"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                gateway.get("/-/ready")
                return proc, gateway
            except OSError:
                time.sleep(0.05)
        proc.kill()
        proc.wait(10)
    pytest.fail(f"the Pushgateway did not start:\n{log.read_text()[-2000:]}")


def stop_gateway(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    """A real Pushgateway without authentication, stopped after the test."""
    proc, gw = start_gateway(tmp_path, auth=False)
    try:
        yield gw
    finally:
        stop_gateway(proc)
