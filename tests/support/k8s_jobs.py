"""batch/v1 Jobs on the kmock emulator of ``tests/support/k8s_emulator.py``.

kmock answers 404 for resources it was not told about: :func:`declare_jobs` declares
``batch/v1/jobs`` (with its ``status`` subresource) and ``v1/pods`` on a running
:class:`EmulatorHandle`, so that dagster_k8s's ``K8sRunLauncher`` and ``k8s_job_executor`` can
create their Jobs there, list a Job's pods and delete it, and the tests can read them back through
the official client. No controller runs them: a Job stays as it was created and has no pods.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kmock
from kubernetes import client, config

from tests.support.k8s_emulator import EmulatorHandle

JOBS = kmock.resource("batch/v1/jobs")
PODS = kmock.resource("v1/pods")


def add_job_and_pod_resources(km: Any) -> None:
    """Declare ``batch/v1`` Jobs and ``v1`` Pods (with ``status`` and ``log``) on an emulator."""
    km.resources[JOBS] = kmock.ResourceInfo(
        kind="Job",
        singular="job",
        namespaced=True,
        verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
        subresources={"status"},
    )
    # dagster_k8s lists a Job's pods before deleting it (and deletes them too)
    km.resources[PODS] = kmock.ResourceInfo(
        kind="Pod",
        singular="pod",
        namespaced=True,
        verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
        subresources={"status", "log"},
    )


def declare_jobs(handle: EmulatorHandle) -> None:
    """Make the emulator serve ``batch/v1`` Jobs and ``v1`` Pods (create, read, list, delete)."""
    handle.run_in_loop(add_job_and_pod_resources)


def batch_api(kubeconfig: Path) -> client.BatchV1Api:
    """An official-client ``BatchV1Api`` for ``kubeconfig`` (not the global default config)."""
    api_client = config.new_client_from_config(config_file=str(kubeconfig), persist_config=False)
    return client.BatchV1Api(api_client)


def jobs_in(kubeconfig: Path, namespace: str) -> dict[str, dict[str, Any]]:
    """The Jobs of ``namespace`` by name, as the API returns them (camelCase JSON)."""
    # raw JSON rather than V1Job models: the manifests are compared and schema-validated as sent
    response: Any = batch_api(kubeconfig).list_namespaced_job(namespace, _preload_content=False)
    body = json.loads(response.data)
    return {item["metadata"]["name"]: item for item in body.get("items") or []}
