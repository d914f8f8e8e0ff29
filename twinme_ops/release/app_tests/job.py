"""The Kubernetes Job that runs a pushed commit's tests, as plain manifests (no cluster here).

One pod, in the build namespace, that holds nothing of production:

- **no Secret** (no ``secretKeyRef``, no ``envFrom``, no secret volume), no environment of the
  run: only :func:`~twinme_ops.release.app_tests.runner.clean_env`'s allowlist and the throwaway
  servers'
  URLs; ``automountServiceAccountToken: false`` and ``enableServiceLinks: false`` (no API token,
  no other Service's address in the environment);
- the **restricted** Pod Security profile in every container: ``runAsNonRoot`` with explicit
  uids, ``seccompProfile: RuntimeDefault``, ``allowPrivilegeEscalation: false``, every capability
  dropped, read-only root filesystems (writable places are ``emptyDir`` volumes);
- **the source** comes from twinme_ops, not from Git: ``git archive`` of the tested checkout,
  gzipped, cut into immutable ConfigMaps (``binaryData``, 700 KiB each) that the ``source`` init
  container checks (sha256) and unpacks into the workspace. The pod never sees a git token
  because it never talks to Git;
- **throwaway PostgreSQL** (pgvector image, listening on 127.0.0.1 only, a non-superuser role
  ``app_tests`` owning database ``app_tests`` where ``vector`` and ``pg_trgm`` exist; the
  superuser's password is made up inside the container) **and Redis** (127.0.0.1, no
  persistence) as native sidecars: init containers with ``restartPolicy: Always`` whose startup
  probes hold the tests back until they answer (Kubernetes >= 1.29);
- the ``tests`` container runs the commands with a small Node program (:data:`RUNNER_JS`): each
  command's argv as ``shlex.split`` gives it (no shell), a time limit each, and a marker line
  before and after each (``::twinme-app-tests:: end <i> <exit> <ms>``) from which twinme_ops
  rebuilds one result per command. The pushed code can print markers too; that changes only the
  report, since it decides whether its own tests pass anyway: the container's exit code is what
  passes or fails the release.

The egress of these pods is limited by ``deploy/build/20-app-tests-networkpolicy.yaml`` (DNS, and
HTTPS outside the cluster's private ranges for the npm registry); nothing may connect to them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twinme_ops.release.app_tests.runner import TEST_ENV, CommandResult

APP_LABEL = "twinme-app-tests"
TESTS_CONTAINER = "tests"
SOURCE_CONTAINER = "source"
POSTGRES_CONTAINER = "postgres"
REDIS_CONTAINER = "redis"
WORKSPACE = "/twinme/workspace"
HOME = "/twinme/home"
SOURCE_DIR = "/twinme/source"
CHUNK_BYTES = 700 * 1024  # base64 grows it to ~933 KiB: a ConfigMap holds at most 1 MiB
MARKER = "::twinme-app-tests::"
APP_DATABASE = "app_tests"
APP_ROLE = "app_tests"
NODE_UID = 1000  # "node" in the official Node images
POSTGRES_UID = 999  # "postgres" in the official PostgreSQL images (pgvector's too)
REDIS_UID = 999  # "redis" in the official Redis images

RUNNER_JS = """\
const { spawnSync } = require('node:child_process');
const { constants } = require('node:os');
const steps = JSON.parse(process.argv[1]);
const timeoutMs = Number(process.argv[2]);
const mark = (text) => process.stdout.write(`MARKER ${text}\\n`);
for (let i = 0; i < steps.length; i++) {
  mark(`begin ${i}`);
  const started = Date.now();
  const r = spawnSync(steps[i][0], steps[i].slice(1), {
    stdio: 'inherit', timeout: timeoutMs, killSignal: 'SIGKILL',
  });
  const timedOut = Boolean(r.error && r.error.code === 'ETIMEDOUT');
  let code = r.status;
  if (r.error && !timedOut) {
    process.stdout.write(`cannot start ${steps[i][0]}: ${r.error.message}\\n`);
    code = 127;
  } else if (code === null) {
    code = 128 + (constants.signals[r.signal] || 0);
  }
  mark(`end ${i} ${code} ${Date.now() - started}${timedOut ? ' timeout' : ''}`);
  if (code !== 0 || timedOut) process.exit(timedOut ? 124 : code);
}
""".replace("MARKER", MARKER)

# what the postgres sidecar runs at initdb (the image's /docker-entrypoint-initdb.d)
INIT_SQL = f"""\
CREATE ROLE {APP_ROLE} LOGIN CREATEDB CREATEROLE PASSWORD :'app_password';
CREATE DATABASE {APP_DATABASE} OWNER {APP_ROLE};
\\connect {APP_DATABASE}
CREATE EXTENSION IF NOT EXISTS vector;
CREATE EXTENSION IF NOT EXISTS pg_trgm;
"""
# the superuser's password is made up in the container and never leaves it
_POSTGRES_START = """\
set -eu
# one file: psql runs each file of the directory in a session of its own
{
  printf '\\\\set app_password %s\\n' "$APP_TESTS_PASSWORD"
  printf '%s\\n' "$APP_TESTS_INIT_SQL"
} > /docker-entrypoint-initdb.d/10-app-tests.sql
POSTGRES_PASSWORD="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \\n')"
export POSTGRES_PASSWORD
exec docker-entrypoint.sh postgres -c listen_addresses=127.0.0.1 -c fsync=off \\
  -c synchronous_commit=off -c full_page_writes=off
"""
_SOURCE_UNPACK = f"""\
set -eu
cat {SOURCE_DIR}/part-* > /tmp/source.tar.gz
echo "$SOURCE_SHA256  /tmp/source.tar.gz" | sha256sum -c -
tar -xzf /tmp/source.tar.gz -C {WORKSPACE}
rm /tmp/source.tar.gz
echo "source of $SOURCE_COMMIT unpacked into {WORKSPACE}"
"""


def restricted(uid: int) -> dict[str, Any]:
    """A container securityContext that passes the restricted Pod Security profile."""
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def source_configmaps(job: str, archive: bytes) -> list[dict[str, Any]]:
    """The gzipped tar of the source cut into immutable ConfigMaps ``<job>-src-<n>``."""
    labels = {"app.kubernetes.io/name": APP_LABEL, "app.kubernetes.io/part-of": "twinme-ops"}
    parts = [archive[i : i + CHUNK_BYTES] for i in range(0, len(archive), CHUNK_BYTES)] or [b""]
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"{job}-src-{n}", "labels": {**labels, "twinme.ai/job": job}},
            "immutable": True,
            "binaryData": {f"part-{n:03d}": base64.b64encode(part).decode()},
        }
        for n, part in enumerate(parts)
    ]


@dataclass(frozen=True)
class PodSettings:
    """What the Job's pod is made of (the runner's configuration)."""

    test_image: str
    postgres_image: str
    redis_image: str
    resources: Mapping[str, Mapping[str, str]]
    service_account: str = ""
    npm_registry: str = ""


def services_env(password: str) -> dict[str, str]:
    """How the tests reach the sidecars (the same names as the local runner gives them)."""
    database = f"postgresql://{APP_ROLE}:{password}@127.0.0.1:5432/{APP_DATABASE}"
    redis = "redis://127.0.0.1:6379/0"
    return {
        "DATABASE_URL": database,
        "TEST_DATABASE_URL": database,
        "REDIS_URL": redis,
        "TEST_REDIS_URL": redis,
        "PGHOST": "127.0.0.1",
        "PGPORT": "5432",
        "PGUSER": APP_ROLE,
        "PGPASSWORD": password,
        "PGDATABASE": APP_DATABASE,
    }


def job_manifest(
    name: str,
    *,
    sha: str,
    commands: Sequence[str],
    configmaps: Sequence[str],
    source_sha256: str,
    password: str,
    settings: PodSettings,
    timeout_s: float,
    labels: Mapping[str, str],
) -> dict[str, Any]:
    """The ``batch/v1`` Job (camelCase, as sent to the API server)."""
    argvs = [shlex.split(c) for c in commands]
    env = {
        "HOME": HOME,
        "TMPDIR": "/tmp",
        "npm_config_cache": f"{HOME}/.npm",
        "CI": "true",
        "NODE_ENV": "test",
        "LANG": "C.UTF-8",
        "TZ": "UTC",
        **TEST_ENV,
        **services_env(password),
    }
    if settings.npm_registry:
        env["npm_config_registry"] = settings.npm_registry
    pod_labels = {"app.kubernetes.io/name": APP_LABEL, "app.kubernetes.io/part-of": "twinme-ops"}
    pod_labels.update({"twinme.ai/commit": sha, **labels})
    empty = {"emptyDir": {}}
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 5,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumes": [
            {
                "name": "source",
                "projected": {"sources": [{"configMap": {"name": cm}} for cm in configmaps]},
            },
            *({"name": v, **empty} for v in ("workspace", "home", "tmp", "pg-data", "pg-run")),
            *({"name": v, **empty} for v in ("pg-tmp", "pg-init", "redis-data")),
        ],
        "initContainers": [
            {
                "name": SOURCE_CONTAINER,
                "image": settings.test_image,
                "command": ["sh", "-c", _SOURCE_UNPACK],
                "env": _env({"SOURCE_SHA256": source_sha256, "SOURCE_COMMIT": sha}),
                "securityContext": restricted(NODE_UID),
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                "volumeMounts": [
                    {"name": "source", "mountPath": SOURCE_DIR, "readOnly": True},
                    {"name": "workspace", "mountPath": WORKSPACE},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            },
            {
                "name": POSTGRES_CONTAINER,
                "image": settings.postgres_image,
                "restartPolicy": "Always",
                "command": ["sh", "-c", _POSTGRES_START],
                "env": _env(
                    {
                        "APP_TESTS_PASSWORD": password,
                        "APP_TESTS_INIT_SQL": INIT_SQL,
                        "POSTGRES_DB": "postgres",
                    }
                ),
                "securityContext": restricted(POSTGRES_UID),
                "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
                "startupProbe": {
                    "exec": {"command": ["pg_isready", "-h", "127.0.0.1", "-U", APP_ROLE]},
                    "periodSeconds": 1,
                    "failureThreshold": 120,
                },
                "volumeMounts": [
                    {"name": "pg-data", "mountPath": "/var/lib/postgresql"},
                    {"name": "pg-run", "mountPath": "/var/run/postgresql"},
                    {"name": "pg-tmp", "mountPath": "/tmp"},
                    {"name": "pg-init", "mountPath": "/docker-entrypoint-initdb.d"},
                ],
            },
            {
                "name": REDIS_CONTAINER,
                "image": settings.redis_image,
                "restartPolicy": "Always",
                "args": ["redis-server", "--bind", "127.0.0.1", "--port", "6379", "--save", ""]
                + ["--appendonly", "no"],
                "securityContext": restricted(REDIS_UID),
                "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                "startupProbe": {
                    "exec": {"command": ["redis-cli", "-h", "127.0.0.1", "ping"]},
                    "periodSeconds": 1,
                    "failureThreshold": 60,
                },
                "volumeMounts": [{"name": "redis-data", "mountPath": "/data"}],
            },
        ],
        "containers": [
            {
                "name": TESTS_CONTAINER,
                "image": settings.test_image,
                "workingDir": WORKSPACE,
                "command": ["node", "-e", RUNNER_JS, json.dumps(argvs), str(int(timeout_s * 1000))],
                "env": _env(env),
                "securityContext": restricted(NODE_UID),
                "resources": {k: dict(v) for k, v in settings.resources.items()},
                "volumeMounts": [
                    {"name": "workspace", "mountPath": WORKSPACE},
                    {"name": "home", "mountPath": HOME},
                    {"name": "tmp", "mountPath": "/tmp"},
                ],
            }
        ],
    }
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "labels": dict(pod_labels)},
        "spec": {
            "backoffLimit": 0,
            # the cluster stops the pod even if this process is gone
            "activeDeadlineSeconds": int(timeout_s * max(len(commands), 1)) + 300,
            "ttlSecondsAfterFinished": 3600,
            "template": {"metadata": {"labels": pod_labels}, "spec": pod_spec},
        },
    }


def _env(values: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in values.items()]


def archive_sha256(archive: bytes) -> str:
    return hashlib.sha256(archive).hexdigest()


@dataclass
class MarkerParser:
    """Rebuilds one :class:`CommandResult` per command from the runner's marker lines."""

    commands: Sequence[str]
    tail_lines: int = 20

    def __post_init__(self) -> None:
        self.results: list[CommandResult] = []
        self.current: int | None = None
        self._tail: list[str] = []

    def feed(self, line: str) -> bool:
        """Take one log line; whether it is a marker (not to be shown)."""
        if not line.startswith(MARKER):
            self._tail = [*self._tail, line][-self.tail_lines :]
            return False
        words = line[len(MARKER) :].split()
        try:
            if words[0] == "begin":
                self.current, self._tail = int(words[1]), []
            elif words[0] == "end" and self.current is not None and self.current == int(words[1]):
                code, ms = int(words[2]), int(words[3])
                timed_out = words[4:5] == ["timeout"]
                command = self.commands[self.current]
                self.results.append(
                    CommandResult(command, code, ms / 1000, tuple(self._tail), timed_out)
                )
                self.current = None
        except (IndexError, ValueError):
            return False
        return True

    def outcome(self, exit_code: int | None, reason: str = "") -> tuple[list[CommandResult], int]:
        """(results, index of the failed one or -1) given the container's exit code."""
        results = list(self.results)
        if exit_code == 0 and len(results) == len(self.commands) and all(r.ok for r in results):
            return results, -1
        failed = next((i for i, r in enumerate(results) if not r.ok), None)
        if failed is not None:
            return results[: failed + 1], failed
        # the container ended (or was stopped) inside a command, or lied with its markers
        index = (
            self.current if self.current is not None else min(len(results), len(self.commands) - 1)
        )
        tail = tuple([*self._tail, reason] if reason else self._tail)
        code = exit_code if exit_code not in (None, 0) else 1
        results = results[:index] + [CommandResult(self.commands[index], code, 0.0, tail)]
        return results, index
