"""Where and how long a job's work runs: pod resources, the step-pod executor switch, run limits.

Every heavy job carries a ``dagster-k8s/config`` tag with its container resources: the
``K8sRunLauncher`` gives them to the job's run pod. Jobs whose steps exchange nothing but state in
external systems (the backup store, the databases) may also run each step in its own pod with
``dagster_k8s.k8s_job_executor``; :func:`step_pod_executor` picks that executor when the run starts,
so that the switch is an environment variable of the code location, read at run time and never at
import time:

- ``TWINME_ENV=production`` and ``TWINME_K8S_EXECUTOR=1``: one Kubernetes Job per step, each with
  the job's resources (``max_concurrent`` and retries come from the usual ``multiprocess`` run
  config; ``in_process`` keeps every step in the run pod);
- otherwise Dagster's default executor (processes on the machine that runs the job).
"""

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import dagster as dg
from dagster._config import process_config
from dagster._core.definitions.executor_definition import multiple_process_executor_requirements

from twinme_ops.common.quantity import parse_quantity

K8S_CONFIG_TAG = "dagster-k8s/config"
# read by Dagster's run monitoring (enabled in dagster.yaml and the Helm values)
MAX_RUNTIME_TAG = "dagster/max_runtime"
K8S_EXECUTOR_VAR = "TWINME_K8S_EXECUTOR"
_RESOURCE_NAMES = ("cpu", "memory", "ephemeral-storage")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class PodResources:
    """Container resources (requests and limits) of one job's pods on Kubernetes.

    ``requests`` is what the scheduler reserves, ``limits`` what the container may use; both take
    Kubernetes quantities for ``cpu``, ``memory`` and ``ephemeral-storage`` (scratch restores and
    dumps write to the pod's disk). Invalid quantities, or a request above its limit, raise
    ``ValueError`` when the job is defined.
    """

    requests: Mapping[str, str] = field(default_factory=dict)
    limits: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind, values in (("requests", self.requests), ("limits", self.limits)):
            for name, value in values.items():
                if name not in _RESOURCE_NAMES:
                    raise ValueError(
                        f"unknown resource {name!r} in {kind}: use {', '.join(_RESOURCE_NAMES)}"
                    )
                try:
                    parse_quantity(value)
                except ValueError:
                    raise ValueError(
                        f"{kind}.{name}={value!r} is not a Kubernetes quantity (e.g. 500m, 2Gi)"
                    ) from None
        for name, request in self.requests.items():
            limit = self.limits.get(name)
            if limit is not None and parse_quantity(request) > parse_quantity(limit):
                raise ValueError(f"requests.{name}={request} is above limits.{name}={limit}")

    def k8s_config(self) -> dict[str, Any]:
        """The ``dagster-k8s/config`` value: a container config with these resources."""
        resources = {"requests": dict(self.requests), "limits": dict(self.limits)}
        return {"container_config": {"resources": resources}}

    def tags(self) -> dict[str, str]:
        """Job tags that give the run pod these resources (the ``K8sRunLauncher`` reads them)."""
        return {K8S_CONFIG_TAG: json.dumps(self.k8s_config(), sort_keys=True)}


def max_runtime(hours: float) -> dict[str, str]:
    """Job tag: run monitoring fails a run still going after ``hours``, which alerts Slack.

    A backup waiting forever on a lock, or a drill stuck on a full disk, then wakes someone that
    night instead of the freshness alert a day later. A launch may override it with its own
    ``dagster/max_runtime`` tag (seconds), e.g. for a first backup of a very large database.
    """
    if not hours > 0:
        raise ValueError(f"max runtime must be positive, got {hours} h")
    return {MAX_RUNTIME_TAG: str(round(hours * 3600))}


def step_pods_enabled() -> bool:
    """Whether heavy jobs run each step in its own pod (``TWINME_K8S_EXECUTOR``, see module doc).

    Raises ``ValueError`` for a value that is not a boolean, or for step pods asked for outside
    production, where no cluster image or secrets exist for them.
    """
    raw = os.environ.get(K8S_EXECUTOR_VAR, "").strip().lower()
    if raw not in _TRUE + _FALSE:
        raise ValueError(
            f"{K8S_EXECUTOR_VAR}={raw!r} is not a boolean. Fix: set it to 1 (one pod per step) "
            "or 0 (steps in the run's own pod)."
        )
    if raw in _FALSE:
        return False
    env = os.environ.get("TWINME_ENV", "local").strip() or "local"
    if env != "production":
        raise ValueError(
            f"{K8S_EXECUTOR_VAR}=1 needs TWINME_ENV=production (got {env!r}): step pods run the "
            f"code location's image in the cluster. Fix: unset {K8S_EXECUTOR_VAR} to run the "
            "steps locally, or run in the production deployment (deploy/dagster)."
        )
    return True


def _k8s_executor(context: dg.InitExecutorContext, pod: PodResources) -> dg.Executor:
    """``k8s_job_executor`` with ``pod`` on every step, and the run's multiprocess settings."""
    # imported when a run starts step pods, not when the code location loads (the kubernetes
    # client costs about half a second)
    from dagster_k8s import K8sRunLauncher, k8s_job_executor

    if not isinstance(context.instance.run_launcher, K8sRunLauncher):
        raise dg.DagsterInvariantViolationError(
            f"{K8S_EXECUTOR_VAR}=1 but this instance launches runs with "
            f"{type(context.instance.run_launcher).__name__}, not the K8sRunLauncher: step pods "
            f"need the Helm deployment's instance (deploy/dagster). Fix: unset {K8S_EXECUTOR_VAR}."
        )
    multiprocess = cast("Mapping[str, Any]", context.executor_config.get("multiprocess") or {})
    wanted: dict[str, Any] = {"step_k8s_config": pod.k8s_config()}
    for key in ("max_concurrent", "retries", "tag_concurrency_limits"):
        if multiprocess.get(key) is not None:
            wanted[key] = multiprocess[key]
    # k8s_job_executor's creation function expects its config with the schema's defaults filled
    # in, as Dagster would pass it: process it through that schema
    processed = process_config(k8s_job_executor.config_schema.config_type, wanted)
    if not processed.success:
        errors = "; ".join(e.message for e in processed.errors or [])
        raise dg.DagsterInvalidConfigError("invalid k8s_job_executor config", [], errors)
    create = k8s_job_executor.executor_creation_fn
    assert isinstance(processed.value, dict) and create is not None
    return create(
        dg.InitExecutorContext(
            job=context.job,
            executor_def=k8s_job_executor,
            executor_config=processed.value,
            instance=context.instance,
        )
    )


def step_pod_executor(pod: PodResources) -> dg.ExecutorDefinition:
    """The executor of a heavy job whose steps share no in-process or on-disk state.

    Its run config is that of Dagster's default executor (``multiprocess`` / ``in_process``);
    with step pods enabled (:func:`step_pods_enabled`) ``multiprocess`` launches one Kubernetes
    Job per step with ``pod``'s resources instead of one process per step.
    """

    default = dg.multi_or_in_process_executor.executor_creation_fn
    assert default is not None

    def create(context: dg.InitExecutorContext) -> dg.Executor:
        if "multiprocess" in context.executor_config and step_pods_enabled():
            return _k8s_executor(context, pod)
        return default(context)

    return dg.ExecutorDefinition(
        name="twinme_step_pods",
        config_schema=dg.multi_or_in_process_executor.config_schema.as_field(),
        requirements=multiple_process_executor_requirements(),
        executor_creation_fn=create,
        description=(
            f"One pod per step when {K8S_EXECUTOR_VAR}=1 in production (Kubernetes Jobs with "
            "the job's resources), else Dagster's default multiprocess/in-process executor."
        ),
    )
