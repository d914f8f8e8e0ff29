"""Redis: the resource the operations act on, and an RDB snapshot over the replication protocol.

This is what ``redis-cli --rdb`` does: the server forks, writes a point-in-time RDB and sends it
to us as if we were a replica. It needs neither ``CONFIG`` nor ``BGSAVE`` access (both may be
renamed away in production) nor access to the server's disk.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import dagster as dg
from pydantic import Field

from twinme_ops.common.redact import redact, redact_url, register_secret, register_secrets_in
from twinme_ops.servers import redis_sentinel
from twinme_ops.servers.redis_sentinel import RedisSentinelError, SnapshotSource

if TYPE_CHECKING:
    import redis

READ_CHUNK = 1 << 20
EOF_MARK_LEN = 40


class RedisSnapshotError(RuntimeError):
    """A Redis operation failed; the message names the server (redacted) and the fix."""


@dataclass
class RedisFacts:
    """What the server held when the snapshot was requested."""

    redis_version: str
    keys: dict[str, int] = field(default_factory=dict)
    expires: dict[str, int] = field(default_factory=dict)
    used_memory: int = 0
    source: str = ""  # behind Sentinel: "replica host:port" or "primary host:port"

    @property
    def total_keys(self) -> int:
        return sum(self.keys.values())


class RedisResource(dg.ConfigurableResource):
    """The Redis server that TwinMe runs on (``url``). Locally, ``defs/resources.py`` gives a
    subclass whose empty ``url`` means the embedded sandbox."""

    url: str = Field(
        default="",
        description="redis://[user:password@]host:port/db, or with Sentinel "
        "redis+sentinel://:password@host:26379/mymaster/db, from REDIS_URL. Empty, locally: "
        "the sandbox.",
    )
    socket_timeout_s: float = Field(
        default=60.0, description="Socket timeout; the server sends keep-alives while it forks."
    )

    def configured_url(self) -> str:
        """The URL as configured (the local subclass starts the sandbox for an empty one)."""
        if not self.url.strip():
            raise RedisSnapshotError(
                "no Redis to operate on. Fix: set REDIS_URL (redis://:password@host:6379/0)"
            )
        return self.url

    def resolved_url(self) -> str:
        """The URL to use (the raw value checked, its secrets registered first). With a
        Sentinel URL: the current primary's ``redis://`` URL, asked of the Sentinels."""
        url = self.configured_url()
        if redis_sentinel.is_sentinel_url(url):
            try:
                return redis_sentinel.primary_url(url)
            except RedisSentinelError as exc:
                raise RedisSnapshotError(str(exc)) from None
        # the raw value's secrets first: whatever echoes it below (or redis-py) is masked
        register_secrets_in(url)
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 (raises, quoting it, on a port that is not a number)
        except ValueError:
            raise RedisSnapshotError(malformed_url_message(url)) from None
        misplaced = "@" in parts.path + parts.query + parts.fragment
        if parts.scheme not in ("redis", "rediss") or not parts.hostname or misplaced:
            raise RedisSnapshotError(malformed_url_message(url))
        if parts.password:
            register_secret(unquote(parts.password))
        return url

    def describe(self) -> str:
        url = self.configured_url()
        if redis_sentinel.is_sentinel_url(url):
            redis_sentinel.parse_sentinel_url(url)  # registers its password first
            return redact_url(url)
        return redact_url(self.resolved_url())

    def snapshot_source(self) -> tuple[str, SnapshotSource | None]:
        """``(url, source)`` a backup reads: with Sentinel, a replica in sync when there is
        one (else the primary) and why; otherwise the configured server and None."""
        url = self.configured_url()
        if not redis_sentinel.is_sentinel_url(url):
            return self.resolved_url(), None
        try:
            source = redis_sentinel.snapshot_address(url)
        except RedisSentinelError as exc:
            raise RedisSnapshotError(str(exc)) from None
        parsed = redis_sentinel.parse_sentinel_url(url)
        return parsed.server_url(source.host, source.port), source

    def get_client(self, url: str | None = None) -> redis.Redis:
        """A redis-py client (bytes responses) of ``url``, by default :meth:`resolved_url`."""
        import redis

        return redis.Redis.from_url(
            url or self.resolved_url(),
            socket_timeout=self.socket_timeout_s,
            socket_connect_timeout=10,
        )

    def facts(self, url: str | None = None) -> RedisFacts:
        """Version and per-database key counts (``INFO``, which works when CONFIG is renamed)
        of ``url``, by default :meth:`resolved_url`."""
        import redis

        client = self.get_client(url)
        try:
            server = client.info("server")
            keyspace = client.info("keyspace")
            memory = client.info("memory")
        except redis.RedisError as exc:
            raise RedisSnapshotError(redis_error_message(self.describe(), exc)) from None
        finally:
            client.close()
        facts = RedisFacts(
            redis_version=str(server.get("redis_version", "unknown")),
            used_memory=int(memory.get("used_memory", 0)),
        )
        for db, info in sorted(keyspace.items()):
            if isinstance(info, dict):
                facts.keys[db] = int(info.get("keys", 0))
                facts.expires[db] = int(info.get("expires", 0))
        return facts


def malformed_url_message(url: str) -> str:
    """Why ``REDIS_URL`` was refused and how to write it; the password is masked."""
    return (
        f"REDIS_URL is not a Redis URL: got {redact(url.strip())!r}. Fix: write it as "
        "redis://:password@host:6379/0 (or rediss:// for TLS; percent-encode @ : / # ? and "
        "spaces in the password, e.g. @ as %40)"
    )


def redis_error_message(where: str, exc: BaseException) -> str:
    """An actionable, secret-free message for a failed Redis call."""
    text = redact(exc)
    low = text.lower()
    if "auth" in low or "password" in low or "noperm" in low:
        fix = "check the password (and user) in REDIS_URL"
    else:
        fix = "check that Redis is running and reachable at REDIS_URL (host, port, firewall)"
    return f"Redis at {where} failed: {text}. Fix: {fix}."


class _Conn:
    """A raw RESP connection: just enough protocol for AUTH, REPLCONF and SYNC."""

    def __init__(self, url: str, timeout: float) -> None:
        parts = urlsplit(url)
        self.where = redact_url(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 6379
        try:
            self.sock = socket.create_connection((host, port), timeout=10)
        except OSError as exc:
            raise RedisSnapshotError(redis_error_message(self.where, exc)) from None
        self.sock.settimeout(timeout)
        self.buf = b""
        if parts.scheme == "rediss":
            import ssl

            self.sock = ssl.create_default_context().wrap_socket(self.sock, server_hostname=host)
        if parts.password:
            user = unquote(parts.username) if parts.username else None
            args = (
                ["AUTH", user, unquote(parts.password)]
                if user
                else ["AUTH", unquote(parts.password)]
            )
            reply = self.command(*args)
            if not reply.startswith(b"+"):
                raise RedisSnapshotError(
                    f"Redis at {self.where} refused authentication: "
                    f"{redact(reply.decode(errors='replace'))}. Fix: check REDIS_URL's password."
                )

    def send(self, *args: str) -> None:
        out = [f"*{len(args)}\r\n".encode()]
        for a in args:
            b = a.encode()
            out.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.sock.sendall(b"".join(out))

    def _fill(self) -> None:
        data = self.sock.recv(READ_CHUNK)
        if not data:
            raise RedisSnapshotError(
                f"Redis at {self.where} closed the connection during the snapshot. Fix: check "
                "the server log (replication denied? out of memory for the fork?) and re-run."
            )
        self.buf += data

    def readline(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def command(self, *args: str) -> bytes:
        self.send(*args)
        return self.readline()

    def close(self) -> None:
        with suppress(OSError):
            self.sock.close()


@contextmanager
def rdb_snapshot(res: RedisResource) -> Iterator[tuple[Iterator[bytes], RedisFacts]]:
    """Yield ``(chunks, facts)``: the RDB as streamed by the server, and its key counts.

    The key counts are read with INFO just before SYNC. The chunks iterator validates the RDB
    header and the transfer length, and raises :class:`RedisSnapshotError` on a short transfer.
    """
    url, source = res.snapshot_source()
    facts = res.facts(url)
    facts.source = source.label() if source else ""
    conn = _Conn(url, res.socket_timeout_s)
    try:
        # Redis >= 7 can send the RDB alone instead of streaming replication afterwards
        conn.command("REPLCONF", "rdb-only", "1")
        conn.send("SYNC")

        def chunks() -> Iterator[bytes]:
            # The server sends bare newlines as keep-alives while it forks and saves
            while True:
                while not conn.buf:
                    conn._fill()
                if conn.buf.startswith(b"\n"):
                    conn.buf = conn.buf[1:]
                    continue
                break
            header = conn.readline()
            if header.startswith(b"-"):
                raise RedisSnapshotError(
                    f"Redis at {conn.where} refused SYNC: {header.decode(errors='replace')}. "
                    "Fix: the user in REDIS_URL needs the SYNC permission (ACL +sync)."
                )
            if not header.startswith(b"$"):
                raise RedisSnapshotError(
                    f"unexpected SYNC reply from {conn.where}: {header[:40]!r}"
                )
            first = True
            if header.startswith(b"$EOF:"):
                mark = header[5:]
                tail = b""
                while True:
                    data, conn.buf = tail + conn.buf, b""
                    if data.endswith(mark):
                        data = data[: -len(mark)]
                        if data:
                            yield _check_magic(data, first, conn.where)
                        return
                    tail = data[-EOF_MARK_LEN:]
                    body = data[:-EOF_MARK_LEN]
                    if body:
                        yield _check_magic(body, first, conn.where)
                        first = False
                    conn._fill()
            remaining = int(header[1:])
            while remaining > 0:
                if not conn.buf:
                    conn._fill()
                data, conn.buf = conn.buf[:remaining], conn.buf[remaining:]
                remaining -= len(data)
                yield _check_magic(data, first, conn.where)
                first = False

        yield _explained(chunks(), res, source), facts
    finally:
        conn.close()


def _explained(
    chunks: Iterator[bytes], res: RedisResource, source: SnapshotSource | None
) -> Iterator[bytes]:
    """``chunks``, with a broken transfer behind Sentinel explained (a failover, or not)."""
    if source is None:
        yield from chunks
        return
    try:
        yield from chunks
    except (RedisSnapshotError, OSError) as exc:
        message = redis_sentinel.failover_message(res.configured_url(), source, exc)
        raise RedisSnapshotError(message) from None


def _check_magic(data: bytes, first: bool, where: str) -> bytes:
    if first and not data.startswith(b"REDIS"):
        raise RedisSnapshotError(f"Redis at {where} sent something that is not an RDB file")
    return data


def redis_cli_version() -> dict[str, Any]:
    """Versions recorded in the manifest (the protocol client is built in)."""
    import redis

    return {"client": "twinme_ops RESP SYNC client", "redis-py": redis.__version__}
