"""Custom resources checked against their CustomResourceDefinitions, strictly (tests of deploy/).

A CRD's ``openAPIV3Schema`` is a JSON schema, but a lenient one for a manifest: an object with
``properties`` and no ``additionalProperties`` accepts any other key, and the API server then
prunes the unknown field (a misspelt ``isWALArchver`` is dropped, and WAL archiving silently
stays off). :func:`strict_schema` closes every such object: ``additionalProperties: false``
wherever a schema lists ``properties``, has no ``additionalProperties`` of its own and does not
set ``x-kubernetes-preserve-unknown-fields`` (where unknown fields are kept on purpose).

What a JSON schema cannot say, the API server checks with CEL rules (``x-kubernetes-validations``):
:func:`cel_rules` lists the rules that apply to a document, for a test to evaluate them.
:func:`deprecated_fields` lists the fields a document sets that the CRD describes as deprecated.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import yaml

PRESERVE_UNKNOWN = "x-kubernetes-preserve-unknown-fields"
# keywords whose value is one schema, a map of name -> schema, or a list of schemas
_ONE = ("items", "additionalProperties", "not")
_MAP = ("properties", "patternProperties")
_LIST = ("allOf", "anyOf", "oneOf")
# how the CRDs mark a field (controller-gen copies the Go comment): a paragraph "Deprecated: ..."
_DEPRECATED = re.compile(r"^\s*Deprecated\b", re.MULTILINE)


def crd_schemas(directory: Path) -> dict[tuple[str, str], dict[str, Any]]:
    """Every served version of every CRD file in ``directory``, by (apiVersion, kind)."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(directory.glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        assert crd["kind"] == "CustomResourceDefinition", path
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                key = (f"{group}/{version['name']}", kind)
                schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def strict_schema(schema: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` in which every object that lists its properties refuses others."""
    strict = copy.deepcopy(dict(schema))
    _close(strict)
    return strict


def _close(node: Any) -> None:
    # Only schema positions are visited: `default`, `enum` or `example` values are data, and a
    # field may be named "properties" (it is then a key of a properties map, never a keyword).
    if not isinstance(node, dict):
        return
    closable = "properties" in node and "additionalProperties" not in node
    if closable and not node.get(PRESERVE_UNKNOWN):
        node["additionalProperties"] = False
    for key in _ONE:
        _close(node.get(key))
    for key in _MAP:
        for child in (node.get(key) or {}).values():
            _close(child)
    for key in _LIST:
        for child in node.get(key) or []:
            _close(child)


def validation_errors(doc: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """Every way ``doc`` breaks ``schema``, as ``path: message`` (empty when it conforms)."""
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


@dataclass(frozen=True)
class Node:
    """A value of a document and the schema that describes it."""

    path: str
    value: Any
    schema: Mapping[str, Any]


def nodes(doc: Any, schema: Mapping[str, Any], path: str = "") -> Iterator[Node]:
    """Each value of ``doc`` that ``schema`` describes, depth first, the root included."""
    yield Node(path or "<root>", doc, schema)
    if isinstance(doc, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, value in doc.items():
            child = properties.get(key, extra if isinstance(extra, dict) else None)
            if child is not None:
                yield from nodes(value, child, f"{path}.{key}" if path else str(key))
    elif isinstance(doc, list) and isinstance(schema.get("items"), dict):
        for index, value in enumerate(doc):
            yield from nodes(value, schema["items"], f"{path}[{index}]")


@dataclass(frozen=True)
class CelRule:
    """An ``x-kubernetes-validations`` rule on a value a document sets."""

    path: str
    rule: str
    message: str
    value: Any

    @property
    def on_update_only(self) -> bool:
        """A transition rule (``oldSelf``): the API server checks it on updates only."""
        return "oldSelf" in self.rule


def cel_rules(doc: Mapping[str, Any], schema: Mapping[str, Any]) -> list[CelRule]:
    """The CEL rules of every value ``doc`` sets, with the value each rule sees as ``self``."""
    return [
        CelRule(node.path, rule["rule"], rule.get("message", ""), node.value)
        for node in nodes(doc, schema)
        for rule in node.schema.get("x-kubernetes-validations") or []
    ]


def deprecated_fields(doc: Mapping[str, Any], schema: Mapping[str, Any]) -> list[str]:
    """Paths of the fields ``doc`` sets whose description in ``schema`` says deprecated."""
    return [
        node.path
        for node in nodes(doc, schema)
        if _DEPRECATED.search(str(node.schema.get("description", "")))
    ]
