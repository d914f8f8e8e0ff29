"""What a GraphQL request to the Dagster webserver asks to change, and who may ask it.

Every mutation field of Dagster 1.13's schema is classified into one action (policy.py grants
actions to roles). A field this table does not know is refused to everybody: a Dagster upgrade
that adds a mutation is closed until somebody classifies it here
(tests/access/test_access_webserver.py checks the table against the installed schema).

A launch gets the tag ``twinme/launched_by`` (the verified person) written into its
variables, replacing anything the client sent; the tags of the approval flow can never be set by
a client.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    VariableNode,
    parse,
)

from twinme_ops.access.approvals import LAUNCHED_BY_TAG

# set only by the webserver's approval endpoint (approvals.py)
RESERVED_TAG_PREFIXES = ("twinme/launched_by", "twinme/approv")

# mutation field -> action; the launch family also says where its params are
MUTATION_ACTIONS: dict[str, str] = {
    # runs
    "launchPipelineExecution": "launch",
    "launchRun": "launch",
    "launchMultipleRuns": "launch",
    "launchPipelineReexecution": "launch",
    "launchRunReexecution": "launch",
    "launchPartitionBackfill": "launch",
    "reexecutePartitionBackfill": "launch",
    "resumePartitionBackfill": "launch",
    "terminatePipelineExecution": "terminate",
    "terminateRun": "terminate",
    "terminateRuns": "terminate",
    "cancelPartitionBackfill": "terminate",
    "freeConcurrencySlotsForRun": "terminate",
    "freeConcurrencySlots": "terminate",
    # schedules and sensors
    "startSchedule": "toggle",
    "stopRunningSchedule": "toggle",
    "resetSchedule": "toggle",
    "startSensor": "toggle",
    "stopSensor": "toggle",
    "resetSensor": "toggle",
    "setSensorCursor": "toggle",
    "setAutoMaterializePaused": "toggle",
    "sensorDryRun": "dry_run",
    "scheduleDryRun": "dry_run",
    # code location
    "reloadRepositoryLocation": "reload",
    "reloadWorkspace": "reload",
    # the UI's own bookkeeping
    "logTelemetry": "ui_state",
    "setNuxSeen": "ui_state",
    # nobody, through the UI: these erase the audit trail, forge results or change limits
    "deletePipelineRun": "forbidden",
    "deleteRun": "forbidden",
    "wipeAssets": "forbidden",
    "reportRunlessAssetEvents": "forbidden",
    "reportAssetCheckEvaluations": "forbidden",
    "shutdownRepositoryLocation": "forbidden",
    "addDynamicPartition": "forbidden",
    "deleteDynamicPartitions": "forbidden",
    "setAppManagedComponent": "forbidden",
    "deleteAppManagedComponent": "forbidden",
    "refreshComponentState": "forbidden",
    "setConcurrencyLimit": "forbidden",
    "deleteConcurrencyLimit": "forbidden",
}

FORBIDDEN_WHY = {
    "deletePipelineRun": "deleting a run erases the audit trail",
    "deleteRun": "deleting a run erases the audit trail",
    "wipeAssets": "wiping materializations erases the record of every backup set",
    "reportRunlessAssetEvents": "a reported materialization would forge a backup or a release",
    "reportAssetCheckEvaluations": "a reported check result would forge a restore drill",
}

# where each launch-family field keeps the tags it gives the run: (argument, tags key, format)
_TAG_SLOTS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "launchPipelineExecution": ("executionParams", ("executionMetadata", "tags"), "list"),
    "launchRun": ("executionParams", ("executionMetadata", "tags"), "list"),
    "launchPartitionBackfill": ("backfillParams", ("tags",), "list"),
    "reexecutePartitionBackfill": ("reexecutionParams", ("extraTags",), "list"),
}


class RequestRefused(Exception):
    """The request cannot be judged or is malformed: 400 with the reason."""


@dataclass
class Change:
    """One mutation field of a request, with what the audit record says about it."""

    field: str
    action: str
    job: str = ""
    run_ids: list[str] = dataclasses.field(default_factory=list)
    target: str = ""  # schedule, sensor, backfill or location the change is about


@dataclass
class Judged:
    """A parsed GraphQL request: its mutations (empty for a query) and its variables."""

    operation: str  # query, mutation or subscription
    changes: list[Change]
    variables: dict[str, Any]
    body: dict[str, Any]


def _fields(
    selection: SelectionSetNode, fragments: Mapping[str, FragmentDefinitionNode]
) -> list[FieldNode]:
    out: list[FieldNode] = []
    for node in selection.selections:
        if isinstance(node, FieldNode):
            out.append(node)
        elif isinstance(node, InlineFragmentNode):
            out += _fields(node.selection_set, fragments)
        elif isinstance(node, FragmentSpreadNode) and node.name.value in fragments:
            out += _fields(fragments[node.name.value].selection_set, fragments)
    return out


def _argument(node: FieldNode, name: str, variables: Mapping[str, Any]) -> Any:
    """The value of argument ``name``; launch params must come as variables (the UI does)."""
    for arg in node.arguments or ():
        if arg.name.value != name:
            continue
        if isinstance(arg.value, VariableNode):
            return variables.get(arg.value.name.value)
        raise RequestRefused(
            f"{node.name.value}({name}: ...) must pass {name} as a GraphQL variable "
            "(as the Dagster UI and dagster-graphql's client do)"
        )
    return None


def _variable_name(node: FieldNode, name: str) -> str | None:
    for arg in node.arguments or ():
        if arg.name.value == name and isinstance(arg.value, VariableNode):
            return arg.value.name.value
    return None


def _selector_job(params: Any) -> str:
    if not isinstance(params, dict):
        return ""
    selector = params.get("selector") or {}
    if isinstance(selector, dict):
        name = selector.get("jobName") or selector.get("pipelineName")
        if name:
            return str(name)
        if selector.get("partitionSetName"):
            return str(selector["partitionSetName"])
    assets = params.get("assetSelection")
    if isinstance(assets, list) and assets:
        paths = ["/".join(a.get("path", [])) for a in assets if isinstance(a, dict)]
        return "assets " + ",".join(p for p in paths if p)
    return ""


def judge(body: Mapping[str, Any]) -> Judged:
    """Parse ``{"query", "variables", "operationName"}`` into what it changes."""
    query = body.get("query")
    if not isinstance(query, str) or not query.strip():
        raise RequestRefused("no GraphQL query in the request")
    variables = body.get("variables") or {}
    if isinstance(variables, str):
        try:
            variables = json.loads(variables)
        except json.JSONDecodeError:
            raise RequestRefused("the variables are not JSON") from None
    if not isinstance(variables, dict):
        raise RequestRefused("the variables are not a JSON object")
    try:
        document = parse(query)
    except GraphQLError as exc:
        raise RequestRefused(f"the query does not parse: {exc.message}") from None
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    wanted = body.get("operationName")
    if wanted:
        operations = [o for o in operations if o.name and o.name.value == wanted]
    if len(operations) != 1:
        raise RequestRefused("the request must name exactly one operation (operationName)")
    op = operations[0]
    changes: list[Change] = []
    if op.operation == OperationType.MUTATION:
        for node in _fields(op.selection_set, fragments):
            changes.append(_change(node, variables))
    return Judged(op.operation.value, changes, dict(variables), dict(body))


def _change(node: FieldNode, variables: Mapping[str, Any]) -> Change:
    name = node.name.value
    action = MUTATION_ACTIONS.get(name, "unknown")
    change = Change(field=name, action=action)
    if name in ("launchPipelineExecution", "launchRun"):
        change.job = _selector_job(_argument(node, "executionParams", variables))
    elif name == "launchMultipleRuns":
        params = _argument(node, "executionParamsList", variables) or []
        change.job = ",".join(sorted({_selector_job(p) for p in params if _selector_job(p)}))
    elif name in ("launchPipelineReexecution", "launchRunReexecution"):
        reexec = _argument(node, "reexecutionParams", variables)
        if isinstance(reexec, dict) and reexec.get("parentRunId"):
            change.run_ids = [str(reexec["parentRunId"])]
        change.job = _selector_job(_argument(node, "executionParams", variables))
    elif name == "launchPartitionBackfill":
        change.job = _selector_job(_argument(node, "backfillParams", variables))
    elif name in (
        "terminatePipelineExecution",
        "terminateRun",
        "freeConcurrencySlotsForRun",
        "freeConcurrencySlots",
    ):
        change.run_ids = [str(_argument(node, "runId", variables) or "")]
    elif name == "terminateRuns":
        change.run_ids = [str(r) for r in _argument(node, "runIds", variables) or []]
    elif name in ("startSchedule", "resetSchedule"):
        change.target = str(
            (_argument(node, "scheduleSelector", variables) or {}).get("scheduleName", "")
        )
    elif name in ("startSensor", "resetSensor", "setSensorCursor"):
        change.target = str(
            (_argument(node, "sensorSelector", variables) or {}).get("sensorName", "")
        )
    elif name in ("stopRunningSchedule", "stopSensor"):
        for arg in ("scheduleOriginId", "jobOriginId", "id"):
            value = _argument(node, arg, variables)
            if value:
                change.target = str(value)
                break
    elif name in ("cancelPartitionBackfill", "resumePartitionBackfill"):
        change.target = str(_argument(node, "backfillId", variables) or "")
    elif name == "reloadRepositoryLocation":
        change.target = str(_argument(node, "repositoryLocationName", variables) or "")
    return change


def _tag_list(tags: Any) -> list[dict[str, str]]:
    """A tag list without the reserved tags a client may not set."""
    if not isinstance(tags, list):
        return []
    return [
        t
        for t in tags
        if isinstance(t, dict) and not str(t.get("key", "")).startswith(RESERVED_TAG_PREFIXES)
    ]


def stamp_launches(judged: Judged, document_fields: list[FieldNode], user: str) -> dict[str, Any]:
    """The request body with ``twinme/launched_by=<user>`` on every launch it makes."""
    body = copy.deepcopy(judged.body)
    variables = copy.deepcopy(judged.variables)
    stamp = {"key": LAUNCHED_BY_TAG, "value": user}
    for node in document_fields:
        name = node.name.value
        if name in _TAG_SLOTS:
            arg, path, _ = _TAG_SLOTS[name]
            _stamp_params(variables, _variable_name(node, arg), path, stamp)
        elif name == "launchMultipleRuns":
            var = _variable_name(node, "executionParamsList")
            for params in variables.get(var or "", []) or []:
                _stamp_dict(params, ("executionMetadata", "tags"), stamp)
        elif name in ("launchPipelineReexecution", "launchRunReexecution"):
            # either full executionParams (the tags of the new run) or reexecutionParams, whose
            # extraTags override the parent's (so the parent's launcher is replaced)
            _stamp_params(
                variables,
                _variable_name(node, "executionParams"),
                ("executionMetadata", "tags"),
                stamp,
            )
            _stamp_params(
                variables, _variable_name(node, "reexecutionParams"), ("extraTags",), stamp
            )
    body["variables"] = variables
    return body


def _stamp_params(
    variables: dict[str, Any], var: str | None, path: tuple[str, ...], stamp: dict[str, str]
) -> None:
    if var and isinstance(variables.get(var), dict):
        _stamp_dict(variables[var], path, stamp)


def _stamp_dict(params: Any, path: tuple[str, ...], stamp: dict[str, str]) -> None:
    if not isinstance(params, dict):
        return
    holder = params
    for key in path[:-1]:
        nxt = holder.get(key)
        if not isinstance(nxt, dict):
            nxt = {}
            holder[key] = nxt
        holder = nxt
    holder[path[-1]] = [*_tag_list(holder.get(path[-1])), dict(stamp)]


def mutation_fields(judged: Judged) -> list[FieldNode]:
    """The top-level fields of the request's mutation (for :func:`stamp_launches`)."""
    document = parse(judged.body["query"])
    fragments = {
        d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)
    }
    wanted = judged.body.get("operationName")
    for d in document.definitions:
        if isinstance(d, OperationDefinitionNode) and (
            not wanted or (d.name and d.name.value == wanted)
        ):
            return _fields(d.selection_set, fragments)
    return []


def config_digest(judged: Judged) -> str:
    """sha256 of the run config a launch passes (canonical JSON), or ``""``."""
    configs = []
    for value in judged.variables.values():
        if isinstance(value, dict) and "runConfigData" in value:
            configs.append(value.get("runConfigData"))
        elif isinstance(value, list):
            configs += [v.get("runConfigData") for v in value if isinstance(v, dict)]
    configs = [c for c in configs if c not in (None, "", {})]
    if not configs:
        return ""
    canonical = json.dumps(configs if len(configs) > 1 else configs[0], sort_keys=True)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
