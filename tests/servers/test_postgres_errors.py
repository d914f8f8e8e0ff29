"""A connection PostgreSQL refuses says why and what to fix, never with the password."""

from __future__ import annotations

import pytest

from twinme_ops.scratch.postgres import PostgresServer
from twinme_ops.servers.postgres import PostgresError, PostgresResource

WRONG = "Wr0ng-Passw0rd-9d1e"


def _connect(url: str) -> str:
    with pytest.raises(PostgresError) as info, PostgresResource(url=url).get_connection():
        pass
    return str(info.value)


def test_a_wrong_password_names_database_url(pg_password_server: PostgresServer) -> None:
    url = pg_password_server.url().replace("postgres@", f"postgres:{WRONG}@")
    message = _connect(url)
    assert "password authentication failed" in message
    assert "Fix: check the user and password in DATABASE_URL" in message
    assert WRONG not in message


def test_a_missing_database_names_it(pg_password_server: PostgresServer) -> None:
    url = pg_password_server.url("no_such_db", with_password=True)
    message = _connect(url)
    assert 'database "no_such_db" does not exist' in message
    assert "Fix: check the database name in DATABASE_URL" in message
    assert str(pg_password_server.password) not in message


def test_an_unreachable_server_says_so(pg_password_server: PostgresServer) -> None:
    url = pg_password_server.url(with_password=True).replace(f":{pg_password_server.port}/", ":1/")
    message = _connect(url)
    assert "Fix: check that the server is running and reachable" in message
