"""NetworkPolicy semantics, evaluated the way a CNI applies them (tests of deploy/build/ and
deploy/dagster/).

A connection from ``src`` to ``dst`` on ``protocol/port`` is allowed when both ends allow it:

- the source's egress: no policy of its namespace with ``Egress`` in its ``policyTypes`` selects
  it (then everything is allowed), or one of those policies has an egress rule whose ports and
  peers admit the destination;
- the destination's ingress: the same with ``Ingress`` and ingress rules.

Policies are additive (a union of what each allows). A peer is an ``ipBlock`` (an address in
its ``cidr`` and in none of its ``except`` ranges) or a ``namespaceSelector`` and/or
``podSelector`` (a ``podSelector`` alone means the policy's own namespace). Namespaces carry the
``kubernetes.io/metadata.name`` label the API server sets. Selectors support ``matchLabels`` and
``matchExpressions`` (In, NotIn, Exists, DoesNotExist). A pod's address is also matched against
``ipBlock`` peers (some CNIs do, e.g. Calico): that can only allow more, so a path asserted
"denied" here is denied on every CNI.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Endpoint:
    """A pod (``namespace`` + ``labels``, optionally its ``ip``) or, with no namespace, an
    address outside the cluster."""

    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str | None = None


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A label selector; an empty one selects everything."""
    selector = selector or {}
    unknown = set(selector) - {"matchLabels", "matchExpressions"}
    assert not unknown, f"selector fields not evaluated here: {unknown}"
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and key in labels and labels[key] in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
        assert operator in ("In", "NotIn", "Exists", "DoesNotExist"), operator
    return True


def in_block(ip: str, block: Mapping[str, Any]) -> bool:
    address = ipaddress.ip_address(ip)
    network = ipaddress.ip_network(block["cidr"])
    if address.version != network.version or address not in network:
        return False
    return not any(
        address in ipaddress.ip_network(e)
        for e in block.get("except") or []
        if ipaddress.ip_network(e).version == address.version
    )


def _types(policy: Mapping[str, Any]) -> list[str]:
    spec = policy["spec"]
    return spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))


def _peer_admits(peer: Mapping[str, Any], policy_namespace: str, other: Endpoint) -> bool:
    if "ipBlock" in peer:
        return other.ip is not None and in_block(other.ip, peer["ipBlock"])
    if other.namespace is None:
        return False
    if "namespaceSelector" in peer:
        namespace_labels = {"kubernetes.io/metadata.name": other.namespace}
        if not selects(peer["namespaceSelector"], namespace_labels):
            return False
    elif other.namespace != policy_namespace:
        return False
    return selects(peer.get("podSelector"), other.labels)


def _rule_admits(
    rule: Mapping[str, Any],
    peers_key: str,
    policy_namespace: str,
    other: Endpoint,
    port: int,
    protocol: str,
) -> bool:
    ports = rule.get("ports")
    if ports and not any(
        p.get("protocol", "TCP") == protocol and p.get("port") in (None, port) for p in ports
    ):
        return False
    peers = rule.get(peers_key)
    if not peers:
        return True  # every peer
    return any(_peer_admits(peer, policy_namespace, other) for peer in peers)


def _side_allows(
    policies: Iterable[Mapping[str, Any]],
    pod: Endpoint,
    other: Endpoint,
    direction: str,
    port: int,
    protocol: str,
) -> bool:
    if pod.namespace is None:
        return True  # outside the cluster: no policy applies
    rules_key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod.namespace
        and direction in _types(p)
        and selects(p["spec"].get("podSelector"), pod.labels)
    ]
    if not selecting:
        return True
    return any(
        _rule_admits(rule, peers_key, p["metadata"]["namespace"], other, port, protocol)
        for p in selecting
        for rule in p["spec"].get(rules_key) or []
    )


def allowed(
    policies: Iterable[Mapping[str, Any]],
    src: Endpoint,
    dst: Endpoint,
    port: int,
    protocol: str = "TCP",
) -> bool:
    """Whether ``src`` may open ``protocol/port`` to ``dst`` under ``policies``."""
    policies = list(policies)
    return _side_allows(policies, src, dst, "Egress", port, protocol) and _side_allows(
        policies, dst, src, "Ingress", port, protocol
    )


Path = tuple[Endpoint, Endpoint, int, bool]


def each_path(paths: list[Path]) -> Any:
    """``@each_path(PATHS)``: one test per (from, to, port, allowed?) path, named after it."""
    import pytest

    return pytest.mark.parametrize(
        ("src", "dst", "port", "expected"),
        paths,
        ids=[f"{s.labels or s.ip}->{d.labels or d.ip}:{p}" for s, d, p, _ in paths],
    )
