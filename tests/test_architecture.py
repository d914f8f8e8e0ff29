"""The floor plan as a checked contract: import-linter's contracts in pyproject.toml.

A module that imports upward (a server reaching into a domain, a domain into ``defs``), across
domains (backups, database and release stay independent), or into the embedded sandbox from
anywhere but ``defs/resources.py`` and the CLI fails here with the import chain that breaks it.

The code location loads as Dagster loads it (``dagster definitions validate``, ``dg check defs``)
and without the heavy clients (AWS, Kubernetes, the GraphQL parser, PostgreSQL, Redis, Slack,
...): those are imported where a step uses them, not by every process that loads the definitions
(docs/benchmarks.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Modules a load of the definitions must not import: dagster-aws (with boto3 and botocore) only
# for an s3:// store's first client, the Kubernetes client and dagster-k8s only where a step talks
# to a cluster, the GraphQL parser only in the webserver's access control; the database, Redis,
# Pushgateway and Slack clients, the cipher, zstd and urllib3 only where they are used (each is
# 15-100 ms of every load: the code server, the daemon and every run pay it).
HEAVY_MODULES = (
    "dagster_aws",
    "boto3",
    "botocore",
    "kubernetes",
    "dagster_k8s",
    "graphql",
    "psycopg",
    "redis",
    "prometheus_client",
    "slack_sdk",
    "cryptography",
    "urllib3",
    "zstandard",
)


def _clean_env(dagster_home: Path) -> dict[str, str]:
    """This environment without what would configure other servers, a store, a cluster or
    another image builder; the repository first on the import path."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("TWINME_", "DAGSTER_", "AWS_")) and key != "KUBECONFIG"
    }
    return {**env, "PYTHONPATH": str(REPO), "DAGSTER_HOME": str(dagster_home)}


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the package and contracts under ``root``."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), str(root / "pyproject.toml")],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_import_contract_is_kept() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout and "4 kept" in result.stdout, result.stdout


def test_a_server_that_imports_the_sandbox_breaks_a_contract(tmp_path: Path) -> None:
    """The check sees a violation when there is one: a copy of the package in which a server
    imports the sandbox."""
    copy = tmp_path / "repo"
    shutil.copytree(
        REPO / "twinme_ops", copy / "twinme_ops", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    server = copy / "twinme_ops" / "servers" / "files.py"
    server.write_text(server.read_text() + "\nfrom twinme_ops.sandbox import servers  # noqa\n")
    result = _lint_imports(copy)
    assert result.returncode != 0, result.stdout
    assert "twinme_ops.servers.files -> twinme_ops.sandbox.servers" in result.stdout, result.stdout


def test_dagster_validates_the_code_location_it_autoloads(tmp_path: Path) -> None:
    """``dagster definitions validate``: every object under ``defs/`` loads, with its resources,
    through the autoloader (nothing is listed by hand in definitions.py)."""
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("dagster")),
            "definitions",
            "validate",
            "-m",
            "twinme_ops.definitions",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "DAGSTER_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Validation successful for code location twinme_ops.definitions" in (
        result.stdout + result.stderr
    )
    source = (REPO / "twinme_ops" / "definitions.py").read_text()
    assert "ComponentTree.for_project(" in source
    assert "_job" not in source and "_schedule" not in source and "_sensor" not in source


def test_dg_check_defs_from_the_repository_root(tmp_path: Path) -> None:
    """``dg check defs``, run where an operator runs it: pyproject.toml's ``[tool.dg]`` makes the
    repository root a dg project whose code location is ``twinme_ops.definitions``."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    # the repository's instance (telemetry off: no first-run banner)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    result = subprocess.run(
        [str(Path(sys.executable).with_name("dg")), "check", "defs"],
        cwd=REPO,
        env=_clean_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    assert "All definitions loaded successfully." in output, output[-6000:]


_LOAD_AND_REPORT = """
import json, sys
from pathlib import Path
import dagster as dg
import twinme_ops.definitions as location

def names(defs):
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    return {
        "jobs": sorted(job.name for job in repo.get_all_jobs()),
        "schedules": sorted(s.name for s in repo.schedule_defs),
        "sensors": sorted(s.name for s in repo.sensor_defs),
        "assets": sorted(key.to_user_string() for key in graph.get_all_asset_keys()),
        "checks": sorted(key.to_user_string() for key in graph.asset_check_keys),
        "resources": sorted(repo.get_top_level_resources()),
    }

loaded = names(location.defs())
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[1].split(",")))
# dagster's own entry point, for comparison (it imports every installed component library)
reference = names(
    dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(location.__file__).parent),
        dg.Definitions(resources=location.build_resources()),
    )
)
print(json.dumps({"loaded": loaded, "heavy": heavy, "reference": reference}))
"""


# production as deploy/dagster/values.yaml configures it: an S3 store, the WAL archive of
# CloudNativePG, the image built and the app tested in the cluster, a Job per step
PRODUCTION_ENV = {
    "TWINME_ENV": "production",
    "DATABASE_URL": "postgresql://twinme:secret@postgres.twinme-postgres:5432/twinme",
    "REDIS_URL": "redis://:secret@redis.twinme-prod:6379/0",
    "TWINME_FILES_DIR": "/var/lib/twinme-files",
    "TWINME_BACKUP_URL": "s3://twinme-backups/prod",
    "TWINME_IMAGE_BUILDER": "cluster",
    "TWINME_APP_TESTS_RUNNER": "kubernetes",
    "TWINME_K8S_EXECUTOR": "1",
    "TWINME_BACKUP_ENCRYPTION_KEY": "A" * 43 + "=",
    "TWINME_PUSHGATEWAY_URL": "http://pushgateway.monitoring:9091",
    "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T0/B0/secret",
}


@pytest.mark.parametrize("environment", ["local", "production"])
def test_loading_the_definitions_imports_no_heavy_client(tmp_path: Path, environment: str) -> None:
    """A fresh process that loads the definitions, as the code server and every run do, has not
    imported any of :data:`HEAVY_MODULES` (dagster-aws, the Kubernetes client, psycopg,
    redis-py, slack_sdk, ...), locally or configured as production; and it loads the same
    objects as ``dg.load_from_defs_folder`` (whose catalogue of installed component types is
    what would import dagster-aws)."""
    env = _clean_env(tmp_path)
    if environment == "production":
        env.update(PRODUCTION_ENV)
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_AND_REPORT, ",".join(HEAVY_MODULES)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["heavy"] == [], (
        f"loading the definitions imported {report['heavy']}: import them where they are used"
    )
    assert report["loaded"] == report["reference"]
    assert "nightly_backup_job" in report["loaded"]["jobs"]
    assert "backup_store" in report["loaded"]["resources"]
