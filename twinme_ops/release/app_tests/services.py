"""The throwaway PostgreSQL and Redis of a local app-test run, and how its commands reach them.

Started by :class:`~twinme_ops.release.app_tests.local.LocalAppTestRunner` inside the run's
network namespace (while ``npm ci`` downloads), as the user ``twinme-app-services``: PostgreSQL 18
with pgvector and pg_trgm created in database ``app_tests``, owned by the non-superuser role
``app_tests`` (it may create roles, not superusers; the superuser's password is never given out),
and Redis with neither persistence nor password, both on the namespace's 127.0.0.1.
"""

from __future__ import annotations

import os
import secrets
import shlex
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from twinme_ops.common.redact import redact
from twinme_ops.release.app_tests.isolation import SERVICES_USER, sandbox_user
from twinme_ops.release.app_tests.runner import AppTestsUnavailable
from twinme_ops.scratch.local import LOCALHOST, LocalServerError
from twinme_ops.scratch.postgres import PostgresServer
from twinme_ops.scratch.redis import RedisServer, redis_server_binary

APP_DATABASE = "app_tests"
APP_ROLE = "app_tests"
# a throwaway cluster needs no durability
_FAST_PG = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


@dataclass
class ThrowawayServices:
    """The PostgreSQL and Redis a test run may use, and how its commands reach them."""

    postgres: PostgresServer
    redis: RedisServer
    password: str

    def env(self) -> dict[str, str]:
        """What the offline commands get to reach them."""
        pg = self.postgres
        database = f"postgresql://{APP_ROLE}:{self.password}@{LOCALHOST}:{pg.port}/{APP_DATABASE}"
        redis = f"redis://{LOCALHOST}:{self.redis.port}/0"
        return {
            "DATABASE_URL": database,
            "TEST_DATABASE_URL": database,
            "REDIS_URL": redis,
            "TEST_REDIS_URL": redis,
            "PGHOST": LOCALHOST,
            "PGPORT": str(pg.port),
            "PGUSER": APP_ROLE,
            "PGPASSWORD": self.password,
            "PGDATABASE": APP_DATABASE,
        }

    def stop(self) -> None:
        self.redis.stop()
        self.postgres.stop(mode="immediate")


def start_services(work: Path, redis_prefix: Sequence[str] | None) -> ThrowawayServices:
    """Start the throwaway servers under ``work`` (call it where they must listen).

    ``redis_prefix``: the confinement Redis runs under (as root, None: Redis runs as this user).
    """
    superuser_password = secrets.token_urlsafe(24)
    postgres = PostgresServer.start(
        work / "pg" / "data",
        password=superuser_password,
        settings=_FAST_PG,
        system_user=SERVICES_USER,
    )
    try:
        password = secrets.token_hex(16)
        with postgres.connect() as conn:
            conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN CREATEDB CREATEROLE PASSWORD '{password}'")
            conn.execute(f"CREATE DATABASE {APP_DATABASE} OWNER {APP_ROLE}")
        # vector is not a trusted extension: created here, migrations' CREATE EXTENSION IF NOT
        # EXISTS then pass without superuser
        with postgres.connect(APP_DATABASE) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        redis_dir = work / "redis"
        redis_dir.mkdir(mode=0o700)
        binary, _ = redis_server_binary()
        if redis_prefix is not None:
            uid, gid = sandbox_user(SERVICES_USER)
            os.chown(redis_dir, uid, gid)
            binary = _confined_redis(work, binary, redis_prefix)
        redis = RedisServer.start(redis_dir, binary=binary)
    except BaseException:
        postgres.stop(mode="immediate")
        raise
    return ThrowawayServices(postgres, redis, password)


def _confined_redis(work: Path, real: str, prefix: Sequence[str]) -> str:
    """A redis-server stand-in that runs the real one confined, its config (root's) on stdin."""
    wrapper = work / "redis-server"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'[ "$1" = --version ] && exec {shlex.quote(real)} --version\n'
        f'exec {shlex.join([*prefix, real])} - < "$1"\n'
    )
    wrapper.chmod(0o755)
    return str(wrapper)


def ready(services: Future[ThrowawayServices]) -> ThrowawayServices:
    try:
        return services.result()
    except (LocalServerError, OSError) as exc:
        raise AppTestsUnavailable(
            redact(f"the tests' throwaway PostgreSQL/Redis did not start: {exc}")
        ) from None
