"""deploy/postgres/: the TwinMe API's PostgreSQL on CloudNativePG, checked before it is applied.

- Each CloudNativePG and Barman Cloud plugin object against its CustomResourceDefinition
  (schemas/cnpg/, CloudNativePG a95a534 and plugin-barman-cloud 0.14), strictly: an unknown field
  is an error (tests/support/crd_schema.py), where the API server would silently prune it. The
  CRDs' CEL rules and the operator's admission checks that concern these objects are evaluated
  (tests/support/cnpg_rules.py), and no field the CRDs mark deprecated is used.
- The core objects (Namespace, NetworkPolicies, the Secret templates) with kubernetes-validate,
  strict, for every Kubernetes version from 1.30; the PodMonitor against the fields of the
  Prometheus Operator's CRD it uses.
- Behaviour: three instances with a synchronous replica, the parameters equal to what
  database_tuning_job declares (computed from the code) and accepted by a real PostgreSQL 18 on
  which that job's drift check finds nothing, WAL archiving within a minute through the plugin
  into the backup bucket, 30 days of recovery window, a nightly base backup that never overlaps
  twinme_ops' own nightly jobs, no secret in a manifest, and every network path evaluated with
  deploy/app's and deploy/dagster's policies.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import kubernetes_validate
import pytest
import yaml

from tests.support.cnpg_rules import (
    CEL_RULES,
    FIXED_PARAMETERS,
    cluster_admission_errors,
    pg_size_bytes,
)
from tests.support.crd_schema import (
    cel_rules,
    crd_schemas,
    deprecated_fields,
    strict_schema,
    validation_errors,
)
from tests.support.kubernetes_versions import VERSIONS
from tests.support.network_policy import Endpoint, allowed, each_path
from twinme_ops.common.pgtools import pg_bin
from twinme_ops.common.quantity import parse_quantity
from twinme_ops.database.declared_state import DatabaseTuning
from twinme_ops.database.postgres.settings.cnpg import refuse_fixed
from twinme_ops.defs.database.assets import EXTENSIONS, PG_STEPS, wanted_settings
from twinme_ops.defs.resources import build_resources, settings_applier, wal_archive_resource
from twinme_ops.scratch.postgres import PostgresServer

REPO = Path(__file__).resolve().parents[2]
POSTGRES_DIR = REPO / "deploy" / "postgres"
SECRETS_TEMPLATE = POSTGRES_DIR / "templates" / "secrets.template.yaml"
# The CRDs live beside the repository (../shared/schemas/cnpg, the workspace's shared schemas)
_BESIDE = Path(__file__).resolve().parents[3] / "shared" / "schemas" / "cnpg"
CRD_DIR = Path(os.environ.get("TWINME_CNPG_CRDS", str(_BESIDE)))
NAMESPACE = "twinme-postgres"
PLUGIN = "barman-cloud.cloudnative-pg.io"
CORE_KINDS = {"Namespace", "NetworkPolicy", "Secret", "Deployment"}
HEARTBEAT = POSTGRES_DIR / "70-heartbeat.yaml"
# the heartbeat runs beside the code location, whose image and Secret it shares
HEARTBEAT_NAMESPACE = "dagster"
# the time a nightly base backup is given to finish (50Gi of data, compressed on one core)
BASE_BACKUP_BUDGET = timedelta(hours=2)
# twinme_ops' nightly jobs that load the database: a base backup must not overlap them
DATABASE_JOBS = ("base_backup_schedule", "nightly_backup_schedule", "database_tuning_schedule")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def applied_files() -> list[Path]:
    """What ``kubectl apply -f deploy/postgres/`` reads, in its order."""
    return sorted(p for p in POSTGRES_DIR.iterdir() if p.is_file() and p.suffix == ".yaml")


def applied_objects() -> list[dict[str, Any]]:
    return [doc for path in applied_files() for doc in _docs(path)]


def one(kind: str) -> dict[str, Any]:
    found = [doc for doc in applied_objects() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/postgres/, found {len(found)}"
    return found[0]


@cache
def schemas() -> dict[tuple[str, str], dict[str, Any]]:
    assert CRD_DIR.is_dir(), (
        f"no CloudNativePG CRDs in {CRD_DIR}: set TWINME_CNPG_CRDS to a folder holding them"
    )
    return crd_schemas(CRD_DIR)


def custom_objects() -> list[dict[str, Any]]:
    return [d for d in applied_objects() if (d["apiVersion"], d["kind"]) in schemas()]


def _id(doc: dict[str, Any]) -> str:
    return f"{doc['kind']}/{doc['metadata']['name']}"


def cluster_spec() -> dict[str, Any]:
    return one("Cluster")["spec"]


def parameters() -> dict[str, str]:
    return cluster_spec()["postgresql"]["parameters"]


@cache
def code_location_env() -> dict[str, str]:
    """The code location's non-secret environment in production (deploy/dagster/values.yaml)."""
    values = yaml.safe_load((REPO / "deploy" / "dagster" / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    return {k: str(v) for k, v in deployment["env"].items()}


@pytest.fixture
def declared(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> DatabaseTuning:
    """The instance database_tuning_job declares in production: the code location's resources
    as it builds them, with production's TWINME_PG_* (none today: the code's defaults)."""
    for name in list(os.environ):
        if name.startswith("TWINME_"):
            monkeypatch.delenv(name)
    for name, value in code_location_env().items():
        if name.startswith("TWINME_PG_"):
            monkeypatch.setenv(name, value)
    monkeypatch.setenv("TWINME_HOME", str(tmp_path))
    tuning = build_resources()["database_tuning"]
    assert isinstance(tuning, DatabaseTuning)
    return tuning


# -- the objects against their schemas ---------------------------------------------------------


def test_every_object_is_known_and_in_the_namespace() -> None:
    """Each object has a schema here (a CRD, Kubernetes' own, or the PodMonitor's fields)."""
    objects = applied_objects()
    for doc in objects:
        known = (doc["apiVersion"], doc["kind"]) in schemas() or doc["kind"] in CORE_KINDS
        assert known or doc["kind"] == "PodMonitor", f"{_id(doc)}: no schema to check it"
        if doc["kind"] != "Namespace":
            in_heartbeat = doc in _docs(HEARTBEAT)
            wanted = HEARTBEAT_NAMESPACE if in_heartbeat else NAMESPACE
            assert doc["metadata"]["namespace"] == wanted, _id(doc)
    assert sorted(d["kind"] for d in custom_objects()) == [
        "Cluster",
        "Database",
        "ObjectStore",
        "ScheduledBackup",
    ]


@pytest.mark.parametrize("doc", custom_objects(), ids=_id)
def test_every_custom_object_matches_its_crd_strictly(doc: dict[str, Any]) -> None:
    schema = strict_schema(schemas()[(doc["apiVersion"], doc["kind"])])
    assert validation_errors(doc, schema) == []
    # metadata is an open object in a CRD: check it as the API server does, as an ObjectMeta
    wrapper = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}
    kubernetes_validate.validate(wrapper, VERSIONS[-1], strict=True)
    assert deprecated_fields(doc, schema) == []


TYPOS = [
    ("Cluster", ("spec", "plugins", 0), "isWALArchiver", "isWALArchver"),
    ("Cluster", ("spec", "postgresql", "synchronous"), "dataDurability", "dataDurabilty"),
    ("Cluster", ("spec", "affinity"), "podAntiAffinityType", "podAntiAfinityType"),
    ("ObjectStore", ("spec",), "retentionPolicy", "retentionPolicies"),
    ("ObjectStore", ("spec", "configuration", "wal"), "encryption", "encrypt"),
    ("ScheduledBackup", ("spec",), "pluginConfiguration", "pluginConfig"),
    ("Database", ("spec", "extensions", 1), "ensure", "ensured"),
]


@pytest.mark.parametrize(("kind", "where", "right", "typo"), TYPOS, ids=[t[3] for t in TYPOS])
def test_a_misspelt_field_is_rejected(
    kind: str, where: tuple[Any, ...], right: str, typo: str
) -> None:
    """The CRD as published accepts the typo (the API server would drop the field); the strict
    schema refuses it, naming it."""
    doc = copy.deepcopy(one(kind))
    node: Any = doc
    for key in where:
        node = node[key]
    node[typo] = node.pop(right)
    schema = schemas()[(doc["apiVersion"], kind)]
    assert validation_errors(doc, schema) == []
    errors = validation_errors(doc, strict_schema(schema))
    assert len(errors) == 1 and f"'{typo}' was unexpected" in errors[0], errors


def test_the_strict_schema_keeps_open_what_the_crd_keeps_open() -> None:
    schema = {
        "type": "object",
        "properties": {
            "properties": {"type": "object", "properties": {"a": {"type": "string"}}},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            "raw": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            "opts": {"type": "object", "default": {"x": 1}, "properties": {}},
        },
    }
    strict = strict_schema(schema)
    assert "additionalProperties" not in schema  # the original is left alone
    assert strict["additionalProperties"] is False
    assert set(strict["properties"]) == {"properties", "labels", "raw", "opts"}
    assert strict["properties"]["properties"]["additionalProperties"] is False
    assert strict["properties"]["opts"]["default"] == {"x": 1}
    doc = {"labels": {"any": "x"}, "raw": {"any": {"thing": 1}}, "properties": {"a": "b"}}
    assert validation_errors(doc, strict) == []
    assert validation_errors({"properties": {"b": "c"}}, strict) != []


@pytest.mark.parametrize("doc", custom_objects(), ids=_id)
def test_every_cel_rule_of_the_crds_holds(doc: dict[str, Any]) -> None:
    """The API server's CEL rules on the fields set (transition rules need an old object)."""
    rules = cel_rules(doc, schemas()[(doc["apiVersion"], doc["kind"])])
    for rule in [r for r in rules if not r.on_update_only]:
        assert rule.rule in CEL_RULES, f"{rule.path}: translate {rule.rule!r} in cnpg_rules.py"
        assert CEL_RULES[rule.rule](rule.value), f"{rule.path}: {rule.message}"


def test_the_operator_admits_the_cluster() -> None:
    assert cluster_admission_errors(one("Cluster")) == []
    broken = copy.deepcopy(one("Cluster"))
    spec = broken["spec"]
    spec["postgresql"]["parameters"]["synchronous_standby_names"] = "ANY 1 (a, b)"
    spec["postgresql"]["parameters"]["max_wal_size"] = "32GB"
    spec["resources"]["requests"]["memory"] = "128Mi"
    spec["postgresql"]["synchronous"]["number"] = 3
    assert cluster_admission_errors(broken) == [
        "synchronous.number must be less than the instances",
        "synchronous_standby_names=ANY 1 (a, b): can't set fixed configuration parameter",
        "memory request is lower than shared_buffers",
        "max_wal_size must be smaller than the WAL volume (20Gi)",
    ]


@pytest.mark.parametrize("version", VERSIONS)
def test_the_core_objects_are_valid_kubernetes(version: str) -> None:
    core = [d for d in applied_objects() if d["kind"] in CORE_KINDS]
    assert {d["kind"] for d in core} == {"Namespace", "NetworkPolicy", "Deployment"}
    for doc in [*core, *_docs(SECRETS_TEMPLATE)]:
        kubernetes_validate.validate(doc, version, strict=True)


# The PodMonitor's fields this folder may use, transcribed from the Prometheus Operator's CRD
# (example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml, operator 0.91):
# no CRD of it is available offline, and an unknown field must fail here too.
_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": {"type": "object"}},
    },
}
PODMONITOR_FIELDS = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PodMonitor"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "podMetricsEndpoints"],
            "properties": {
                "selector": _SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "podMetricsEndpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                        },
                    },
                },
            },
        },
    },
}


def test_the_podmonitor_scrapes_the_instances_metrics_port() -> None:
    monitor = one("PodMonitor")
    assert validation_errors(monitor, PODMONITOR_FIELDS) == []
    wrapper = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": monitor["metadata"]}
    kubernetes_validate.validate(wrapper, VERSIONS[-1], strict=True)
    # the labels and the port name CloudNativePG gives the instance pods (pkg/specs/pods.go)
    instance = {
        "cnpg.io/cluster": one("Cluster")["metadata"]["name"],
        "cnpg.io/podRole": "instance",
    }
    assert monitor["spec"]["selector"]["matchLabels"] == instance
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    # the deprecated operator-made PodMonitor is not used as well
    assert "enablePodMonitor" not in cluster_spec().get("monitoring", {})


# -- what `kubectl apply -f deploy/postgres/` does ---------------------------------------------


def test_apply_order_and_what_is_left_out() -> None:
    kinds = [doc["kind"] for doc in applied_objects()]
    assert kinds[0] == "Namespace" and kinds.count("Namespace") == 1
    assert one("Namespace")["metadata"]["name"] == NAMESPACE
    assert one("Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == (
        "restricted"
    )
    # the store exists when the cluster's plugin first looks it up; the cluster before what
    # refers to it
    assert kinds.index("ObjectStore") < kinds.index("Cluster")
    assert kinds.index("Cluster") < min(kinds.index("Database"), kinds.index("ScheduledBackup"))
    # no Secret (an apply would blank the real ones) and no PodDisruptionBudget (the operator's)
    assert "Secret" not in kinds and "PodDisruptionBudget" not in kinds
    assert SECRETS_TEMPLATE.parent != POSTGRES_DIR


# -- the heartbeat writer (70-heartbeat.yaml) --------------------------------------------------


def test_the_heartbeat_writer_runs_the_code_locations_image_with_its_database_url() -> None:
    deployment, policy = _docs(HEARTBEAT)
    assert deployment["kind"] == "Deployment" and policy["kind"] == "NetworkPolicy"
    for version in VERSIONS:
        kubernetes_validate.validate(deployment, version, strict=True)
        kubernetes_validate.validate(policy, version, strict=True)
    values = yaml.safe_load((REPO / "deploy" / "dagster" / "values.yaml").read_text())
    (code,) = values["dagster-user-deployments"]["deployments"]
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    image = code["image"]
    assert container["image"] == f"{image['repository']}:{image['tag']}"
    assert container["command"][-2:] == ["twinme-ops", "heartbeat"]
    env = {e["name"]: e for e in container["env"]}
    # DATABASE_URL by reference to the code location's Secret, never a value
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "twinme-ops-env",
        "key": "DATABASE_URL",
    }
    assert {"name": "twinme-ops-env"} in code["envSecrets"]
    assert float(env["TWINME_HEARTBEAT_INTERVAL_S"]["value"]) == 5
    # Pod Security "restricted"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    ctx = container["securityContext"]
    assert ctx["allowPrivilegeEscalation"] is False and ctx["capabilities"]["drop"] == ["ALL"]
    assert ctx["readOnlyRootFilesystem"] is True
    resources = container["resources"]
    assert resources["requests"]["cpu"] and resources["limits"]["memory"]
    assert parse_quantity(resources["limits"]["memory"]) <= 256 * 2**20
    # its network: PostgreSQL out, nothing in; the instances let it in on 5432
    labels = spec["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in policy["spec"]
    assert [p["port"] for e in policy["spec"]["egress"] for p in e["ports"]] == [5432]
    pod_endpoint = Endpoint(HEARTBEAT_NAMESPACE, labels, "10.244.0.16")
    assert allowed(all_policies(), pod_endpoint, PRIMARY, 5432)
    assert allowed(all_policies(), pod_endpoint, DNS, 53, "UDP")
    for port in (443, 8000, 9187):
        assert not allowed(all_policies(), pod_endpoint, PRIMARY, port)
    assert not allowed(all_policies(), pod_endpoint, S3, 443)
    assert not allowed(all_policies(), RUN, pod_endpoint, 8080)


# -- the cluster -------------------------------------------------------------------------------


def test_three_instances_with_a_synchronous_replica() -> None:
    spec = cluster_spec()
    assert spec["instances"] == 3
    assert spec["postgresql"]["synchronous"] == {
        "method": "any",
        "number": 1,
        "dataDurability": "required",
    }
    # not the legacy stanza, which the operator refuses next to the new one
    assert "minSyncReplicas" not in spec and "maxSyncReplicas" not in spec


def test_the_parameters_are_the_settings_the_tuning_job_declares(
    declared: DatabaseTuning,
) -> None:
    """Every declared setting, at the declared value; none the operator manages; and one
    addition, archive_timeout. The exclusions are computed: today there are none."""
    wanted = wanted_settings(declared)
    excluded = sorted(set(wanted) & FIXED_PARAMETERS)
    assert excluded == []
    expected = {k: v for k, v in wanted.items() if k not in excluded}
    actual = dict(parameters())
    assert actual.pop("archive_timeout")
    assert actual == expected


def _seconds(value: str) -> float:
    """A PostgreSQL duration in seconds (a bare number is in archive_timeout's unit, s)."""
    match = re.fullmatch(r"(\d+)\s*(ms|s|min|h|d)?", value.strip())
    assert match, f"{value!r} is not a duration"
    factors = {"ms": 0.001, "s": 1, "min": 60, "h": 3600, "d": 86400}
    return int(match.group(1)) * factors[match.group(2) or "s"]


def test_wal_is_archived_at_least_every_minute() -> None:
    assert 0 < _seconds(parameters()["archive_timeout"]) <= 60


def test_postgresql_18_accepts_the_parameters_and_the_tuning_job_finds_no_drift(
    declared: DatabaseTuning, server_tmp: Path
) -> None:
    """The manifest's parameters start a real PostgreSQL 18 (a wrong name or value would stop
    every instance), and database_tuning_job's postgres_settings drift check, on that server,
    reports nothing: the cluster and the job agree."""
    server = PostgresServer.start(server_tmp / "data", settings=parameters())
    try:
        with server.connect("postgres") as conn:
            row = conn.execute("SELECT current_setting('archive_timeout')").fetchone()
            assert row is not None and row[0] == "1min"
            (settings_step,) = [step for step in PG_STEPS if step.name == "postgres_settings"]
            assert settings_step.drift(conn, declared) == []
    finally:
        server.stop()


def test_resources_are_the_declared_instance(declared: DatabaseTuning) -> None:
    resources = cluster_spec()["resources"]
    assert resources["requests"] == resources["limits"]  # Guaranteed QoS
    assert parse_quantity(resources["limits"]["cpu"]) == declared.cpus
    assert parse_quantity(resources["limits"]["memory"]) == declared.memory_mb * 2**20
    sidecar = one("ObjectStore")["spec"]["instanceSidecarConfiguration"]["resources"]
    assert sidecar["requests"] == sidecar["limits"]  # the whole pod stays Guaranteed


# AWS EBS StorageClasses by the kind of disk behind them (the declared storage, which sets
# random_page_cost and effective_io_concurrency)
EBS_STORAGE_KIND = {
    "gp3": "ssd",
    "gp2": "ssd",
    "io1": "ssd",
    "io2": "ssd",
    "st1": "hdd",
    "sc1": "hdd",
}


def test_the_storage_class_is_the_declared_kind_of_storage(declared: DatabaseTuning) -> None:
    spec = cluster_spec()
    for volume in (spec["storage"], spec["walStorage"]):
        assert EBS_STORAGE_KIND.get(volume["storageClass"]) == declared.storage, volume


def test_the_tuning_job_writes_these_parameters_through_the_cluster(
    declared: DatabaseTuning, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CloudNativePG keeps ALTER SYSTEM off, so postgres_settings patches this spec: it would
    accept every declared setting (none fixed by the operator, wal_level and wal_log_hints
    left as it needs them), and production's code location chooses that applier, on this
    Cluster."""
    assert cluster_spec()["postgresql"]["enableAlterSystem"] is False
    refuse_fixed(wanted_settings(declared), cluster_spec()["instances"])
    for name in ("TWINME_POSTGRES_APPLIER", "TWINME_WAL_ARCHIVE"):
        if name in code_location_env():
            monkeypatch.setenv(name, code_location_env()[name])
    applier = settings_applier("production", wal_archive_resource("production", "/unused"))
    cluster = one("Cluster")["metadata"]
    assert (applier.method, applier.cluster, applier.namespace) == (
        "cloudnative-pg",
        cluster["name"],
        cluster["namespace"],
    )


def test_storage_and_a_wal_volume_that_outlasts_a_night_of_archiving_failure() -> None:
    spec = cluster_spec()
    for volume in (spec["storage"], spec["walStorage"]):
        assert volume["storageClass"] and parse_quantity(volume["size"]) > 0
    # what the WAL volume holds anyway: max_wal_size and wal_keep_size (CloudNativePG's 512MB);
    # then, when nothing can be archived, one 16 MiB segment per archive_timeout, idle or not
    kept = pg_size_bytes(parameters()["max_wal_size"]) + pg_size_bytes("512MB")
    per_hour = 16 * 2**20 * 3600 / _seconds(parameters()["archive_timeout"])
    hours = float(parse_quantity(spec["walStorage"]["size"]) - kept) / per_hour
    assert hours >= 12, f"the WAL volume fills {hours:.1f} h after archiving stops"


def test_instances_never_share_a_node() -> None:
    affinity = cluster_spec()["affinity"]
    assert affinity["enablePodAntiAffinity"] is True
    assert affinity["podAntiAffinityType"] == "required"
    assert affinity["topologyKey"] == "kubernetes.io/hostname"


def test_disruption_budgets_are_the_operators() -> None:
    assert cluster_spec().get("enablePDB", True) is True


def _server_major(binary: str) -> int:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"\(PostgreSQL\) (\d+)", out.stdout)
    assert match, out.stdout
    return int(match.group(1))


def test_the_image_is_the_standard_postgresql_18_pinned_by_digest() -> None:
    image = cluster_spec()["imageName"]
    match = re.fullmatch(
        r"ghcr\.io/cloudnative-pg/postgresql:(\d+)\.\d+-\d{12}-standard-bookworm"
        r"@sha256:[0-9a-f]{64}",
        image,
    )
    assert match, f"{image!r}: not a pinned standard (pgvector) image"
    # the drills restore production's dumps onto the embedded server: same major version
    assert int(match.group(1)) == _server_major(pg_bin("postgres")) == 18


def test_bootstrap_creates_the_database_of_database_url() -> None:
    initdb = cluster_spec()["bootstrap"]["initdb"]
    # DATABASE_URL as the API's Secret template documents it: .../twinme
    template = (REPO / "deploy" / "app" / "templates" / "secret.template.yaml").read_text()
    url = re.search(r"postgresql://\S+", template)
    assert url and urlsplit(url.group(0)).path == f"/{initdb['database']}" == "/twinme"
    assert initdb["owner"] == "twinme"
    secrets = {s["metadata"]["name"]: s for s in _docs(SECRETS_TEMPLATE)}
    app = secrets[initdb["secret"]["name"]]
    assert app["type"] == "kubernetes.io/basic-auth"
    assert app["stringData"]["username"] == initdb["owner"]
    spec = cluster_spec()
    superuser = secrets[spec["superuserSecret"]["name"]]
    assert spec["enableSuperuserAccess"] is True  # else the operator ignores the secret
    assert superuser["type"] == "kubernetes.io/basic-auth"
    assert superuser["stringData"]["username"] == "postgres"


def test_the_database_object_declares_the_tuning_jobs_extensions() -> None:
    database, initdb = one("Database")["spec"], cluster_spec()["bootstrap"]["initdb"]
    assert database["cluster"]["name"] == one("Cluster")["metadata"]["name"]
    assert (database["name"], database["owner"]) == (initdb["database"], initdb["owner"])
    assert database["databaseReclaimPolicy"] == "retain"  # never drops production
    assert [(e["name"], e.get("ensure", "present")) for e in database["extensions"]] == [
        (name, "present") for name in EXTENSIONS
    ]


# -- WAL archiving and base backups ------------------------------------------------------------


def test_wal_archiving_goes_through_the_plugin_to_the_object_store() -> None:
    spec = cluster_spec()
    (plugin,) = spec["plugins"]
    assert plugin["name"] == PLUGIN
    assert plugin["isWALArchiver"] is True and plugin.get("enabled", True) is True
    assert plugin["parameters"]["barmanObjectName"] == one("ObjectStore")["metadata"]["name"]
    assert "backup" not in spec  # not the in-tree barmanObjectStore as well


def test_the_object_store_is_the_backup_bucket_compressed_encrypted_for_30_days() -> None:
    store = one("ObjectStore")["spec"]
    assert store["retentionPolicy"] == "30d"
    config = store["configuration"]
    destination = urlsplit(config["destinationPath"])
    backups = urlsplit(code_location_env()["TWINME_BACKUP_URL"])
    # the same bucket as twinme_ops' sets, under a prefix retention_job does not own
    assert (destination.scheme, destination.netloc) == ("s3", backups.netloc)
    ours, theirs = destination.path.strip("/") + "/", backups.path.strip("/") + "/"
    assert not ours.startswith(theirs) and not theirs.startswith(ours)
    for part in ("wal", "data"):
        assert config[part]["compression"] in ("gzip", "snappy")
        assert config[part]["encryption"] == "AES256"
    for credential in config["s3Credentials"].values():
        assert set(credential) == {"name", "key"}  # references to a Secret


def _daily_time(cron: str, fields: int) -> time:
    parts = cron.split()
    assert len(parts) == fields and parts[fields - 3 :] == ["*", "*", "*"], cron
    numbers = [int(p) for p in parts[: fields - 3]]
    second = numbers.pop(0) if fields == 6 else 0
    minute, hour = numbers
    return time(hour, minute, second)


def test_the_base_backup_runs_nightly_apart_from_twinme_ops_nightly_jobs() -> None:
    from twinme_ops.definitions import build_definitions

    scheduled = one("ScheduledBackup")["spec"]
    assert scheduled["cluster"]["name"] == one("Cluster")["metadata"]["name"]
    assert scheduled["method"] == "plugin"
    assert scheduled["pluginConfiguration"]["name"] == PLUGIN
    assert scheduled["target"] == "prefer-standby"
    assert scheduled.get("immediate") is True  # a base backup before the first night
    # six fields, seconds first, in UTC (robfig/cron, as the CRD says)
    backup_at = _daily_time(scheduled["schedule"], 6)
    defs = build_definitions()
    for day in (date(2026, 1, 15), date(2026, 7, 15)):  # winter and summer time in Paris
        start = datetime.combine(day, backup_at, UTC)
        end = start + BASE_BACKUP_BUDGET
        for name in DATABASE_JOBS:
            schedule = defs.resolve_schedule_def(name)
            runtime = timedelta(
                seconds=float(defs.resolve_job_def(schedule.job_name).tags["dagster/max_runtime"])
            )
            zone = ZoneInfo(schedule.execution_timezone or "UTC")
            cron = schedule.cron_schedule
            assert isinstance(cron, str), cron
            for offset in (-1, 0, 1):
                job_start = datetime.combine(
                    day + timedelta(days=offset), _daily_time(cron, 5), zone
                )
                assert end <= job_start or job_start + runtime <= start, (
                    f"{day}: the base backup at {start:%H:%M} UTC overlaps {name} "
                    f"({job_start.astimezone(UTC):%H:%M} UTC, up to {runtime})"
                )


# -- secrets -----------------------------------------------------------------------------------

_SECRET_FIELD = re.compile(r"password|secret|token|credential|accesskey", re.IGNORECASE)
_SECRET_VALUE = re.compile(r"AKIA[0-9A-Z]{16}|://[^/\s:@]+:[^/\s@]+@|BEGIN [A-Z ]*PRIVATE KEY")


def _fields(node: Any, path: str = "") -> list[tuple[str, str, Any]]:
    if isinstance(node, dict):
        return [f for k, v in node.items() for f in [(path, k, v), *_fields(v, f"{path}.{k}")]]
    if isinstance(node, list):
        return [f for i, v in enumerate(node) for f in _fields(v, f"{path}[{i}]")]
    return []


def test_no_secret_value_in_any_manifest() -> None:
    for doc in applied_objects():
        for path, key, value in _fields(doc):
            if _SECRET_FIELD.search(key) and not isinstance(value, bool):
                # references to a Secret (its name, a key in it), never the value
                where = f"{_id(doc)}{path}.{key}"
                assert isinstance(value, dict), where
                leaves = [(k, v) for _, k, v in _fields(value) if not isinstance(v, dict)]
                assert leaves and {k for k, _ in leaves} <= {"name", "key"}, where
            if isinstance(value, str):
                assert not _SECRET_VALUE.search(value), f"{_id(doc)}{path}.{key}"
    for secret in _docs(SECRETS_TEMPLATE):
        assert "data" not in secret
        for key, value in secret["stringData"].items():
            assert value == "" or key == "username", f"{secret['metadata']['name']}.{key}"


# -- network paths -----------------------------------------------------------------------------


# The pods, by the labels their makers set (10-networkpolicies.yaml's header)
def _instance(role: str, ip: str) -> Endpoint:
    labels = {"cnpg.io/cluster": "twinme-db", "cnpg.io/podRole": "instance"}
    return Endpoint(NAMESPACE, {**labels, "cnpg.io/instanceRole": role}, ip)


PRIMARY = _instance("primary", "10.244.6.10")
REPLICA = _instance("replica", "10.244.6.11")
JOIN = Endpoint(
    NAMESPACE, {"cnpg.io/cluster": "twinme-db", "cnpg.io/jobRole": "join"}, "10.244.6.12"
)
STRAY = Endpoint(NAMESPACE, {"app": "debug"}, "10.244.6.13")  # e.g. kubectl run
API = Endpoint("twinme-prod", {"app": "twinme-api"}, "10.244.2.3")
API_NEIGHBOUR = Endpoint("twinme-prod", {"app": "debug"}, "10.244.2.4")
RUN = Endpoint("dagster", {"app.kubernetes.io/component": "run_worker"}, "10.244.0.14")
STEP = Endpoint("dagster", {"app.kubernetes.io/component": "step_worker"}, "10.244.0.15")
CODE_SERVER = Endpoint(
    "dagster", {"component": "user-deployments", "deployment": "twinme-ops"}, "10.244.0.13"
)
WEBSERVER = Endpoint("dagster", {"component": "dagster-webserver"}, "10.244.0.10")
DAEMON = Endpoint("dagster", {"component": "dagster-daemon"}, "10.244.0.12")
BUILD = Endpoint("twinme-build", {"app.kubernetes.io/name": "twinme-app-tests"}, "10.244.3.4")
OPERATOR = Endpoint("cnpg-system", {"app.kubernetes.io/name": "cloudnative-pg"}, "10.244.7.2")
BARMAN_PLUGIN = Endpoint("cnpg-system", {"app": "barman-cloud"}, "10.244.7.3")
PROMETHEUS = Endpoint("monitoring", {"app.kubernetes.io/name": "prometheus"}, "10.244.5.7")
DNS = Endpoint("kube-system", {"k8s-app": "kube-dns"}, "10.244.4.5")
KUBE_API = Endpoint(ip="192.0.2.10")  # 10-networkpolicies.yaml's header
S3 = Endpoint(ip="52.95.154.10")  # a public S3 address
METADATA = Endpoint(ip="169.254.169.254")
LAPTOP = Endpoint(ip="203.0.113.50")
DB_PODS = [PRIMARY, REPLICA, JOIN]


@cache
def all_policies() -> list[dict[str, Any]]:
    """Every NetworkPolicy of the repository: a path needs both ends' policies to allow it."""
    paths = [
        REPO / "deploy" / "app" / "20-networkpolicy.yaml",
        REPO / "deploy" / "build" / "20-app-tests-networkpolicy.yaml",
        REPO / "deploy" / "dagster" / "networkpolicies.yaml",
        *applied_files(),
    ]
    return [d for path in paths for d in _docs(path) if d["kind"] == "NetworkPolicy"]


PATHS = [
    # PostgreSQL: the API (primary and replicas) and twinme_ops' runs, nobody else
    (API, PRIMARY, 5432, True),
    (API, REPLICA, 5432, True),
    (RUN, PRIMARY, 5432, True),
    (STEP, PRIMARY, 5432, True),
    (API_NEIGHBOUR, PRIMARY, 5432, False),
    (CODE_SERVER, PRIMARY, 5432, False),
    (WEBSERVER, PRIMARY, 5432, False),
    (DAEMON, PRIMARY, 5432, False),
    (BUILD, PRIMARY, 5432, False),
    (BARMAN_PLUGIN, PRIMARY, 5432, False),
    (STRAY, PRIMARY, 5432, False),
    (LAPTOP, PRIMARY, 5432, False),
    (API, PRIMARY, 8000, False),
    (RUN, PRIMARY, 8000, False),
    # the operator: status and PostgreSQL
    (OPERATOR, PRIMARY, 8000, True),
    (OPERATOR, REPLICA, 5432, True),
    (OPERATOR, PRIMARY, 9187, False),
    # the members among themselves: replication, a replica joining, status
    (REPLICA, PRIMARY, 5432, True),
    (JOIN, PRIMARY, 5432, True),
    (PRIMARY, REPLICA, 8000, True),
    (STRAY, REPLICA, 8000, False),
    # metrics for Prometheus only
    (PROMETHEUS, PRIMARY, 9187, True),
    (PROMETHEUS, PRIMARY, 5432, False),
    (API, PRIMARY, 9187, False),
    # `kubectl cnpg status` through the API server's pod proxy; nothing else from it
    (KUBE_API, PRIMARY, 8000, True),
    (KUBE_API, PRIMARY, 5432, False),
    # out: the Kubernetes API, S3 over HTTPS; not the cloud's metadata, not the API's pods
    (PRIMARY, KUBE_API, 443, True),
    (REPLICA, KUBE_API, 6443, True),
    (PRIMARY, S3, 443, True),
    (PRIMARY, METADATA, 443, False),
    (PRIMARY, METADATA, 80, False),
    (PRIMARY, S3, 80, False),
    (PRIMARY, API, 3000, False),
    (PRIMARY, LAPTOP, 5432, False),
    (STRAY, S3, 443, False),
]


@each_path(PATHS)
def test_each_network_path_is_allowed_or_denied(
    src: Endpoint, dst: Endpoint, port: int, expected: bool
) -> None:
    assert allowed(all_policies(), src, dst, port) is expected


@pytest.mark.parametrize("pod", [*DB_PODS, STRAY], ids=lambda e: str(e.labels))
def test_every_pod_resolves_names(pod: Endpoint) -> None:
    assert allowed(all_policies(), pod, DNS, 53, "UDP")
    assert allowed(all_policies(), pod, DNS, 53, "TCP")


# -- the point-in-time recovery Cluster (deploy/postgres/recovery/, applied by the runbook only) --

RECOVERY_CLUSTER = POSTGRES_DIR / "recovery" / "cluster-recovery.yaml"


def recovery_cluster() -> dict[str, Any]:
    (doc,) = _docs(RECOVERY_CLUSTER)
    return doc


def test_the_recovery_cluster_matches_its_crd_strictly() -> None:
    doc = recovery_cluster()
    schema = strict_schema(schemas()[(doc["apiVersion"], doc["kind"])])
    assert validation_errors(doc, schema) == []
    assert deprecated_fields(doc, schema) == []
    assert cluster_admission_errors(doc) == []
    wrapper = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}
    kubernetes_validate.validate(wrapper, VERSIONS[-1], strict=True)
    assert doc["metadata"]["namespace"] == NAMESPACE
    assert RECOVERY_CLUSTER not in applied_files()  # never applied with the folder


def test_the_recovery_cluster_replays_twinme_dbs_archive_to_a_time() -> None:
    doc, original = recovery_cluster(), one("Cluster")
    spec = doc["spec"]
    assert doc["metadata"]["name"] != original["metadata"]["name"]
    recovery = spec["bootstrap"]["recovery"]
    assert set(spec["bootstrap"]) == {"recovery"}  # no initdb: the data comes from the backup
    target = datetime.fromisoformat(recovery["recoveryTarget"]["targetTime"])
    assert target.tzinfo is not None
    (source,) = [c for c in spec["externalClusters"] if c["name"] == recovery["source"]]
    store = one("ObjectStore")["metadata"]["name"]
    assert source["plugin"]["name"] == PLUGIN
    assert source["plugin"]["parameters"] == {
        "barmanObjectName": store,
        "serverName": original["metadata"]["name"],  # the folder twinme-db archives into
    }
    (archiver,) = [p for p in spec["plugins"] if p.get("isWALArchiver")]
    # its own WAL goes to its own folder, never into the history it recovers from
    assert archiver["parameters"]["barmanObjectName"] == store
    assert archiver["parameters"]["serverName"] == doc["metadata"]["name"]
    # otherwise the same database as the one it replaces
    for key in ("imageName", "postgresql", "resources", "storage", "walStorage", "affinity"):
        assert spec[key] == original["spec"][key], key
