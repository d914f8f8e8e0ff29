"""``dagster dev`` (webserver, daemon, code server) on 127.0.0.1, and headless Chromium.

Registered for every test module by ``tests/conftest.py``:

- ``dagster_dev``: the repo's ``workspace.yaml`` served by ``dagster dev`` on a free port, with a
  temporary ``DAGSTER_HOME`` holding a copy of the repo's ``dagster.yaml``, ``TWINME_HOME`` on
  the shared sandbox, a fresh local backup store and a Slack receiver. Stopped with its whole
  process group at the end of the module.

``dagster dev`` started in the background ignores SIGINT (a shell sets SIGINT to SIG_IGN for
background jobs, and exec keeps it), while its own SIGTERM handler only forwards SIGINT to its
children: they would survive. So it is started through a tiny exec wrapper that resets SIGINT to
the default, in its own session, and stopped with ``killpg(SIGTERM)``, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster_graphql import DagsterGraphQLClient

from tests.support.slack_receiver import SlackReceiver
from twinme_ops.sandbox.servers import SandboxInfo
from twinme_ops.scratch.local import LOCALHOST, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCATION_NAME = "twinme_ops"
# a cold start imports dagster three times (webserver, daemon, code server): ~30 s idle, far
# more on a loaded 2-core CI runner
STARTUP_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 60.0

# exec the command with SIGINT back to its default disposition (see the module docstring)
_EXEC_WITH_DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)

# Variables that would point the code location at something other than the sandbox and the
# test's own store and Slack receiver (a developer's cluster, real bucket or webhook)
_ISOLATED_VARS = (
    "DATABASE_URL",
    "REDIS_URL",
    "TWINME_FILES_DIR",
    "TWINME_BACKUP_URL",
    "TWINME_BACKUP_ENCRYPTION_KEY",
    "SLACK_WEBHOOK_URL",
    "TWINME_GIT_REMOTE",
    "TWINME_GIT_BRANCH",
    "TWINME_API_URL",
    "TWINME_REGISTRY",
    "TWINME_IMAGE_REPOSITORY",
    "TWINME_K8S_NAMESPACE",
    "KUBECONFIG",
    "AWS_ENDPOINT_URL_S3",
    "DAGSTER_HOME",
)

_WORKSPACE_QUERY = """
{
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name
        loadStatus
        locationOrLoadError {
          __typename
          ... on PythonError { message errorChain { error { message } } }
        }
      }
    }
    ... on PythonError { message }
  }
  instance { daemonHealth { allDaemonStatuses { daemonType required healthy } } }
}
"""


class DagsterDevError(RuntimeError):
    """``dagster dev`` did not come up, or a GraphQL request failed."""


def process_group_members(pgid: int) -> list[str]:
    """Live (non-zombie) processes of a process group, as ``"pid cmdline"``, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited while we looked
            continue
        # the command name in field 2 may contain spaces: split after its closing parenthesis
        fields = stat[stat.rindex(")") + 2 :].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state != "Z":
            members.append(f"{entry.name} {cmdline.strip()[:160]}")
    return members


@dataclass
class DagsterDev:
    """A running ``dagster dev`` and what it was started with."""

    process: subprocess.Popen[bytes]
    port: int
    dagster_home: Path
    log_path: Path
    env: dict[str, str]
    backup_dir: Path
    slack: SlackReceiver | None = None
    stopped: bool = field(default=False)

    @property
    def url(self) -> str:
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def pgid(self) -> int:
        # start_new_session=True: the leader's pid is the group id
        return self.process.pid

    def client(self) -> DagsterGraphQLClient:
        """The dagster-graphql client, as an operator's script would use it."""
        return DagsterGraphQLClient(LOCALHOST, port_number=self.port, timeout=60)

    def graphql(
        self, query: str, variables: dict[str, Any] | None = None, timeout: float = 60
    ) -> dict[str, Any]:
        """POST a GraphQL query to the webserver; its ``data``, or an error naming the problem."""
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        request = urllib.request.Request(
            f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = json.load(response)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")[:2000]
            raise DagsterDevError(f"GraphQL HTTP {exc.code}: {detail}") from None
        if payload.get("errors"):
            raise DagsterDevError(f"GraphQL errors: {json.dumps(payload['errors'])[:2000]}")
        return payload["data"]

    def log_tail(self, lines: int = 80) -> str:
        """The end of the combined stdout/stderr of ``dagster dev`` (for failure messages)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def group_members(self) -> list[str]:
        return process_group_members(self.pgid)

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> list[str]:
        """SIGTERM the whole process group, SIGKILL what is left after ``timeout``.

        Returns the processes that survived SIGTERM (empty when the shutdown was clean); after
        this call nothing of the group runs either way.
        """
        if self.stopped:
            return []
        self.stopped = True
        survivors: list[str] = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.process.poll()  # reap the leader so it does not count as a member
            if not self.group_members():
                break
            time.sleep(0.5)
        else:
            survivors = self.group_members()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
        self.process.wait(timeout=30)  # the leader is gone by now: this only reaps it
        return survivors


def _location_ready(data: dict[str, Any]) -> tuple[bool, str]:
    """Is the code location loaded and every required daemon healthy? If not, what is missing."""
    workspace = data["workspaceOrError"]
    if workspace["__typename"] != "Workspace":
        return False, f"workspace: {workspace.get('message', workspace['__typename'])}"
    entries = {e["name"]: e for e in workspace["locationEntries"]}
    entry = entries.get(LOCATION_NAME)
    if entry is None:
        return False, f"no code location {LOCATION_NAME!r} (have {sorted(entries)})"
    loaded = entry["locationOrLoadError"]
    if loaded and loaded["__typename"] == "PythonError":
        # the first message only says "error loading definitions": the cause is in the chain
        chain = [loaded["message"], *(c["error"]["message"] for c in loaded["errorChain"])]
        causes = " <- ".join(m.strip() for m in chain)
        raise DagsterDevError(f"code location {LOCATION_NAME} failed to load: {causes}")
    if entry["loadStatus"] != "LOADED" or not loaded:
        return False, f"code location {LOCATION_NAME} is {entry['loadStatus']}"
    daemons = data["instance"]["daemonHealth"]["allDaemonStatuses"]
    unhealthy = [d["daemonType"] for d in daemons if d["required"] and not d["healthy"]]
    if not daemons or unhealthy:
        return False, f"daemons not healthy yet: {unhealthy or 'none reported'}"
    return True, "ready"


def start_dagster_dev(
    workdir: Path,
    env_overrides: dict[str, str],
    *,
    backup_dir: Path,
    slack: SlackReceiver | None = None,
    instance_overrides: dict[str, Any] | None = None,
    timeout: float = STARTUP_TIMEOUT_S,
) -> DagsterDev:
    """Start ``dagster dev -w workspace.yaml`` on a free port and wait until it is usable.

    Usable means: GraphQL answers, the ``twinme_ops`` code location is loaded, and every required
    daemon (scheduler, sensors, run queue) reports healthy. Raises with the log's tail otherwise.
    ``instance_overrides`` replaces top-level sections of the repo's ``dagster.yaml`` (e.g. a
    faster ``run_monitoring`` poll for a test).
    """
    dagster_home = workdir / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    instance = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    instance.update(instance_overrides or {})
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(instance))
    env = {k: v for k, v in os.environ.items() if k not in _ISOLATED_VARS}
    env.update(env_overrides)
    env["DAGSTER_HOME"] = str(dagster_home)
    port = free_port()
    log_path = workdir / "dagster-dev.log"
    command = [
        *(sys.executable, "-c", _EXEC_WITH_DEFAULT_SIGINT),
        *(sys.executable, "-m", "dagster", "dev"),
        *("-w", str(REPO_ROOT / "workspace.yaml"), "-h", LOCALHOST, "-p", str(port)),
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    dev = DagsterDev(
        process=process,
        port=port,
        dagster_home=dagster_home,
        log_path=log_path,
        env=env,
        backup_dir=backup_dir,
        slack=slack,
    )
    try:
        _wait_ready(dev, timeout)
    except BaseException:
        dev.stop(timeout=20)
        raise
    return dev


def _wait_ready(dev: DagsterDev, timeout: float) -> None:
    started = time.monotonic()
    state = "webserver not answering"
    while time.monotonic() - started < timeout:
        if dev.process.poll() is not None:
            raise DagsterDevError(
                f"dagster dev exited with {dev.process.returncode} before it was ready:\n"
                f"{dev.log_tail()}"
            )
        try:
            ready, state = _location_ready(dev.graphql(_WORKSPACE_QUERY, timeout=10))
        except (OSError, DagsterDevError) as exc:
            if isinstance(exc, DagsterDevError) and "failed to load" in str(exc):
                raise
            ready, state = False, f"webserver not answering ({exc})"
        if ready:
            print(f"dagster dev ready on {dev.url} in {time.monotonic() - started:.1f} s")
            return
        time.sleep(1)
    raise DagsterDevError(
        f"dagster dev not ready after {timeout:.0f} s ({state}); log tail:\n{dev.log_tail()}"
    )


@contextlib.contextmanager
def sandbox_dagster_dev(
    sandbox: SandboxInfo,
    workdir: Path,
    extra_env: dict[str, str] | None = None,
    instance_overrides: dict[str, Any] | None = None,
) -> Iterator[DagsterDev]:
    """``dagster dev`` on the shared sandbox, a fresh backup store and a Slack receiver.

    Fails on exit if any process of its group survived SIGTERM (they are SIGKILLed anyway).
    """
    backup_dir = workdir / "backups"
    slack = SlackReceiver()
    env = {
        "TWINME_ENV": "local",
        "TWINME_HOME": str(sandbox.home),
        "TWINME_BACKUP_URL": f"file://{backup_dir}",
        "SLACK_WEBHOOK_URL": slack.url,
        **(extra_env or {}),
    }
    try:
        dev = start_dagster_dev(
            workdir, env, backup_dir=backup_dir, slack=slack, instance_overrides=instance_overrides
        )
    except BaseException:
        slack.close()
        raise
    try:
        yield dev
    finally:
        survivors = dev.stop()
        slack.close()
        assert not survivors, f"processes of dagster dev survived SIGTERM: {survivors}"


@pytest.fixture(scope="module")
def dagster_dev(
    sandbox: SandboxInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DagsterDev]:
    """:func:`sandbox_dagster_dev` with the repo's ``dagster.yaml``, for one test module."""
    with sandbox_dagster_dev(sandbox, tmp_path_factory.mktemp("dagster-dev")) as dev:
        yield dev
