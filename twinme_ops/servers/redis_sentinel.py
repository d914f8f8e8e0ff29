"""Redis behind Sentinel: parse ``redis+sentinel://`` URLs and find the primary and a replica.

``REDIS_URL=redis+sentinel://[user:]password@host:26379[,host2:26379...]/service[/db]`` names
the Sentinels and the monitored service (``mymaster``), not a Redis server. Each operation asks
the Sentinels which server to use, through redis-py's :class:`redis.sentinel.Sentinel`:

- writes (restores, recovery, tuning) go to the current primary (:func:`primary_address`);
- snapshots (backups) read a replica whose link to the primary is up and that is not loading,
  the one furthest ahead, and fall back to the primary when there is none
  (:func:`snapshot_address`).

The password is Redis's (``requirepass``/``masterauth``) and the Sentinels' (``requirepass`` in
sentinel.conf; deploy/redis/ gives both the same one). No Dagster in this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from twinme_ops.common.redact import redact, register_secret, register_secrets_in

if TYPE_CHECKING:
    from redis.sentinel import Sentinel

SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
_EXAMPLE = "redis+sentinel://:password@redis-sentinel:26379/mymaster/0"


class RedisSentinelError(RuntimeError):
    """The Sentinels could not be asked, or know no usable primary; the message says the fix."""


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int
    username: str | None
    password: str | None

    def server_url(self, host: str, port: int) -> str:
        """A ``redis://`` URL of one Redis server of the service, with the same credentials."""
        auth = ""
        if self.password is not None:
            user = quote(self.username, safe="") if self.username else ""
            auth = f"{user}:{quote(self.password, safe='')}@"
        return f"redis://{auth}{host}:{port}/{self.db}"


@dataclass(frozen=True)
class SnapshotSource:
    """The server a snapshot reads, and why it was chosen."""

    host: str
    port: int
    role: str  # "replica" or "primary"
    primary: tuple[str, int]
    reason: str

    def label(self) -> str:
        return f"{self.role} {self.host}:{self.port}"


def is_sentinel_url(url: str) -> bool:
    return url.strip().lower().startswith(SCHEME + "://")


def _bad(url: str, problem: str) -> RedisSentinelError:
    return RedisSentinelError(
        f"REDIS_URL is not a usable Sentinel URL ({problem}): got {redact(url.strip())!r}. Fix: "
        f"write it as {_EXAMPLE} (several Sentinels: host1:26379,host2:26379; the database "
        "number is optional; percent-encode @ : / # ? and spaces in the password)"
    )


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse ``url``; its password is registered as a secret before anything can echo it."""
    register_secrets_in(url)
    text = url.strip()
    if not is_sentinel_url(text):
        raise _bad(url, f"the scheme must be {SCHEME}://")
    rest = text[len(SCHEME) + 3 :]
    if "?" in rest or "#" in rest:
        raise _bad(url, "it has a query or fragment, which nothing reads")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, pw = userinfo.partition(":")
        if not colon:
            raise _bad(url, "the credentials have no ':' before the password")
        password = unquote(pw)
        username = unquote(user) or None
        register_secret(password)
    sentinels = []
    for item in hosts.split(","):
        host, colon, port_text = item.strip().rpartition(":")
        if not colon:
            host, port_text = item.strip(), str(DEFAULT_SENTINEL_PORT)
        if not host or "@" in host:
            raise _bad(url, f"{redact(item)!r} is not host:port")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise _bad(url, f"the Sentinel port {port_text!r} is not a port number")
        sentinels.append((host.strip("[]"), int(port_text)))
    parts = [p for p in path.split("/") if p]
    if not parts:
        raise _bad(url, "no service name: the path must name the monitored service")
    if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise _bad(url, "the path must be /service or /service/db, db a number")
    db = int(parts[1]) if len(parts) == 2 else 0
    return SentinelURL(tuple(sentinels), unquote(parts[0]), db, username, password)


def _where(parsed: SentinelURL) -> str:
    hosts = ",".join(f"{h}:{p}" for h, p in parsed.sentinels)
    return f"Sentinel {hosts} (service {parsed.service!r})"


def connect(parsed: SentinelURL, timeout_s: float = 5.0) -> Sentinel:
    """A redis-py Sentinel client; data-node connections carry the URL's credentials."""
    from redis.sentinel import Sentinel

    kwargs: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    if parsed.password is not None:
        kwargs.update(password=parsed.password, username=parsed.username)
    return Sentinel(
        list(parsed.sentinels),
        sentinel_kwargs=kwargs,
        password=kwargs.get("password"),
        username=kwargs.get("username"),
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )


def primary_address(url: str, timeout_s: float = 5.0) -> tuple[str, int]:
    """The current primary's ``(host, port)``, as the first Sentinel that knows it reports it."""
    import redis

    parsed = parse_sentinel_url(url)
    problems: list[str] = []
    auth = unknown = down = 0
    for node in connect(parsed, timeout_s).sentinels:
        kw = node.connection_pool.connection_kwargs
        where = f"{kw.get('host')}:{kw.get('port')}"
        try:
            masters: dict[str, Any] = node.sentinel_masters()  # type: ignore[assignment]
        except redis.AuthenticationError as exc:
            auth += 1
            problems.append(f"{where}: {redact(exc)}")
            continue
        except redis.RedisError as exc:
            text = redact(exc)
            auth += "auth" in text.lower() or "noperm" in text.lower()
            problems.append(f"{where}: {text}")
            continue
        state = masters.get(parsed.service)
        if not state:
            unknown += 1
            problems.append(f"{where}: does not monitor {parsed.service!r}")
        elif state["is_odown"] or state["is_sdown"] or not state["is_master"]:
            down += 1
            problems.append(f"{where}: sees the primary down")
        else:
            return str(state["ip"]), int(state["port"])
    if auth:
        fix = (
            "check the password in REDIS_URL: it must be Redis's and the Sentinels' "
            "(requirepass in both redis.conf and sentinel.conf)"
        )
    elif unknown:
        fix = "check the service name in REDIS_URL's path (SENTINEL MASTERS lists it)"
    elif down:
        fix = "the primary is down and no failover has completed yet: check the Redis pods"
    else:
        fix = "check that the Sentinels run and are reachable at REDIS_URL's hosts and ports"
    raise RedisSentinelError(
        f"{_where(parsed)} gave no primary ({'; '.join(problems)}). Fix: {fix}."
    )


def primary_url(url: str, timeout_s: float = 5.0) -> str:
    """``redis://`` URL of the current primary (restores and recovery write there)."""
    parsed = parse_sentinel_url(url)
    return parsed.server_url(*primary_address(url, timeout_s))


def _replica_state(
    parsed: SentinelURL, host: str, port: int, timeout_s: float
) -> dict[str, Any] | None:
    """``INFO replication`` of a replica, or None when it cannot be read."""
    import redis

    client = redis.Redis.from_url(
        parsed.server_url(host, port),
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
    )
    try:
        info: dict[str, Any] = client.info("replication")  # type: ignore[assignment]
        persistence: dict[str, Any] = client.info("persistence")  # type: ignore[assignment]
    except redis.RedisError:
        return None
    finally:
        client.close()
    info["loading"] = int(persistence.get("loading", 0))
    return info


def snapshot_address(url: str, timeout_s: float = 5.0) -> SnapshotSource:
    """Where a backup should read: a healthy replica of the current primary, else the primary.

    A replica qualifies when the Sentinels do not flag it down and it says itself that it
    replicates from that primary with its link up, no sync in progress and no load running;
    the one with the highest replication offset wins.
    """
    import redis

    parsed = parse_sentinel_url(url)
    primary = primary_address(url, timeout_s)
    sentinel = connect(parsed, timeout_s)
    candidates: list[tuple[int, str, int]] = []
    skipped: list[str] = []
    listed: list[dict[str, Any]] = []
    for node in sentinel.sentinels:
        try:
            listed = node.sentinel_slaves(parsed.service)
            break
        except redis.RedisError:
            continue
    for replica in listed:
        host, port = str(replica["ip"]), int(replica["port"])
        if replica.get("is_odown") or replica.get("is_sdown") or replica.get("is_disconnected"):
            skipped.append(f"{host}:{port} flagged down by Sentinel")
            continue
        state = _replica_state(parsed, host, port, timeout_s)
        if state is None:
            skipped.append(f"{host}:{port} unreachable")
            continue
        ok = (
            state.get("role") == "slave"
            and str(state.get("master_link_status")) == "up"
            and not int(state.get("master_sync_in_progress", 0))
            and not state["loading"]
            and int(state.get("master_port", 0)) == primary[1]
        )
        if not ok:
            skipped.append(f"{host}:{port} not in sync with the primary")
            continue
        candidates.append((int(state.get("slave_repl_offset", 0)), host, port))
    if candidates:
        _, host, port = max(candidates)
        why = f"replica furthest ahead of {len(candidates)} in sync"
        return SnapshotSource(host, port, "replica", primary, why)
    why = "no replica in sync" + (f" ({'; '.join(skipped)})" if skipped else "")
    return SnapshotSource(primary[0], primary[1], "primary", primary, why)


def failover_message(url: str, source: SnapshotSource, cause: BaseException) -> str:
    """Why a snapshot broke off: a failover (the primary changed), or the server went away."""
    try:
        now = primary_address(url)
    except RedisSentinelError:
        now = None
    was = f"{source.primary[0]}:{source.primary[1]}"
    if now is not None and now != source.primary:
        return (
            f"the Redis snapshot from {source.label()} broke off: a Sentinel failover happened "
            f"during it (the primary was {was}, it is now {now[0]}:{now[1]}); the partial "
            f"snapshot was discarded ({redact(cause)}). Fix: re-run the backup: the next one "
            "reads the new topology."
        )
    return (
        f"the Redis snapshot from {source.label()} (primary {was}) broke off: {redact(cause)}. "
        "Fix: check that server's log (a restart, a role change, or memory for the fork) and "
        "re-run the backup."
    )
