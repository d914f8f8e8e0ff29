"""Real PostgreSQL / Redis servers on 127.0.0.1 and the embedded sandbox, for every test.

Every server a fixture starts is stopped by its finalizer. Server data lives under a temporary
directory that the ``twinme-pg`` system user can traverse: pytest's own ``/tmp/pytest-of-root``
is 0700, and PostgreSQL, which refuses to run as root, could not reach its data directory there.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from twinme_ops.sandbox.servers import SandboxInfo, ensure_sandbox, stop_sandbox
from twinme_ops.scratch.postgres import PostgresServer
from twinme_ops.scratch.redis import RedisServer

PG_TEST_PASSWORD = "pg-test-Passw0rd"
REDIS_TEST_PASSWORD = "redis-test-Passw0rd"


@pytest.fixture(scope="session")
def server_tmp_root() -> Iterator[Path]:
    """A session-wide directory for server data, traversable by the PostgreSQL system user."""
    root = Path(tempfile.mkdtemp(prefix="twinme-tests-"))
    root.chmod(0o755)  # mkdtemp makes it 0700
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def server_tmp(server_tmp_root: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh per-test directory under :func:`server_tmp_root` (like ``tmp_path``)."""
    name = "".join(c if c.isalnum() else "_" for c in request.node.name)[:40]
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=server_tmp_root))
    path.chmod(0o755)
    return path


def _module_dir(root: Path, request: pytest.FixtureRequest, what: str) -> Path:
    module = request.module.__name__.rsplit(".", 1)[-1]
    path = Path(tempfile.mkdtemp(prefix=f"{module}-{what}-", dir=root))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="module")
def pg_server(server_tmp_root: Path, request: pytest.FixtureRequest) -> Iterator[PostgresServer]:
    """A fresh PostgreSQL 18 server (trust auth on loopback) per test module."""
    server = PostgresServer.start(_module_dir(server_tmp_root, request, "pg") / "data")
    request.addfinalizer(server.stop)
    yield server


@pytest.fixture(scope="module")
def pg_password_server(
    server_tmp_root: Path, request: pytest.FixtureRequest
) -> Iterator[PostgresServer]:
    """A PostgreSQL server whose ``postgres`` role needs :data:`PG_TEST_PASSWORD` over TCP."""
    server = PostgresServer.start(
        _module_dir(server_tmp_root, request, "pgpw") / "data", password=PG_TEST_PASSWORD
    )
    request.addfinalizer(server.stop)
    yield server


@pytest.fixture(scope="module")
def redis_server(server_tmp_root: Path, request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """A fresh redis-server (no persistence, no password) per test module."""
    server = RedisServer.start(_module_dir(server_tmp_root, request, "redis"))
    request.addfinalizer(server.stop)
    yield server


@pytest.fixture(scope="session")
def sandbox(server_tmp_root: Path) -> Iterator[SandboxInfo]:
    """The embedded sandbox on a temporary ``TWINME_HOME``, shared by the session, then stopped.

    ``TWINME_HOME`` points at it for the rest of the session, so code that falls back to the
    sandbox never starts a second one in the working directory.
    """
    home = server_tmp_root / "twinme-home"
    home.mkdir(mode=0o755)
    patch = pytest.MonkeyPatch()
    patch.setenv("TWINME_HOME", str(home))
    try:
        info = ensure_sandbox(home)
        yield info
    finally:
        stop_sandbox(home)
        patch.undo()
