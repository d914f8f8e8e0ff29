"""What CloudNativePG refuses beyond its CRDs' JSON schemas, as plain checks (tests of deploy/).

The operator's admission webhook rejects a ``Cluster`` for rules a schema cannot express, and the
API server evaluates the CRDs' CEL rules (``x-kubernetes-validations``). Neither runs here (no
API server can be installed), so the rules that concern our manifests are ported:

- :func:`cluster_admission_errors`: the webhook's checks of the fields deploy/postgres/ sets,
  from cloudnative-pg ``internal/webhook/v1/cluster_webhook.go`` and the fixed parameters of
  ``pkg/postgres/configuration.go`` (commit a95a534, the one of the CRDs in schemas/cnpg/), which
  twinme_ops/database/postgres/settings/cnpg.py holds (its applier refuses them too).
- :data:`CEL_RULES`: each CEL rule met so far, as a Python predicate on the rule's ``self``.
  A rule missing here makes the test that collects them fail: translate it, do not skip it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from twinme_ops.common.quantity import parse_quantity
from twinme_ops.database.postgres.settings.cnpg import FIXED_PARAMETERS as CNPG_FIXED_PARAMETERS

# FixedConfigurationParameters: set by the operator; a user value is refused (or ignored). One
# list, the code's: postgres_settings refuses them before patching the Cluster
FIXED_PARAMETERS = CNPG_FIXED_PARAMETERS
# postgresParameterNameRegex: a GUC name, optionally namespaced with a single dot
PARAMETER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
# defaults the webhook assumes when min_wal_size / max_wal_size are not set
_WAL_SIZE_DEFAULTS = {"min_wal_size": "80MB", "max_wal_size": "1GB"}
_PG_UNITS = {"kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}


def pg_size_bytes(value: str) -> int:
    """A PostgreSQL size as the webhook reads it (parsePostgresQuantityValue): a bare number is
    MB, otherwise kB, MB, GB or TB, all powers of 1024."""
    match = re.fullmatch(r"(\d+)\s*(kB|MB|GB|TB)?", value.strip())
    if not match:
        raise ValueError(f"{value!r} is not a size the operator can read")
    return int(match.group(1)) * _PG_UNITS[match.group(2) or "MB"]


def _quantity(resources: Mapping[str, Any], kind: str, name: str) -> Decimal | None:
    value = (resources.get(kind) or {}).get(name)
    return None if value is None else parse_quantity(value)


def cluster_admission_errors(cluster: Mapping[str, Any]) -> list[str]:
    """The webhook's objections to ``cluster`` (a Cluster manifest), for the fields it checks
    that deploy/postgres/ uses; empty when it would be admitted."""
    spec = cluster["spec"]
    errors: list[str] = []
    instances = spec.get("instances", 1)
    postgresql = spec.get("postgresql") or {}
    sync = postgresql.get("synchronous")
    if sync is not None:
        names = len(sync.get("standbyNamesPre") or []) + len(sync.get("standbyNamesPost") or [])
        if sync["number"] >= instances + names:
            errors.append("synchronous.number must be less than the instances")
        if spec.get("minSyncReplicas", 0) > 0 or spec.get("maxSyncReplicas", 0) > 0:
            errors.append("legacy min/maxSyncReplicas together with synchronous")
    parameters: dict[str, str] = postgresql.get("parameters") or {}
    for name, value in parameters.items():
        if not PARAMETER_NAME.match(name):
            errors.append(f"{name}: not a PostgreSQL parameter name")
        elif name in FIXED_PARAMETERS:
            errors.append(f"{name}={value}: can't set fixed configuration parameter")
    if parameters.get("wal_log_hints", "on").lower() in ("off", "false", "0") and instances > 1:
        errors.append("wal_log_hints must be on with more than one instance")
    resources = spec.get("resources") or {}
    for name in ("cpu", "memory", "ephemeral-storage"):
        request, limit = (_quantity(resources, k, name) for k in ("requests", "limits"))
        if request is not None and limit is not None and request > limit:
            errors.append(f"{name} request is greater than the limit")
    memory_request = _quantity(resources, "requests", "memory")
    shared_buffers = parameters.get("shared_buffers")
    if shared_buffers and memory_request and pg_size_bytes(shared_buffers) > memory_request:
        errors.append("memory request is lower than shared_buffers")
    errors += _wal_size_errors(parameters, (spec.get("walStorage") or {}).get("size"))
    initdb = (spec.get("bootstrap") or {}).get("initdb") or {}
    if bool(initdb.get("database")) != bool(initdb.get("owner")):
        errors.append("initdb needs both the database and its owner")
    affinity = spec.get("affinity") or {}
    if affinity.get("podAntiAffinityType", "") not in ("", "preferred", "required"):
        errors.append("podAntiAffinityType must be preferred or required")
    plugins = spec.get("plugins") or []
    archivers = [p["name"] for p in plugins if p.get("enabled", True) and p.get("isWALArchiver")]
    if len(archivers) > 1:
        errors.append(f"more than one WAL archiver plugin: {archivers}")
    if archivers and (spec.get("backup") or {}).get("barmanObjectStore"):
        errors.append("a WAL archiver plugin together with the in-tree barmanObjectStore")
    return errors


def _wal_size_errors(parameters: Mapping[str, str], wal_volume: str | None) -> list[str]:
    """validateWalSizeConfiguration: min_wal_size < max_wal_size < the WAL volume."""
    sizes = {k: pg_size_bytes(parameters.get(k) or d) for k, d in _WAL_SIZE_DEFAULTS.items()}
    errors = []
    if sizes["min_wal_size"] >= sizes["max_wal_size"]:
        errors.append("min_wal_size must be smaller than max_wal_size")
    if wal_volume is not None:
        for name in _WAL_SIZE_DEFAULTS:
            if name in parameters and sizes[name] >= parse_quantity(wal_volume):
                errors.append(f"{name} must be smaller than the WAL volume ({wal_volume})")
    return errors


def _has(value: Any, field: str) -> bool:
    return isinstance(value, Mapping) and field in value


def _size(value: Mapping[str, Any], field: str) -> int:
    return len(value.get(field) or [])


def _no_failure_domain_with_election(s: Mapping[str, Any]) -> bool:
    sync = s.get("synchronous") or {}
    domains = _size(sync, "podFailureDomainKeys") > 0 or _size(sync, "nodeFailureDomainKeys") > 0
    election = s.get("syncReplicaElectionConstraint") or {}
    return not (bool(election.get("enabled")) and _has(s, "synchronous") and domains)


def _locale(provider: str, field: str) -> Callable[[Any], bool]:
    return lambda s: not _has(s, field) or s.get("localeProvider") == provider


CEL_RULES: dict[str, Callable[[Any], bool]] = {
    # ObjectStore: the server name is a parameter of the Cluster's plugin entry
    "!has(self.serverName)": lambda s: not _has(s, "serverName"),
    # Cluster
    "!(has(self.imageCatalogRef) && has(self.imageName))": lambda s: (
        not (_has(s, "imageCatalogRef") and _has(s, "imageName"))
    ),
    "!has(self.builtinLocale) || self.localeProvider == 'builtin'": _locale(
        "builtin", "builtinLocale"
    ),
    "!has(self.icuLocale) || self.localeProvider == 'icu'": _locale("icu", "icuLocale"),
    "!has(self.icuRules) || self.localeProvider == 'icu'": _locale("icu", "icuRules"),
    "!(has(self.syncReplicaElectionConstraint) && self.syncReplicaElectionConstraint.enabled && "
    "has(self.synchronous) && ((has(self.synchronous.podFailureDomainKeys) && "
    "self.synchronous.podFailureDomainKeys.size() > 0) || "
    "(has(self.synchronous.nodeFailureDomainKeys) && "
    "self.synchronous.nodeFailureDomainKeys.size() > 0)))": _no_failure_domain_with_election,
    "self.dataDurability!='preferred' || ((!has(self.standbyNamesPre) || "
    "self.standbyNamesPre.size()==0) && (!has(self.standbyNamesPost) || "
    "self.standbyNamesPost.size()==0))": lambda s: (
        s.get("dataDurability") != "preferred"
        or (_size(s, "standbyNamesPre") == 0 and _size(s, "standbyNamesPost") == 0)
    ),
    "!(has(self.podFailureDomainKeys) && self.podFailureDomainKeys.size() > 0 && "
    "has(self.nodeFailureDomainKeys) && self.nodeFailureDomainKeys.size() > 0)": lambda s: (
        not (_size(s, "podFailureDomainKeys") > 0 and _size(s, "nodeFailureDomainKeys") > 0)
    ),
    "self > 0": lambda s: s > 0,
    # Database
    "self != 'postgres'": lambda s: s != "postgres",
    "self != 'template0'": lambda s: s != "template0",
    "self != 'template1'": lambda s: s != "template1",
}
