"""deploy/dagster: twinme_ops in production on Kubernetes (the Dagster Helm chart, dagster-k8s).

What is checked, and against what:

- ``values.yaml`` renders, by the chart's rules (:func:`render_instance`, written from the chart's
  instance templates), to the committed ``dagster.yaml``, which Dagster's own instance schema and
  classes accept. The chart's JSON schema is not vendored and cannot be fetched in CI: the parts
  that matter are loaded into Dagster's real classes instead.
- The production instance (``dagster.yaml``, storage swapped for SQLite) launches runs through the
  real queue (twinme_ops' ``TwinmeRunCoordinator``, a ``QueuedRunCoordinator``) and
  ``K8sRunLauncher`` against kmock's Kubernetes API, from a real
  ``dagster api grpc`` code server started with the chart's arguments and environment. The Jobs
  are read back through the official client.
- With ``TWINME_K8S_EXECUTOR=1`` the run worker, started here with the run Job's own command as
  the kubelet would, launches one Kubernetes Job per step.
- ``rbac.yaml``: valid Kubernetes, exactly the API calls derived from the code, nothing
  cluster-wide. ``Dockerfile``: its structure (it is not built: the base image needs Docker Hub).
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import dagster_k8s
import kubernetes_validate
import pytest
import yaml
from dagster._config import process_config
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.executor.in_process import InProcessExecutor
from dagster._core.executor.multiprocess import MultiprocessExecutor
from dagster._core.instance.config import dagster_instance_config
from dagster._core.remote_representation.code_location import CodeLocation
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import GrpcServerTarget
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import (
    QueuedRunCoordinatorDaemon,
)
from dagster._grpc.client import DagsterGrpcClient
from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
from dagster_k8s import K8sRunLauncher
from dagster_shared.error import SerializableErrorInfo
from kubernetes import client as k8s_client
from kubernetes_validate.utils import all_versions
from packaging.version import Version

from tests.support.k8s_emulator import EmulatorHandle
from tests.support.k8s_jobs import declare_jobs, jobs_in
from twinme_ops.definitions import build_definitions
from twinme_ops.defs.backups.assets import backup_partitions
from twinme_ops.defs.backups.jobs import BACKUP_POD, DRILL_POD
from twinme_ops.defs.database.jobs import TUNING_POD
from twinme_ops.defs.executors import K8S_CONFIG_TAG, PodResources, step_pods_enabled
from twinme_ops.defs.recovery.jobs import RECOVERY_POD
from twinme_ops.defs.release.jobs import RELEASE_POD
from twinme_ops.defs.release.jwt_resources import JwtKeysResource
from twinme_ops.instance.run_coordinator import REFUSED_TAG, TwinmeRunCoordinator
from twinme_ops.scratch.local import free_port
from twinme_ops.servers.kube import KubernetesResource

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "dagster"
VALUES = DEPLOY / "values.yaml"
INSTANCE = DEPLOY / "dagster.yaml"
RBAC = DEPLOY / "rbac.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
# the in-cluster image builder: its calls go to the build namespace (twinme-build)
RELEASE = REPO / "twinme_ops" / "release"
CLUSTER_BUILD_MODULES = (
    RELEASE / "images" / "cluster.py",
    RELEASE / "images" / "cluster_follow.py",
)
# the app tests' Job (production): its calls go to the build namespace too
APP_TESTS_MODULES = (RELEASE / "app_tests" / "k8s.py", RELEASE / "app_tests" / "k8s_follow.py")
# the Job-following helpers both share
K8S_JOB_MODULE = RELEASE / "k8s_job.py"
BUILD_NAMESPACE_MODULES = (*CLUSTER_BUILD_MODULES, *APP_TESTS_MODULES, K8S_JOB_MODULE)
# base_backup_job's CloudNativePG Backup: its calls go to the database's namespace
CNPG_BACKUP_MODULE = REPO / "twinme_ops" / "backups" / "pitr" / "cnpg_backup.py"
CNPG_RETENTION_MODULE = REPO / "twinme_ops" / "backups" / "pitr" / "cnpg_retention.py"
# postgres_settings on CloudNativePG: its calls go to the database's namespace too
CNPG_SETTINGS_MODULE = REPO / "twinme_ops" / "database" / "postgres" / "settings" / "cnpg_api.py"
EXAMPLES = REPO / "examples" / "run_config"

# the Helm release and namespace dagster.yaml is rendered for (docs/deploy.md: helm upgrade
# --install dagster ... -n dagster)
RELEASE = "dagster"
NAMESPACE = "dagster"
LOCATION = "twinme_ops"
RUNS_SERVICE_ACCOUNT = "twinme-ops-runs"
OLDEST_SUPPORTED = Version("1.30")
K8S_VERSIONS = sorted({v for v in all_versions() if Version(v) >= OLDEST_SUPPORTED}, key=Version)

HEAVY_JOBS: dict[str, PodResources] = {
    "nightly_backup_job": BACKUP_POD,
    "restore_drill_job": DRILL_POD,
    "recover_job": RECOVERY_POD,
    "release_job": RELEASE_POD,
    "database_tuning_job": TUNING_POD,
}
# jobs whose steps may each run in a pod (they share only external state)
STEP_POD_JOBS = {"nightly_backup_job", "restore_drill_job", "database_tuning_job", "retention_job"}

# keys of the twinme-ops-env secret (docs/deploy.md): what the code location needs and must not
# see in a ConfigMap. Dummy values stand in for them in the processes these tests start.
SECRET_ENV = {
    "DATABASE_URL": "postgresql://twinme:dummy-db-password-7f3a@db.invalid:5432/twinme",
    "REDIS_URL": "redis://:dummy-redis-password-7f3a@redis.invalid:6379/0",
    "TWINME_BACKUP_ENCRYPTION_KEY": "ZHVtbXktYmFja3VwLWtleS03ZjNhLWR1bW15LWR1bW15",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.invalid/services/dummy-7f3a",
    "TWINME_GIT_REMOTE": "https://dummy-token-7f3a@git.invalid/twinme/api.git",
}
AWS_SECRET_ENV = {
    "AWS_ACCESS_KEY_ID": "DUMMYACCESSKEY7F3A",
    "AWS_SECRET_ACCESS_KEY": "dummy-secret-access-key-7f3a",
}


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _values() -> dict[str, Any]:
    return _yaml(VALUES)


def _user_deployment(values: Mapping[str, Any]) -> dict[str, Any]:
    deployments = values["dagster-user-deployments"]["deployments"]
    assert len(deployments) == 1, "one code location: twinme_ops"
    return deployments[0]


def _image(values: Mapping[str, Any]) -> str:
    image = _user_deployment(values)["image"]
    return f"{image['repository']}:{image['tag']}"


# -- the chart's rendering of values.yaml into the instance ConfigMap ------------------------------


def _render_run_launcher(values: Mapping[str, Any]) -> dict[str, Any]:
    """The chart's dagsterYaml.runLauncher.custom (config as given) or .k8s template."""
    launcher = values["runLauncher"]
    if launcher["type"] == "CustomRunLauncher":
        custom = launcher["config"]["customRunLauncher"]
        return {"module": custom["module"], "class": custom["class"], "config": custom["config"]}
    assert launcher["type"] == "K8sRunLauncher"
    cfg = launcher["config"]["k8sRunLauncher"]
    out: dict[str, Any] = {"load_incluster_config": cfg["loadInclusterConfig"]}
    if cfg.get("kubeconfigFile"):
        out["kubeconfig_file"] = cfg["kubeconfigFile"]
    out["job_namespace"] = cfg.get("jobNamespace") or NAMESPACE
    out["image_pull_policy"] = cfg["imagePullPolicy"]
    if values.get("imagePullSecrets"):
        out["image_pull_secrets"] = values["imagePullSecrets"]
    out["service_account_name"] = values["serviceAccount"]["name"]
    if "image" in cfg:
        out["job_image"] = f"{cfg['image']['repository']}:{cfg['image']['tag']}"
    out["dagster_home"] = "/opt/dagster/dagster_home"
    out["instance_config_map"] = f"{RELEASE}-instance"
    out["postgres_password_secret"] = values["global"]["postgresqlSecretName"]
    for key, target in (("envConfigMaps", "env_config_maps"), ("envSecrets", "env_secrets")):
        names = [item["name"] for item in cfg.get(key) or [] if "name" in item]
        if names:
            out[target] = names
    for key, target in (
        ("envVars", "env_vars"),
        ("volumeMounts", "volume_mounts"),
        ("volumes", "volumes"),
        ("labels", "labels"),
        ("resources", "resources"),
    ):
        if cfg.get(key):
            out[target] = cfg[key]
    if cfg.get("failPodOnRunFailure"):
        out["fail_pod_on_run_failure"] = True
    if cfg.get("schedulerName"):
        out["scheduler_name"] = cfg["schedulerName"]
    if cfg.get("securityContext"):
        out["security_context"] = cfg["securityContext"]
    run_k8s = cfg.get("runK8sConfig") or {}
    if run_k8s:
        names = {
            "containerConfig": "container_config",
            "podSpecConfig": "pod_spec_config",
            "podTemplateSpecMetadata": "pod_template_spec_metadata",
            "jobSpecConfig": "job_spec_config",
            "jobMetadata": "job_metadata",
        }
        out["run_k8s_config"] = {names[k]: v for k, v in run_k8s.items() if v}
    return {"module": "dagster_k8s", "class": "K8sRunLauncher", "config": out}


def render_instance(values: Mapping[str, Any]) -> dict[str, Any]:
    """The dagster.yaml that the Dagster chart's configmap-instance.yaml renders from ``values``.

    Written from the chart's templates (configmap-instance.yaml and helpers/instance/*.tpl) for
    the settings values.yaml uses; a setting it does not know fails the test rather than being
    silently left out.
    """
    out: dict[str, Any] = {}
    scheduler = values.get("scheduler", {}).get("type", "DagsterDaemonScheduler")
    assert scheduler == "DagsterDaemonScheduler"
    out["scheduler"] = {"module": "dagster._core.scheduler", "class": "DagsterDaemonScheduler"}

    pg = values["postgresql"]
    assert pg["enabled"] is False, "external PostgreSQL only"
    db: dict[str, Any] = {
        "username": pg["postgresqlUsername"],
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "hostname": pg["postgresqlHost"],
        "db_name": pg["postgresqlDatabase"],
        "port": pg["service"]["port"],
        "params": pg.get("postgresqlParams") or {},
    }
    if pg.get("postgresqlScheme"):
        db["scheme"] = pg["postgresqlScheme"]
    for key, module, cls in (
        ("schedule_storage", "dagster_postgres.schedule_storage", "PostgresScheduleStorage"),
        ("run_storage", "dagster_postgres.run_storage", "PostgresRunStorage"),
        ("event_log_storage", "dagster_postgres.event_log", "PostgresEventLogStorage"),
    ):
        out[key] = {"module": module, "class": cls, "config": {"postgres_db": dict(db)}}

    out["run_launcher"] = _render_run_launcher(values)

    daemon = values["dagsterDaemon"]
    coordinator = daemon["runCoordinator"]
    custom_type = coordinator["type"] == "CustomRunCoordinator"
    if daemon["enabled"] and coordinator["enabled"] and custom_type:
        # the chart's dagsterYaml.runCoordinator.custom: module, class, config as given
        custom = coordinator["config"]["customRunCoordinator"]
        out["run_coordinator"] = {
            "module": custom["module"],
            "class": custom["class"],
            "config": custom.get("config"),
        }
    elif daemon["enabled"] and coordinator["enabled"]:
        assert coordinator["type"] == "QueuedRunCoordinator"
        queued = coordinator["config"].get("queuedRunCoordinator") or {}
        # with any setting here, some chart versions render max_concurrent_runs: -1, which Dagster
        # refuses next to concurrency.runs
        assert not any(v is not None for v in queued.values()), queued
        out["run_coordinator"] = {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
        }

    logs = values["computeLogManager"]
    assert logs["type"] == "S3ComputeLogManager"
    s3 = dict(logs["config"]["s3ComputeLogManager"])
    assert set(s3) <= {"bucket", "prefix"}, f"render {set(s3)} too"
    out["compute_logs"] = {
        "module": "dagster_aws.s3.compute_log_manager",
        "class": "S3ComputeLogManager",
        "config": s3,
    }

    python_logs = values.get("pythonLogs") or {}
    if python_logs:
        names = {
            "pythonLogLevel": "python_log_level",
            "managedPythonLoggers": "managed_python_loggers",
            "dagsterHandlerConfig": "dagster_handler_config",
        }
        out["python_logs"] = {names[k]: v for k, v in python_logs.items() if v}

    monitoring = daemon.get("runMonitoring") or {}
    if daemon["enabled"] and monitoring.get("enabled"):
        rendered: dict[str, Any] = {
            "enabled": True,
            "start_timeout_seconds": monitoring["startTimeoutSeconds"],
        }
        for key, target in (
            ("cancelTimeoutSeconds", "cancel_timeout_seconds"),
            ("maxRuntimeSeconds", "max_runtime_seconds"),
            ("maxResumeRunAttempts", "max_resume_run_attempts"),
        ):
            if monitoring.get(key) is not None:
                rendered[target] = monitoring[key]
        rendered["poll_interval_seconds"] = monitoring["pollIntervalSeconds"]
        rendered["free_slots_after_run_end_seconds"] = monitoring["freeSlotsAfterRunEndSeconds"]
        out["run_monitoring"] = rendered

    retries = daemon.get("runRetries") or {}
    if daemon["enabled"] and retries.get("enabled"):
        rendered = {"enabled": True}
        if retries.get("maxRetries"):
            rendered["max_retries"] = retries["maxRetries"]
        if "retryOnAssetOrOpFailure" in retries:
            rendered["retry_on_asset_or_op_failure"] = retries["retryOnAssetOrOpFailure"]
        out["run_retries"] = rendered

    for kind in ("sensors", "schedules"):
        threads = daemon.get(kind) or {}
        if daemon["enabled"] and threads.get("useThreads"):
            rendered = {"use_threads": True}
            if threads.get("numWorkers"):
                rendered["num_workers"] = threads["numWorkers"]
            out[kind] = rendered

    out["telemetry"] = {"enabled": values["telemetry"]["enabled"]}

    retention = values.get("retention") or {}
    if retention.get("enabled"):
        out["retention"] = {
            kind: {"purge_after_days": retention[kind]["purgeAfterDays"]}
            for kind in ("schedule", "sensor")
            if retention.get(kind)
        }

    concurrency = values.get("concurrency") or {}
    if concurrency.get("enabled"):
        pools = concurrency.get("pools") or {}
        runs = concurrency.get("runs") or {}
        rendered = {}
        if pools:
            names = {
                "defaultLimit": "default_limit",
                "granularity": "granularity",
                "opGranularityRunBuffer": "op_granularity_run_buffer",
            }
            rendered["pools"] = {names[k]: v for k, v in pools.items()}
        if runs:
            rendered["runs"] = {}
            if runs.get("maxConcurrentRuns") is not None:
                rendered["runs"]["max_concurrent_runs"] = runs["maxConcurrentRuns"]
            if runs.get("tagConcurrencyLimits"):
                rendered["runs"]["tag_concurrency_limits"] = runs["tagConcurrencyLimits"]
        out["concurrency"] = rendered
    return out


def chart_container_context(values: Mapping[str, Any]) -> dict[str, Any] | None:
    """What the chart passes to ``dagster api grpc --container-context`` for the deployment.

    From dagster-user-deployments' k8sContainerContext helper (includeConfigInLaunchedRuns):
    runs launched from this code location get its env ConfigMap, secrets, resources, namespace
    and ServiceAccount. Nothing (None) when includeConfigInLaunchedRuns is off.
    """
    dep = _user_deployment(values)
    if not (dep.get("includeConfigInLaunchedRuns") or {"enabled": True})["enabled"]:
        return None
    subchart = values["dagster-user-deployments"]
    fullname = f"{RELEASE}-dagster-user-deployments"
    k8s: dict[str, Any] = {
        "image_pull_policy": dep["image"]["pullPolicy"],
        "env_config_maps": [
            f"{fullname}-{dep['name']}-user-env",
            *[c["name"] for c in dep.get("envConfigMaps") or []],
        ],
    }
    if dep.get("envSecrets"):
        k8s["env_secrets"] = [s["name"] for s in dep["envSecrets"]]
    for key, target in (("volumeMounts", "volume_mounts"), ("volumes", "volumes")):
        if dep.get(key):
            k8s[target] = dep[key]
    if dep.get("resources"):
        k8s["resources"] = dep["resources"]
    k8s["namespace"] = NAMESPACE
    k8s["service_account_name"] = (subchart.get("serviceAccount") or {}).get("name") or (
        f"{fullname}-user-deployments"
    )
    return {"k8s": k8s}


def test_the_values_render_to_the_committed_instance_config() -> None:
    """dagster.yaml is exactly what the chart makes of values.yaml: they cannot drift apart."""
    assert render_instance(_values()) == _yaml(INSTANCE)


def test_the_instance_config_is_accepted_by_dagster(tmp_path: Path) -> None:
    """Dagster's instance schema, and the config schemas of the classes it names, accept it."""
    (tmp_path / "dagster.yaml").write_text(INSTANCE.read_text())
    config, custom_class = dagster_instance_config(str(tmp_path))
    assert custom_class is None
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    for cls, section in ((K8sRunLauncher, "run_launcher"), (S3ComputeLogManager, "compute_logs")):
        result = process_config(cls.config_type(), config[section]["config"])
        assert result.success, f"{section}: {[e.message for e in result.errors or []]}"
    for storage in ("run_storage", "event_log_storage", "schedule_storage"):
        assert config[storage]["module"].startswith("dagster_postgres."), storage
        assert config[storage]["config"]["postgres_db"]["password"] == {
            "env": "DAGSTER_PG_PASSWORD"
        }
    # a run Job is an isolated, throwaway pod: Dagster must not resume it halfway
    assert config["run_monitoring"]["max_resume_run_attempts"] == 0
    assert config["run_retries"]["retry_on_asset_or_op_failure"] is False
    # the queue with the backup partition gate, configured as the queue it extends
    coordinator = config["run_coordinator"]
    assert (coordinator["module"], coordinator["class"]) == (
        "twinme_ops.instance.run_coordinator",
        "TwinmeRunCoordinator",
    )
    assert issubclass(TwinmeRunCoordinator, QueuedRunCoordinator)
    result = process_config(TwinmeRunCoordinator.config_type(), coordinator["config"])
    assert result.success, [e.message for e in result.errors or []]
    assert _yaml(REPO / "dagster.yaml")["run_coordinator"] == {
        "module": "twinme_ops.instance.run_coordinator",
        "class": "TwinmeRunCoordinator",
    }


def test_the_webserver_and_daemon_run_the_image_that_holds_the_run_coordinator() -> None:
    """Both submit runs (UI launches; schedules, sensors, backfills): both import the gate."""
    values = _values()
    code = _user_deployment(values)["image"]
    for part in ("dagsterWebserver", "dagsterDaemon"):
        image = values[part]["image"]
        assert (image["repository"], image["tag"]) == (code["repository"], code["tag"]), part
    header = VALUES.read_text().split("\n\n", 1)[0]
    for part in ("dagsterWebserver", "dagsterDaemon"):
        assert f"--set {part}.image.tag=$GIT_SHA" in header


def test_production_limits_are_the_local_instance_limits() -> None:
    """One backup, retention, recovery and API change at a time, in production as locally."""
    local = _yaml(REPO / "dagster.yaml")
    assert _yaml(INSTANCE)["concurrency"] == local["concurrency"]
    limits = {
        (t["key"], t.get("value")) for t in local["concurrency"]["runs"]["tag_concurrency_limits"]
    }
    assert {
        ("twinme/operation", "backup"),
        ("twinme/operation", "recovery"),
        ("twinme/api-change", None),
    } <= limits


def test_the_values_hold_no_secret_and_name_every_setting() -> None:
    """Secrets come from Secrets by name; the ConfigMap env covers the configuration contract
    (docs/architecture.md)."""
    values = _values()
    dep = _user_deployment(values)
    env = dep["env"]
    leaked = set(env) & (set(SECRET_ENV) | set(AWS_SECRET_ENV))
    assert not leaked, f"secrets in the plain env ConfigMap: {leaked}"
    assert not [k for k in env if re.search(r"KEY|TOKEN|PASSWORD|SECRET|WEBHOOK", k)]
    # everything build_resources requires in production is configured, as env or secret
    for required in ("DATABASE_URL", "REDIS_URL", "TWINME_FILES_DIR", "TWINME_BACKUP_URL"):
        assert required in env or required in SECRET_ENV, required
    assert env["TWINME_ENV"] == "production"
    assert env["TWINME_K8S_EXECUTOR"] == "1"
    assert [s["name"] for s in dep["envSecrets"]] == ["twinme-ops-env", "twinme-ops-aws"]
    # the secret keys are documented where an operator creates them
    text = VALUES.read_text()
    for key in [*SECRET_ENV, *AWS_SECRET_ENV]:
        assert key in text, f"values.yaml does not document the secret key {key}"
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["postgresql"]["postgresqlPassword"] == ""
    assert dep["image"]["tag"] not in ("", "latest"), "deploy an immutable tag"
    assert dep["dagsterApiGrpcArgs"] == ["-m", "twinme_ops.definitions"]
    for path in (VALUES, INSTANCE, RBAC, DOCKERFILE):
        body = path.read_text()
        for pattern in (
            r"AKIA[0-9A-Z]{16}",
            r"-----BEGIN",
            r"hooks\.slack\.com/services/\w",
            r"xox[bp]-",
        ):
            assert not re.search(pattern, body), f"{path.name} holds a credential ({pattern})"


def test_the_kubernetes_fragments_of_the_values_are_valid() -> None:
    """The code server's pod settings are valid Kubernetes (strict: no unknown field)."""
    dep = _user_deployment(_values())
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "twinme-ops", "namespace": NAMESPACE},
        "spec": {
            "securityContext": dep["podSecurityContext"],
            "containers": [
                {
                    "name": "dagster",
                    "image": _image(_values()),
                    "resources": dep["resources"],
                    "securityContext": dep["securityContext"],
                }
            ],
        },
    }
    for version in (K8S_VERSIONS[0], K8S_VERSIONS[-1]):
        kubernetes_validate.validate(pod, version, strict=True)


# -- heavy jobs: pod resources and the step-pod executor ------------------------------------------


def test_heavy_jobs_carry_their_pod_resources() -> None:
    """Each heavy job's dagster-k8s/config tag holds its resources; light jobs have none."""
    defs = build_definitions()
    for name, pod in HEAVY_JOBS.items():
        job = defs.resolve_job_def(name)
        assert json.loads(job.run_tags[K8S_CONFIG_TAG]) == pod.k8s_config(), name
        resources = pod.k8s_config()["container_config"]["resources"]
        assert set(resources["limits"]) == {"cpu", "memory", "ephemeral-storage"}, name
        on_step_pods = job.executor_def.name == "twinme_step_pods"
        assert on_step_pods == (name in STEP_POD_JOBS), name
    assert K8S_CONFIG_TAG not in defs.resolve_job_def("retention_job").run_tags
    # run retries are on in production (a crashed pod runs again), except for a recovery
    assert _yaml(INSTANCE)["run_retries"]["max_retries"] == 1
    assert defs.resolve_job_def("recover_job").run_tags["dagster/max_retries"] == "0"


def test_step_pod_jobs_pass_no_values_between_steps() -> None:
    """A step pod cannot read another pod's disk: step-pod jobs have only Nothing inputs.

    recover_job hands a RecoveryState from op to op, so it keeps one pod per run; release_job
    shares a checkout on disk, which no graph shows, so it does too (see jobs.py).
    """
    defs = build_definitions()

    def value_inputs(job_name: str) -> list[str]:
        job = defs.resolve_job_def(job_name)
        return [
            f"{node.name}.{inp.name}"
            for node in job.graph.nodes
            for inp in node.definition.input_defs
            if not inp.dagster_type.is_nothing
        ]

    for name in STEP_POD_JOBS:
        assert value_inputs(name) == [], name
    assert value_inputs("recover_job"), "recover_job passes values: it must keep one pod per run"


@pytest.mark.parametrize(
    ("env", "switch", "expected"),
    [
        ("production", None, False),
        ("production", "0", False),
        ("production", "1", True),
        ("production", "true", True),
        ("local", None, False),
        ("local", "0", False),
    ],
)
def test_the_step_pod_switch(
    monkeypatch: pytest.MonkeyPatch, env: str, switch: str | None, expected: bool
) -> None:
    monkeypatch.setenv("TWINME_ENV", env)
    if switch is None:
        monkeypatch.delenv("TWINME_K8S_EXECUTOR", raising=False)
    else:
        monkeypatch.setenv("TWINME_K8S_EXECUTOR", switch)
    assert step_pods_enabled() is expected


@pytest.mark.parametrize(
    ("env", "switch", "message"),
    [
        ("local", "1", r"TWINME_K8S_EXECUTOR=1 needs TWINME_ENV=production .*Fix: unset"),
        ("production", "maybe", r"TWINME_K8S_EXECUTOR='maybe' is not a boolean\. Fix: set it"),
    ],
)
def test_a_wrong_step_pod_switch_is_refused(
    monkeypatch: pytest.MonkeyPatch, env: str, switch: str, message: str
) -> None:
    monkeypatch.setenv("TWINME_ENV", env)
    monkeypatch.setenv("TWINME_K8S_EXECUTOR", switch)
    with pytest.raises(ValueError, match=message):
        step_pods_enabled()


def _create_executor(job_name: str, run_config: Mapping[str, Any]) -> dg.Executor:
    """The executor Dagster creates for ``job_name`` in a run worker, on an ephemeral instance."""
    recon_repo = ReconstructableRepository.for_module("twinme_ops.definitions", "defs", str(REPO))
    recon_job = recon_repo.get_reconstructable_job(job_name)
    executor_def = recon_job.get_definition().executor_def
    field = executor_def.config_schema.as_field()
    # without execution config, Dagster uses the field's default (multiprocess)
    value = run_config or (field.default_value if field.default_provided else {})
    processed = process_config(field.config_type, value)
    assert processed.success and isinstance(processed.value, dict)
    create = executor_def.executor_creation_fn
    assert create is not None
    return create(
        dg.InitExecutorContext(
            job=recon_job,
            executor_def=executor_def,
            executor_config=processed.value,
            instance=dg.DagsterInstance.ephemeral(),
        )
    )


def test_local_runs_keep_dagster_default_executor(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without the switch: a process per step (or all in process); with it, only in a cluster."""
    monkeypatch.delenv("TWINME_K8S_EXECUTOR", raising=False)
    monkeypatch.setenv("TWINME_ENV", "local")
    assert isinstance(_create_executor("nightly_backup_job", {}), MultiprocessExecutor)
    executor = _create_executor("database_tuning_job", {"in_process": {}})
    assert isinstance(executor, InProcessExecutor)

    # the code location's production environment (values.yaml), secrets as dummies
    for name, value in {**_user_deployment(_values())["env"], **SECRET_ENV}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TWINME_HOME", str(tmp_path))
    assert os.environ["TWINME_K8S_EXECUTOR"] == "1"
    # in_process keeps every step in the run pod, even with step pods on
    executor = _create_executor("database_tuning_job", {"in_process": {}})
    assert isinstance(executor, InProcessExecutor)
    # step pods need the K8sRunLauncher's cluster, image and secrets
    with pytest.raises(dg.DagsterInvariantViolationError, match="not the K8sRunLauncher"):
        _create_executor("nightly_backup_job", {})


def test_a_local_run_of_a_heavy_job_uses_processes(tmp_path: Path) -> None:
    """`dagster job execute` locally: the step runs in a subprocess and fails with its own error.

    restore_drill_job against an empty store: its op starts under the multiprocess executor and
    reports that there is no backup set to drill, not an executor problem.
    """
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TWINME_", "DAGSTER_"))},
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "TWINME_HOME": str(tmp_path / "twinme"),
        "TWINME_BACKUP_URL": f"file://{tmp_path / 'empty-store'}",
    }
    (tmp_path / "dagster_home").mkdir()
    (tmp_path / "empty-store").mkdir()
    dagster_cli = str(Path(sys.executable).parent / "dagster")
    argv = [
        dagster_cli,
        "job",
        "execute",
        "-m",
        "twinme_ops.definitions",
        "-j",
        "restore_drill_job",
    ]
    proc = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output[-3000:]
    assert "multiprocess executor" in output, output[-3000:]
    assert "no complete backup set" in output, output[-3000:]


# -- the production instance against kmock's Kubernetes API ---------------------------------------


@dataclass
class CodeServer:
    """A ``dagster api grpc`` process serving twinme_ops the way the chart's Deployment does."""

    port: int
    image: str
    env: dict[str, str]


def _pod_env(values: Mapping[str, Any], scratch: Path) -> dict[str, str]:
    """The environment of a twinme_ops pod: the values' env, the secrets (dummy), DAGSTER_HOME.

    TWINME_HOME and TWINME_FILES_DIR point at a temporary directory instead of the volumes.
    """
    base = {k: v for k, v in os.environ.items() if not k.startswith(("TWINME_", "DAGSTER_"))}
    base.pop("KUBECONFIG", None)
    env = {**base, **_user_deployment(values)["env"], **SECRET_ENV, **AWS_SECRET_ENV}
    env["TWINME_HOME"] = str(scratch / "twinme")
    env["TWINME_FILES_DIR"] = str(scratch / "files")
    return env


def _stop(proc: subprocess.Popen[Any], timeout: float = 30) -> None:
    """SIGTERM the process group ``proc`` leads, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
def code_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CodeServer]:
    """The chart's user deployment as a local process: its args, env and container context."""
    values = _values()
    dep = _user_deployment(values)
    scratch = tmp_path_factory.mktemp("code-server")
    port = free_port()
    image = _image(values)
    env = _pod_env(values, scratch)
    env["DAGSTER_CURRENT_IMAGE"] = image
    # the chart passes --container-context through the CLI's environment prefix, if at all
    container_context = chart_container_context(values)
    if container_context is not None:
        env["DAGSTER_CLI_API_GRPC_CONTAINER_CONTEXT"] = json.dumps(container_context)
    dagster_cli = str(Path(sys.executable).parent / "dagster")
    argv = [
        dagster_cli,
        "api",
        "grpc",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        *dep["dagsterApiGrpcArgs"],
    ]
    log = (scratch / "grpc.log").open("w")
    proc = subprocess.Popen(
        argv, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        client = DagsterGrpcClient(port=port, host="127.0.0.1")
        deadline = time.monotonic() + 120
        while True:
            try:
                client.ping("ready?")
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"dagster api grpc did not start ({shlex.join(argv)}):\n"
                        + (scratch / "grpc.log").read_text()[-3000:]
                    ) from None
                time.sleep(0.2)
        yield CodeServer(port=port, image=image, env=env)
    finally:
        _stop(proc)
        log.close()


@dataclass
class Production:
    """The production instance on kmock: its instance, workspace and the kubeconfig it uses."""

    instance: dg.DagsterInstance
    workspace: WorkspaceProcessContext
    kubeconfig: Path
    code_server: CodeServer

    def location(self) -> CodeLocation:
        return self.workspace.create_request_context().get_code_location(LOCATION)


@pytest.fixture
def production(
    k8s_emulator: tuple[Path, EmulatorHandle], code_server: CodeServer, tmp_path: Path
) -> Iterator[Production]:
    """deploy/dagster/dagster.yaml with SQLite storage and its K8sRunLauncher on kmock's API."""
    kubeconfig, handle = k8s_emulator
    declare_jobs(handle)
    config = _yaml(INSTANCE)
    for storage in ("run_storage", "event_log_storage", "schedule_storage"):
        del config[storage]
    home = tmp_path / "dagster_home"
    home.mkdir()
    config["storage"] = {"sqlite": {"base_dir": str(home)}}
    # no S3 here; what is tested is where runs go, not where their stdout goes
    config["compute_logs"] = {
        "module": "dagster._core.storage.noop_compute_log_manager",
        "class": "NoOpComputeLogManager",
    }
    launcher = config["run_launcher"]["config"]
    assert launcher["load_incluster_config"] is True  # production: the pod's ServiceAccount
    launcher["load_incluster_config"] = False
    launcher["kubeconfig_file"] = str(kubeconfig)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    # K8sRunLauncher loads its kubeconfig into the client's process-wide default configuration
    saved_default = k8s_client.Configuration.get_default_copy()
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            assert isinstance(instance.run_launcher, K8sRunLauncher)
            target = GrpcServerTarget(
                host="127.0.0.1", port=code_server.port, socket=None, location_name=LOCATION
            )
            with WorkspaceProcessContext(instance, target) as workspace:
                yield Production(instance, workspace, kubeconfig, code_server)
    finally:
        k8s_client.Configuration.set_default(saved_default)


def _run_config(job_name: str) -> dict[str, Any]:
    path = EXAMPLES / f"{job_name}.yaml"
    return (_yaml(path) or {}) if path.exists() else {}


def submit(
    production: Production,
    job_name: str,
    partition: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> dg.DagsterRun:
    """Create and submit a run as the scheduler does: the job's run tags, the example config.

    ``tags`` are added on top of the job's, as a person launching from the UI can add them.
    """
    location = production.location()
    [repo_name] = location.get_repository_names()
    repo = location.get_repository(repo_name)
    remote_job = repo.get_full_job(job_name)
    run_config = _run_config(job_name)
    plan = location.get_execution_plan(
        remote_job, run_config, step_keys_to_execute=None, known_state=None
    )
    run_tags = {**remote_job.run_tags, **(tags or {})}
    if partition:
        run_tags["dagster/partition"] = partition
    run = production.instance.create_run(
        job_name=job_name,
        run_id=None,
        run_config=run_config,
        resolved_op_selection=None,
        step_keys_to_execute=None,
        op_selection=None,
        status=dg.DagsterRunStatus.NOT_STARTED,
        root_run_id=None,
        parent_run_id=None,
        tags=run_tags,
        job_snapshot=remote_job.job_snapshot,
        execution_plan_snapshot=plan.execution_plan_snapshot,
        parent_job_snapshot=remote_job.parent_job_snapshot,
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(),
        asset_selection=None,
        asset_check_selection=None,
        asset_graph=repo.asset_graph,
    )
    return production.instance.submit_run(run.run_id, production.workspace.create_request_context())


def dequeue(production: Production) -> None:
    """One iteration of the daemon's queue: launches what the concurrency limits allow."""
    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
    for event in daemon.run_iteration(production.workspace):
        assert not isinstance(event, SerializableErrorInfo), event


def _status(production: Production, run: dg.DagsterRun) -> dg.DagsterRunStatus:
    found = production.instance.get_run_by_id(run.run_id)
    assert found is not None
    return found.status


def _by_run_id(jobs: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    return {job["metadata"]["labels"]["dagster/run-id"]: job for job in jobs.values()}


def assert_twinme_pod(job: Mapping[str, Any], pod: PodResources, code_server: CodeServer) -> None:
    """A run or step Job of twinme_ops: image, secrets, resources, identity, valid, no secret."""
    spec = job["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["image"] == code_server.image
    secrets = [e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e]
    assert sorted(secrets) == ["twinme-ops-aws", "twinme-ops-env"]
    password = {"secretKeyRef": {"name": "dagster-postgresql", "key": "postgresql-password"}}
    assert {"name": "DAGSTER_PG_PASSWORD", "valueFrom": password} in container["env"]
    assert container["resources"] == pod.k8s_config()["container_config"]["resources"]
    assert spec["serviceAccountName"] == RUNS_SERVICE_ACCOUNT
    assert spec["automountServiceAccountToken"] is True
    assert spec["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/var/lib/twinme", "/var/lib/twinme-files"} <= mounts
    # secrets travel by reference only: no value is copied into the manifest
    manifest = json.dumps(job)
    for value in [*SECRET_ENV.values(), *AWS_SECRET_ENV.values()]:
        assert value not in manifest
    kubernetes_validate.validate(dict(job), K8S_VERSIONS[-1], strict=True)


def _today() -> str:
    """Today's backup partition: the only one (with yesterday until noon) a backup may take."""
    partition = backup_partitions.get_last_partition_key()
    assert partition is not None
    return partition


def test_the_production_instance_refuses_a_backup_of_a_past_day_before_any_job(
    production: Production,
) -> None:
    """A backfill's or a launch's run for a past day fails at submission: no Kubernetes Job."""
    run = submit(production, "nightly_backup_job", "2026-01-01")
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert run.tags[REFUSED_TAG] == "backup-partition"
    messages = [e.message or "" for e in production.instance.all_logs(run.run_id)]
    refusal = "refusing to back up partition 2026-01-01: a backup is a copy of the present"
    assert any(m.startswith(refusal) for m in messages), messages
    dequeue(production)
    assert jobs_in(production.kubeconfig, NAMESPACE) == {}
    assert _status(production, run) == dg.DagsterRunStatus.FAILURE


def test_the_production_instance_launches_runs_as_kubernetes_jobs(
    production: Production,
) -> None:
    """Runs queue under the production limits, then become Jobs with each job's pod resources.

    Six runs are submitted; one daemon iteration launches what the limits allow: one backup
    (the second waits), one API change (recovery first; the release waits), at most four runs.
    When the recovery ends, the release goes. Each launched run is a Job in the dagster namespace
    with the code location's image, the env secrets, its job's resources and the runs' identity.
    """
    runs = {
        "backup-1": submit(production, "nightly_backup_job", _today()),
        "backup-2": submit(production, "nightly_backup_job", _today()),
        "drill": submit(production, "restore_drill_job"),
        "recover": submit(production, "recover_job"),
        "tuning": submit(production, "database_tuning_job"),
        "release": submit(production, "release_job"),
    }
    assert {_status(production, r) for r in runs.values()} == {dg.DagsterRunStatus.QUEUED}
    assert jobs_in(production.kubeconfig, NAMESPACE) == {}

    dequeue(production)
    launched = _by_run_id(jobs_in(production.kubeconfig, NAMESPACE))
    expected = {"backup-1", "drill", "recover", "tuning"}
    assert set(launched) == {runs[k].run_id for k in expected}
    for key, run in runs.items():
        want = dg.DagsterRunStatus.STARTING if key in expected else dg.DagsterRunStatus.QUEUED
        assert _status(production, run) == want, key

    production.instance.report_run_failed(runs["recover"])
    dequeue(production)
    launched = _by_run_id(jobs_in(production.kubeconfig, NAMESPACE))
    assert runs["release"].run_id in launched
    assert runs["backup-2"].run_id not in launched, "two backups at once"
    assert _status(production, runs["backup-2"]) == dg.DagsterRunStatus.QUEUED

    assert jobs_in(production.kubeconfig, "twinme-prod") == {}
    for key, run in runs.items():
        if key == "backup-2":
            continue
        job = launched[run.run_id]
        job_name = run.job_name
        assert job["metadata"]["labels"]["dagster/job"] == job_name
        assert job["metadata"]["labels"]["dagster/code-location"] == LOCATION
        assert_twinme_pod(job, HEAVY_JOBS[job_name], production.code_server)
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["args"][:3] == ["dagster", "api", "execute_run"]
        assert job["spec"]["ttlSecondsAfterFinished"] == 86400
        assert job["spec"]["backoffLimit"] == 0


# What a person launching a run could ask of its pod through the dagster-k8s/config tag (the UI's
# launchpad lets anyone who may launch add tags), in both spellings dagster_k8s accepts.
FORBIDDEN_POD_REQUESTS: dict[str, tuple[dict[str, Any], str]] = {
    "privileged container": (
        {"container_config": {"securityContext": {"privileged": True}}},
        "container_config.security_context",
    ),
    "privileged container (snake_case)": (
        {"container_config": {"security_context": {"privileged": True}}},
        "container_config.security_context",
    ),
    "root pod": (
        {"pod_spec_config": {"securityContext": {"runAsUser": 0, "runAsNonRoot": False}}},
        "pod_spec_config.security_context",
    ),
    "the chart's ServiceAccount": (
        {"pod_spec_config": {"serviceAccountName": "dagster"}},
        "pod_spec_config.service_account_name",
    ),
    "the node's filesystem": (
        {"pod_spec_config": {"volumes": [{"name": "host", "hostPath": {"path": "/"}}]}},
        "pod_spec_config.volumes",
    ),
    "host network": ({"pod_spec_config": {"hostNetwork": True}}, "pod_spec_config.host_network"),
    "webserver's labels (NetworkPolicies)": (
        {"pod_template_spec_metadata": {"labels": {"component": "dagster-webserver"}}},
        "pod_template_spec_metadata.labels",
    ),
    "environment": (
        {"container_config": {"env": [{"name": "TWINME_ENV", "value": "local"}]}},
        "container_config.env",
    ),
}


@pytest.mark.parametrize(
    ("request_", "violation"),
    list(FORBIDDEN_POD_REQUESTS.values()),
    ids=list(FORBIDDEN_POD_REQUESTS),
)
def test_the_launcher_refuses_a_run_whose_tag_asks_for_more_than_resources(
    production: Production, request_: dict[str, Any], violation: str
) -> None:
    """only_allow_user_defined_k8s_config_fields: dagster_k8s raises at launch (it does not strip
    the field and go on); the daemon fails the run with the reason, and no Job is created."""
    resources = DRILL_POD.k8s_config()["container_config"]["resources"]
    config = json.loads(json.dumps(request_))
    # the forbidden ask rides along with the resources a heavy job's tag carries
    config.setdefault("container_config", {})["resources"] = resources
    run = submit(production, "restore_drill_job", tags={K8S_CONFIG_TAG: json.dumps(config)})
    dequeue(production)
    assert jobs_in(production.kubeconfig, NAMESPACE) == {}
    assert _status(production, run) == dg.DagsterRunStatus.FAILURE
    messages = "\n".join(
        str(e.dagster_event.event_specific_data if e.dagster_event else "") + (e.message or "")
        for e in production.instance.all_logs(run.run_id)
    )
    assert "violated the allowed list" in messages, messages[-2000:]
    assert violation in messages, messages[-2000:]


def test_a_run_whose_tag_sets_only_resources_keeps_them(production: Production) -> None:
    """The allowed part of the tag still works: a run's own resources reach its pod, and the
    pod is the launcher's (identity, non-root), with no privileged container."""
    resources = {"requests": {"cpu": "300m", "memory": "700Mi"}, "limits": {"memory": "900Mi"}}
    tag = {"container_config": {"resources": resources}}
    run = submit(production, "retention_job", tags={K8S_CONFIG_TAG: json.dumps(tag)})
    dequeue(production)
    [job] = jobs_in(production.kubeconfig, NAMESPACE).values()
    assert job["metadata"]["labels"]["dagster/run-id"] == run.run_id
    spec = job["spec"]["template"]["spec"]
    [container] = spec["containers"]
    assert container["resources"] == resources
    assert spec["serviceAccountName"] == RUNS_SERVICE_ACCOUNT
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert not (container.get("securityContext") or {}).get("privileged")
    assert not [v for v in spec.get("volumes") or [] if "hostPath" in v]
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == (
        "run_worker"
    )


def test_the_production_launcher_allows_only_container_resources() -> None:
    """The allowlist is exactly what the code's own dagster-k8s/config tags use."""
    launcher = _yaml(INSTANCE)["run_launcher"]["config"]
    assert launcher["only_allow_user_defined_k8s_config_fields"] == {
        "container_config": {"resources": True}
    }
    defs = build_definitions()
    used: set[tuple[str, str]] = set()
    for job in defs.resolve_all_job_defs():
        if K8S_CONFIG_TAG in job.run_tags:
            config = json.loads(job.run_tags[K8S_CONFIG_TAG])
            used |= {(section, key) for section, fields in config.items() for key in fields}
    assert used == {("container_config", "resources")}
    # no container context from the code location either: it is checked against the same
    # allowlist, and would otherwise need ServiceAccount and env sources allowed
    assert chart_container_context(_values()) is None
    run_settings = ("env_config_maps", "env_secrets", "service_account_name", "resources")
    assert all(launcher.get(k) for k in run_settings)
    dep = _user_deployment(_values())
    assert launcher["resources"] == dep["resources"], "light jobs keep the code server's sizing"
    assert launcher["env_config_maps"] == [
        f"{RELEASE}-dagster-user-deployments-{dep['name']}-user-env"
    ]
    assert launcher["env_secrets"] == [s["name"] for s in dep["envSecrets"]]
    assert launcher["service_account_name"] == RUNS_SERVICE_ACCOUNT


def test_step_pods_run_each_step_as_a_job_with_the_job_resources(
    production: Production, tmp_path: Path
) -> None:
    """TWINME_K8S_EXECUTOR=1: the run pod starts one Job per step, each with the job's resources.

    The run Job's command is executed here as its pod would run it, with the pod's environment;
    the three backups have no upstream, so they start at once as three step Jobs. Terminating the
    run worker deletes them.
    """
    run = submit(production, "nightly_backup_job", _today())
    dequeue(production)
    [run_job] = jobs_in(production.kubeconfig, NAMESPACE).values()
    args = run_job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[:3] == ["dagster", "api", "execute_run"]

    env = _pod_env(_values(), tmp_path)
    assert env["TWINME_K8S_EXECUTOR"] == "1" and env["TWINME_ENV"] == "production"
    dagster_cli = str(Path(sys.executable).parent / "dagster")
    log_path = tmp_path / "run-worker.log"
    with log_path.open("w") as log:
        worker = subprocess.Popen(
            [dagster_cli, *args[1:]],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 120
            steps: dict[str, Mapping[str, Any]] = {}
            while len(steps) < 3:
                jobs = jobs_in(production.kubeconfig, NAMESPACE)
                steps = {
                    j["metadata"]["labels"]["dagster/op"]: j
                    for name, j in jobs.items()
                    if name.startswith("dagster-step-")
                }
                if worker.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"step Jobs seen: {sorted(steps)}; run worker log:\n"
                        + log_path.read_text()[-4000:]
                    )
                time.sleep(0.2)
        finally:
            _stop(worker)
    assert set(steps) == {"postgres_backup", "redis_backup", "files_backup"}
    for op, job in steps.items():
        labels = job["metadata"]["labels"]
        assert labels["dagster/run-id"] == run.run_id, op
        assert labels["app.kubernetes.io/component"] == "step_worker", op
        assert_twinme_pod(job, BACKUP_POD, production.code_server)
        container = job["spec"]["template"]["spec"]["containers"][0]
        assert container["args"][:3] == ["dagster", "api", "execute_step"], op
    remaining = [
        n for n in jobs_in(production.kubeconfig, NAMESPACE) if n.startswith("dagster-step")
    ]
    assert remaining == [], "a terminated run leaves its step Jobs behind"


# -- RBAC ------------------------------------------------------------------------------------------


def _rbac_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(RBAC.read_text()) if d]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_rbac_manifests_are_valid_kubernetes(version: str) -> None:
    docs = _rbac_docs()
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


_API_CLASSES = [
    getattr(k8s_client, name)
    for name in dir(k8s_client)
    if name.endswith("Api") and inspect.isclass(getattr(k8s_client, name))
]
_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


def api_methods_used(paths: Iterable[Path]) -> set[str]:
    """Official-client API methods named in these Python files (called or passed along)."""
    methods = {
        name
        for api in _API_CLASSES
        for name in vars(api)
        if not name.startswith("_") and not name.endswith("_with_http_info")
    }
    used: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in methods:
                used.add(node.attr)
    return used


def rbac_permission(method: str) -> tuple[str, str, str]:
    """``(apiGroup, resource[/subresource], verb)`` an API method needs, from its REST call."""
    for api in _API_CLASSES:
        impl = getattr(api, f"{method}_with_http_info", None)
        if impl is not None:
            break
    else:
        raise AssertionError(f"no API class has {method}")
    match = re.search(r"call_api\(\s*'([^']+)',\s*'(\w+)'", inspect.getsource(impl))
    assert match, method
    path, http = match.groups()
    group = "" if path.startswith("/api/") else path.split("/")[2]
    assert "/namespaces/{namespace}/" in path, f"{method} is cluster-wide ({path})"
    parts = path.split("/namespaces/{namespace}/", 1)[1].split("/")
    resource = parts[0] + (f"/{parts[2]}" if len(parts) > 2 else "")
    named = len(parts) > 1
    if http == "GET":
        verb = "get" if named else "list"
    elif http == "DELETE":
        verb = "delete" if named else "deletecollection"
    else:
        verb = _VERBS[http]
    return group, resource, verb


def _granted(role: Mapping[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _role(namespace: str, name: str | None = None) -> dict[str, Any]:
    [role] = [
        d
        for d in _rbac_docs()
        if d["kind"] == "Role"
        and d["metadata"]["namespace"] == namespace
        and name in (None, d["metadata"]["name"])
    ]
    return role


def test_the_api_namespace_role_grants_exactly_what_twinme_ops_calls() -> None:
    """twinme_ops reads and patches the API Deployment and the JWT keys' Secret: get and patch
    on those two, nothing else."""
    other_namespaces = (
        *BUILD_NAMESPACE_MODULES,
        CNPG_BACKUP_MODULE,
        CNPG_RETENTION_MODULE,
        CNPG_SETTINGS_MODULE,
    )
    sources = [p for p in (REPO / "twinme_ops").rglob("*.py") if p not in other_namespaces]
    used = api_methods_used(sources)
    assert used, "no Kubernetes API call found in twinme_ops: is the derivation broken?"
    needed = {rbac_permission(m) for m in used}
    namespace = _user_deployment(_values())["env"]["TWINME_K8S_NAMESPACE"]
    role = _role(namespace)
    assert _granted(role) == needed
    deployment = KubernetesResource.model_fields["deployment"].default
    jwt_secret = JwtKeysResource.model_fields["secret_name"].default
    for rule in role["rules"]:
        only = [jwt_secret] if rule["resources"] == ["secrets"] else [deployment]
        assert rule.get("resourceNames") == only, rule


def test_the_build_namespace_role_is_the_cluster_builder_contract() -> None:
    """release_job's in-cluster builds: the Role is exactly the rules the builder's module
    declares (BUILD_RBAC_RULES) with the app tests', and those rules are exactly the calls its
    modules make (with the shared Job-following helpers): no Secret is ever read."""
    from twinme_ops.release.app_tests.k8s import APP_TESTS_RBAC_RULES
    from twinme_ops.release.images.cluster import ClusterImageBuilder
    from twinme_ops.release.images.cluster_job import BUILD_RBAC_RULES

    namespace = ClusterImageBuilder.model_fields["namespace"].default
    granted = _granted(_role(namespace))
    assert granted == _granted({"rules": BUILD_RBAC_RULES}) | _granted(
        {"rules": APP_TESTS_RBAC_RULES}
    )
    direct = {
        rbac_permission(m) for m in api_methods_used([*CLUSTER_BUILD_MODULES, K8S_JOB_MODULE])
    }
    assert direct == _granted({"rules": BUILD_RBAC_RULES})
    assert not any(resource == "secrets" for _, resource, _ in direct)


def test_the_database_namespace_role_is_what_the_base_backup_calls() -> None:
    """base_backup_job creates a CloudNativePG Backup and reads it back, retention_job reads the
    ObjectStore: the Role in the Cluster's namespace grants exactly the two modules' declared
    rules, and those are their calls (CustomObjectsApi's paths name the group and plural as
    parameters: each module's own)."""
    from twinme_ops.backups.pitr import cnpg_retention
    from twinme_ops.backups.pitr.archive import WalArchive
    from twinme_ops.backups.pitr.cnpg_backup import CNPG_BACKUP_RBAC_RULES, GROUP, PLURAL

    namespace = WalArchive.model_fields["namespace"].default
    rules = [*CNPG_BACKUP_RBAC_RULES, *cnpg_retention.CNPG_RETENTION_RBAC_RULES]
    assert _granted(_role(namespace, "twinme-ops-base-backups")) == _granted({"rules": rules})
    for module, group_, plural, declared in (
        (CNPG_BACKUP_MODULE, GROUP, PLURAL, CNPG_BACKUP_RBAC_RULES),
        (
            CNPG_RETENTION_MODULE,
            cnpg_retention.GROUP,
            cnpg_retention.PLURAL,
            cnpg_retention.CNPG_RETENTION_RBAC_RULES,
        ),
    ):
        direct = {
            (group_ if group == "{group}" else group, plural if res == "{plural}" else res, verb)
            for group, res, verb in map(rbac_permission, api_methods_used([module]))
        }
        assert direct == _granted({"rules": declared}), module.name


def test_the_database_namespace_role_is_what_the_settings_applier_calls() -> None:
    """postgres_settings on CloudNativePG reads the Cluster and merge-patches its parameters:
    a Role in the Cluster's namespace grants exactly the module's declared rules, on that one
    Cluster, and those rules are its calls."""
    from twinme_ops.database.postgres.settings.applier import SettingsApplier
    from twinme_ops.database.postgres.settings.cnpg_api import (
        CNPG_CLUSTER_RBAC_RULES,
        GROUP,
        PLURAL,
        RBAC_ROLE,
    )

    namespace = SettingsApplier.model_fields["namespace"].default
    role = _role(namespace, RBAC_ROLE)
    assert _granted(role) == _granted({"rules": CNPG_CLUSTER_RBAC_RULES})
    cluster = SettingsApplier.model_fields["cluster"].default
    for rule in role["rules"]:
        assert rule.get("resourceNames") == [cluster], rule
    direct = {
        (GROUP if group == "{group}" else group, PLURAL if res == "{plural}" else res, verb)
        for group, res, verb in map(rbac_permission, api_methods_used([CNPG_SETTINGS_MODULE]))
    }
    assert (
        direct
        == _granted({"rules": CNPG_CLUSTER_RBAC_RULES})
        == {
            ("postgresql.cnpg.io", "clusters", "get"),
            ("postgresql.cnpg.io", "clusters", "patch"),
        }
    )


def test_the_build_namespace_role_covers_the_app_tests_job_exactly() -> None:
    """app_tests' Job in production: every call the module makes, in the same namespace, and
    its declared rules are exactly those calls (no Secret, nothing else)."""
    from twinme_ops.release.app_tests.k8s import APP_TESTS_RBAC_RULES, KubernetesAppTestRunner

    namespace = KubernetesAppTestRunner.model_fields["namespace"].default
    direct = {rbac_permission(m) for m in api_methods_used([*APP_TESTS_MODULES, K8S_JOB_MODULE])}
    assert direct == _granted({"rules": APP_TESTS_RBAC_RULES})
    assert direct <= _granted(_role(namespace)), direct - _granted(_role(namespace))
    assert not any(resource == "secrets" for _, resource, _ in direct)


def test_the_dagster_namespace_role_grants_exactly_what_the_executor_calls() -> None:
    """Run pods start, follow and delete step Jobs with dagster_k8s's client: exactly that."""
    root = Path(dagster_k8s.__file__).parent
    used = api_methods_used(root / name for name in ("client.py", "executor.py", "launcher.py"))
    needed = {rbac_permission(m) for m in used}
    assert ("batch", "jobs", "create") in needed
    launcher = _yaml(INSTANCE)["run_launcher"]["config"]
    assert _granted(_role(launcher["job_namespace"])) == needed


def test_nothing_is_cluster_wide_and_only_run_pods_get_a_token() -> None:
    docs = _rbac_docs()
    kinds = [d["kind"] for d in docs]
    assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds
    for doc in docs:
        for rule in doc.get("rules", []):
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (doc["metadata"]["name"], field)
    [account] = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert account["metadata"]["name"] == RUNS_SERVICE_ACCOUNT
    assert account["metadata"]["namespace"] == NAMESPACE
    # the code server uses this account too (values.yaml) but asks for no token
    assert account["automountServiceAccountToken"] is False
    values = _values()
    assert values["dagster-user-deployments"]["serviceAccount"] == {
        "create": False,
        "name": RUNS_SERVICE_ACCOUNT,
    }
    roles = {
        (d["metadata"]["namespace"], d["metadata"]["name"]) for d in docs if d["kind"] == "Role"
    }
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert {(b["metadata"]["namespace"], b["roleRef"]["name"]) for b in bindings} == roles
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": RUNS_SERVICE_ACCOUNT, "namespace": NAMESPACE}
        ]


# -- the image -------------------------------------------------------------------------------------


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped."""
    logical: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    assert not current, "dangling line continuation"
    out = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def test_the_dockerfile_builds_the_code_location_image() -> None:
    """Pinned bases, SSL PostgreSQL 18 client + the wheel's servers, Redis 7, zstd, Node for the
    release's app tests, non-root, gRPC entry."""
    steps = dockerfile_instructions(DOCKERFILE)
    values = _values()
    dep = _user_deployment(values)
    by_kind: dict[str, list[str]] = {}
    for instruction, args in steps:
        by_kind.setdefault(instruction, []).append(args)

    node_stage, base = by_kind["FROM"]
    digest = r"@sha256:[0-9a-f]{64}"
    assert re.fullmatch(rf"python:3\.11\.\d+-slim-\w+{digest}", base), f"unpinned base {base}"
    assert re.fullmatch(rf"node:20\.\d+\.\d+-bookworm-slim{digest} AS node", node_stage)

    run = " ".join(by_kind["RUN"])
    for package in ("redis-server", "zstd", "age", "git", "tini", "ca-certificates"):
        assert re.search(rf"apt-get install [^&]*\b{re.escape(package)}\b", run), package
    # the wheel's client has no SSL: PGDG's 18 client, selected by TWINME_PG_CLIENT_DIR (checked
    # at build time), while the scratch servers stay the wheel's
    assert "apt-get install -y --no-install-recommends postgresql-client-18" in run
    assert "pg_bin(b)" in run and "'pg_dump'" in run
    assert "/usr/lib/postgresql/18/bin/pg_dump --version" in run
    assert "node --version" in run and "npm --version" in run
    # run pods read the instance's PostgreSQL storage: dagster-postgres, on dagster's release train
    # (from the hashed lock file; tests/deploy/test_deploy_access.py checks the lock itself)
    lock = (DEPLOY / "requirements.lock").read_text()
    assert f"\ndagster-postgres=={dagster_k8s.__version__} " in lock
    assert "pip install --no-cache-dir --require-hashes -r requirements.lock" in run
    assert "pip install --no-cache-dir --no-deps --no-build-isolation . " in run
    # barman-cloud for restores from the plugin's bucket: its own venv, from a hashed lock
    assert "/opt/barman/bin/pip install --no-cache-dir --no-deps --require-hashes" in run
    barman_lock = (DEPLOY / "barman.lock").read_text()
    pinned = re.findall(r"^([a-z0-9-]+)==\S+ \\\n    --hash=sha256:[0-9a-f]{64}", barman_lock, re.M)
    assert {"barman", "psycopg2-binary", "boto3", "botocore"} <= set(pinned), pinned

    assert by_kind["USER"][-1] == "10001:10001"
    assert [k for k, _ in steps].index("USER") > max(
        i for i, (k, _) in enumerate(steps) if k == "RUN"
    ), "a RUN after USER would run as root"
    run_pods = _render_run_launcher(values)["config"]["run_k8s_config"]
    for security in (dep["podSecurityContext"], run_pods["pod_spec_config"]["securityContext"]):
        assert security["runAsUser"] == 10001 and security["runAsNonRoot"] is True

    for args in by_kind.get("ENV", []) + by_kind.get("ARG", []):
        assert not re.search(r"KEY|TOKEN|PASSWORD|SECRET|WEBHOOK|DATABASE_URL|REDIS_URL", args)
    env = " ".join(by_kind["ENV"])
    assert "DAGSTER_HOME=/opt/dagster/dagster_home" in env
    assert "TWINME_PG_CLIENT_DIR=/usr/lib/postgresql/18/bin" in env
    assert _yaml(INSTANCE)["run_launcher"]["config"]["dagster_home"] == "/opt/dagster/dagster_home"

    copied = [arg.split()[:-1] for arg in by_kind["COPY"] if not arg.startswith("--from=node ")]
    sources = {s for srcs in copied for s in srcs}
    assert sources == {
        "pyproject.toml",
        "README.md",
        "twinme_ops",
        "deploy/dagster/requirements.lock",
        "deploy/dagster/barman.lock",
    }
    ignore = DOCKERIGNORE.read_text().splitlines()
    assert "*" in ignore, "the build context must exclude everything by default"
    for source in sources:
        assert f"!{source}" in ignore or f"!{source}/" in ignore, source

    assert by_kind["EXPOSE"] == [str(dep["port"])]
    assert json.loads(by_kind["ENTRYPOINT"][0]) == ["/usr/bin/tini", "--"]
    chart_args = ["dagster", "api", "grpc", "-h", "0.0.0.0", "-p", str(dep["port"])]
    assert json.loads(by_kind["CMD"][0]) == [*chart_args, *dep["dagsterApiGrpcArgs"]]
