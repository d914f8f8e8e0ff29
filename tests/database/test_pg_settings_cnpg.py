"""postgres_settings on CloudNativePG: the declared settings go to the Cluster, not ALTER SYSTEM.

The applier patches ``spec.postgresql.parameters`` of the Cluster of deploy/postgres/ in kmock's
emulator with the official client; the fixture of ``tests/support/cnpg_cluster.py`` plays the
operator: it writes the parameters into the configuration file it owns on a real PostgreSQL 18
(where ``ALTER SYSTEM`` is off, as CloudNativePG keeps it), reloads, and restarts it through the
phases of a rolling update when a setting needs a restart. The drift check then reads that
server's ``pg_settings``, as it does for the ALTER SYSTEM path.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from tests.support.cnpg_cluster import (
    WAITING_FOR_USER,
    ClusterOperator,
    declare_clusters,
    forbid,
    read_cluster,
    spec_patches,
)
from tests.support.cnpg_rules import cluster_admission_errors
from tests.support.crd_schema import crd_schemas, strict_schema, validation_errors
from tests.support.k8s_emulator import EmulatorHandle, write_kubeconfig
from tests.support.list_log import ListLog
from twinme_ops.database.declared_state import DatabaseTuning
from twinme_ops.database.postgres.settings.applier import SettingsApplier
from twinme_ops.database.postgres.settings.cnpg import HEALTHY, converge_cluster_settings
from twinme_ops.database.postgres.settings.cnpg_api import GROUP, VERSION, ClusterSettingsError
from twinme_ops.database.postgres.settings.drift import settings_drift
from twinme_ops.database.postgres.settings.live import UnknownSettingError
from twinme_ops.defs.database.assets import pg_tuning_assets, wanted_settings
from twinme_ops.defs.database.checks import pg_drift_checks
from twinme_ops.defs.resources import build_resources
from twinme_ops.scratch.postgres import PostgresServer

pytest_plugins = ["tests.support.cnpg_cluster"]

_BESIDE = Path(__file__).resolve().parents[3] / "shared" / "schemas" / "cnpg"
CRD_DIR = Path(os.environ.get("TWINME_CNPG_CRDS", str(_BESIDE)))
Start = Callable[..., ClusterOperator]
# A bigger declared instance than deploy/postgres/'s 1 GiB: shared_buffers (a restart) and
# effective_cache_size, maintenance_work_mem (a reload) change
BIGGER = DatabaseTuning(memory_mb=2048)
CHANGED = {
    "shared_buffers": "512MB",
    "effective_cache_size": "2GB",
    "maintenance_work_mem": "128MB",
}


@cache
def cluster_schema() -> dict[str, Any]:
    assert CRD_DIR.is_dir(), f"no CloudNativePG CRDs in {CRD_DIR}: set TWINME_CNPG_CRDS"
    return strict_schema(crd_schemas(CRD_DIR)[(f"{GROUP}/{VERSION}", "Cluster")])


def applier(kubeconfig: Path, **kwargs: Any) -> SettingsApplier:
    fields: dict[str, Any] = {"poll_interval_s": 0.05, "rollout_timeout_s": 60.0, **kwargs}
    return SettingsApplier(method="cloudnative-pg", kubeconfig=str(kubeconfig), **fields)


def connect_to(server: PostgresServer) -> Callable[[], Any]:
    @contextmanager
    def connect() -> Iterator[psycopg.Connection[Any]]:
        with server.connect() as conn:
            yield conn

    return connect


def postmaster_start(server: PostgresServer) -> Any:
    with server.connect() as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
        assert row is not None
        return row[0]


def live(server: PostgresServer, *names: str) -> dict[str, str]:
    with server.connect() as conn:
        return {n: str(conn.execute(f"SHOW {n}").fetchone()[0]) for n in names}  # type: ignore[index]


# -- through Dagster, as production runs it ------------------------------------------------------


@pytest.fixture
def production_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, k8s_emulator: tuple[Path, EmulatorHandle]
) -> Path:
    """TWINME_ENV=production with the declared instance grown to 2 GiB; KUBECONFIG to kmock."""
    kubeconfig, _ = k8s_emulator
    for name in list(os.environ):
        if name.startswith("TWINME_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TWINME_ENV", "production")
    monkeypatch.setenv("TWINME_HOME", str(tmp_path))
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("TWINME_FILES_DIR", str(tmp_path / "files"))
    monkeypatch.setenv("TWINME_BACKUP_URL", f"file://{tmp_path}/backups")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    monkeypatch.setenv("TWINME_PG_MEMORY_MB", "2048")
    return kubeconfig


def tune(resources: dict[str, Any]) -> dg.ExecuteInProcessResult:
    """postgres_settings and its drift check, with the code location's resources."""
    [asset] = [a for a in pg_tuning_assets if a.key.path[-1] == "postgres_settings"]
    [check] = [c for c in pg_drift_checks if asset.key in {k.asset_key for k in c.check_keys}]
    return dg.materialize([asset, check], resources=resources, raise_on_error=False)


def test_production_tunes_through_the_cluster_and_a_second_run_changes_nothing(
    cnpg_cluster_factory: Start,
    production_env: Path,
    k8s_emulator: tuple[Path, EmulatorHandle],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The Cluster's spec gets the changed settings (only those, archive_timeout kept), the
    operator rolls them out with a restart (switchover), the drift check passes on the real
    server; a second run patches nothing and restarts nothing."""
    _, handle = k8s_emulator
    operator = cnpg_cluster_factory()
    server = operator.server
    monkeypatch.setenv("DATABASE_URL", server.url())
    resources = build_resources()
    chosen = resources["postgres_settings_applier"]
    assert (chosen.method, chosen.cluster, chosen.namespace) == (
        "cloudnative-pg",
        "twinme-db",
        "twinme-postgres",
    )
    resources["postgres_settings_applier"] = applier(production_env)
    restarts, started = operator.restarts, postmaster_start(server)

    first = tune(resources)
    assert first.success
    mat = first.asset_materializations_for_node("postgres_settings")[0]
    assert mat.metadata["changes"].value == len(CHANGED)
    assert mat.metadata["pending_restart"].value == []
    [patch] = spec_patches(handle)
    assert patch == {"spec": {"postgresql": {"parameters": CHANGED}}}
    cluster = read_cluster(production_env)
    parameters = cluster["spec"]["postgresql"]["parameters"]
    assert {k: parameters[k] for k in CHANGED} == CHANGED
    assert parameters["archive_timeout"] == "60s"  # not declared by the tool: left alone
    assert cluster["status"]["phase"] == HEALTHY
    # the operator went through a rolling update, and the real server restarted once
    phases = [phase for phase, _ in operator.phases]
    assert "Applying configuration" in phases and "Switchover in progress" in phases
    assert operator.restarts == restarts + 1 and postmaster_start(server) > started
    assert live(server, *CHANGED) == {
        "shared_buffers": "512MB",
        "effective_cache_size": "2GB",
        "maintenance_work_mem": "128MB",
    }
    [check] = first.get_asset_check_evaluations()
    assert check.passed, check.description
    # nothing went through ALTER SYSTEM
    with server.connect() as conn:
        auto = conn.execute(
            "SELECT count(*) FROM pg_file_settings WHERE sourcefile LIKE '%postgresql.auto.conf'"
        ).fetchone()
    assert auto is not None and auto[0] == 0
    # the Cluster, as patched and as the (test) operator reports it, is valid for CloudNativePG
    assert validation_errors(cluster, cluster_schema()) == []
    assert cluster_admission_errors(cluster) == []

    second = tune(resources)
    assert second.success
    mat = second.asset_materializations_for_node("postgres_settings")[0]
    assert mat.metadata["changes"].value == 0
    assert len(spec_patches(handle)) == 1
    assert operator.restarts == restarts + 1
    [check] = second.get_asset_check_evaluations()
    assert check.passed, check.description


def test_the_applier_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in list(os.environ):
        if name.startswith("TWINME_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("TWINME_HOME", str(tmp_path))
    assert build_resources()["postgres_settings_applier"].method == "alter-system"
    monkeypatch.setenv("TWINME_POSTGRES_APPLIER", "cloudnative-pg")
    assert build_resources()["postgres_settings_applier"].method == "cloudnative-pg"
    monkeypatch.setenv("TWINME_POSTGRES_APPLIER", "helm")
    with pytest.raises(ValueError, match="TWINME_POSTGRES_APPLIER='helm' is not one of"):
        build_resources()


# -- the applier itself --------------------------------------------------------------------------


def test_a_reload_only_change_never_leaves_the_healthy_phase_nor_restarts(
    cnpg_cluster_factory: Start, k8s_emulator: tuple[Path, EmulatorHandle]
) -> None:
    kubeconfig, _ = k8s_emulator
    operator = cnpg_cluster_factory()
    restarts = operator.restarts
    desired = {**wanted_settings(DatabaseTuning()), "work_mem": "8MB"}
    log = ListLog()
    report = applier(kubeconfig).apply(connect_to(operator.server), desired, log)
    assert report.statements() == [
        "PATCH Cluster twinme-postgres/twinme-db: spec.postgresql.parameters.work_mem = '8MB'"
    ]
    assert report.changes[0].detail == "4MB -> 8MB"
    assert operator.restarts == restarts
    assert live(operator.server, "work_mem") == {"work_mem": "8MB"}
    assert any("and the server applies every declared setting" in m for m in log)


def test_supervised_primary_update_leaves_the_restart_to_a_person(
    cnpg_cluster_factory: Start, k8s_emulator: tuple[Path, EmulatorHandle]
) -> None:
    """primaryUpdateStrategy supervised: the operator stops before the primary; the applier
    reports shared_buffers as pending a restart with the command, and the drift check says so
    until a person restarts the primary."""
    kubeconfig, _ = k8s_emulator
    operator = cnpg_cluster_factory({"primaryUpdateStrategy": "supervised"})
    desired = wanted_settings(BIGGER)
    log = ListLog()
    report = applier(kubeconfig).apply(connect_to(operator.server), desired, log)
    assert operator.phases[-1] == WAITING_FOR_USER
    assert report.pending_restart == ["shared_buffers"]
    assert any("kubectl cnpg restart twinme-db" in n for n in report.notes)
    with operator.server.connect() as conn:
        drift = settings_drift(conn, desired)
    assert drift == ["shared_buffers is 256MB, want 512MB (set, pending restart)"]

    operator.restart_primary()  # kubectl cnpg restart
    with operator.server.connect() as conn:
        assert settings_drift(conn, desired) == []
    again = applier(kubeconfig).apply(connect_to(operator.server), desired, ListLog())
    assert not again.changed and again.pending_restart == []


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"archive_command": "/bin/true"}, "archive_command"),
        ({"listen_addresses": "*", "port": "5433"}, "listen_addresses, port"),
        ({"hot_standby": "off"}, "hot_standby"),
        ({"wal_level": "minimal"}, "wal_level=minimal"),
        ({"wal_log_hints": "off"}, "wal_log_hints=off: must be on with 3 instances"),
    ],
)
def test_parameters_cloudnative_pg_fixes_itself_are_refused(
    cnpg_cluster_factory: Start,
    k8s_emulator: tuple[Path, EmulatorHandle],
    overrides: dict[str, str],
    named: str,
) -> None:
    kubeconfig, handle = k8s_emulator
    operator = cnpg_cluster_factory()
    before = read_cluster(kubeconfig)["spec"]
    desired = wanted_settings(DatabaseTuning(setting_overrides=overrides))
    with pytest.raises(ClusterSettingsError) as caught:
        applier(kubeconfig).apply(connect_to(operator.server), desired, ListLog())
    message = str(caught.value)
    assert named in message and "Fix: remove these from the declared settings" in message
    assert spec_patches(handle) == [] and read_cluster(kubeconfig)["spec"] == before


def test_an_unknown_setting_is_refused_before_the_cluster_changes(
    cnpg_cluster_factory: Start, k8s_emulator: tuple[Path, EmulatorHandle]
) -> None:
    kubeconfig, handle = k8s_emulator
    operator = cnpg_cluster_factory()
    desired = {**wanted_settings(DatabaseTuning()), "shared_bufers": "512MB"}
    with pytest.raises(UnknownSettingError, match="did you mean shared_buffers"):
        applier(kubeconfig).apply(connect_to(operator.server), desired, ListLog())
    assert spec_patches(handle) == []


@pytest.mark.parametrize("verb", ["get", "patch"])
def test_missing_rbac_names_the_verb_the_resource_and_the_role(
    cnpg_cluster_factory: Start,
    k8s_emulator: tuple[Path, EmulatorHandle],
    tmp_path: Path,
    verb: Any,
) -> None:
    """The runs' ServiceAccount without the Role (a token of its own; the operator is served)."""
    kubeconfig, handle = k8s_emulator
    operator = cnpg_cluster_factory()
    token = f"runs-token-{secrets.token_hex(8)}"
    runs = write_kubeconfig(tmp_path / "runs.yaml", handle.url, token)
    forbid(handle, verb, token)
    desired = wanted_settings(BIGGER)
    with pytest.raises(ClusterSettingsError) as caught:
        applier(runs).apply(connect_to(operator.server), desired, ListLog())
    message = str(caught.value)
    assert "HTTP 403" in message
    assert (
        f"the ServiceAccount may not {verb} clusters.postgresql.cnpg.io in namespace "
        "twinme-postgres: grant get and patch on clusters.postgresql.cnpg.io (resourceNames: "
        "twinme-db) there, i.e. apply deploy/dagster/rbac.yaml (Role "
        "twinme-ops-postgres-settings" in message
    )
    assert token not in message
    # refused: the Cluster is unchanged
    assert read_cluster(kubeconfig)["spec"]["postgresql"]["parameters"]["shared_buffers"] == "256MB"


def test_a_missing_cluster_is_named_with_the_fix(
    k8s_emulator: tuple[Path, EmulatorHandle], server_tmp: Path
) -> None:
    kubeconfig, handle = k8s_emulator
    declare_clusters(handle)
    server = PostgresServer.start(server_tmp / "data")
    try:
        with pytest.raises(ClusterSettingsError) as caught:
            applier(kubeconfig).apply(
                connect_to(server), wanted_settings(DatabaseTuning()), ListLog()
            )
    finally:
        server.stop()
    message = str(caught.value)
    assert "reading Cluster twinme-postgres/twinme-db failed: HTTP 404" in message
    assert "no Cluster twinme-db in namespace twinme-postgres" in message


def test_a_rollout_that_never_ends_times_out_saying_what_differs(
    cnpg_cluster_factory: Start, k8s_emulator: tuple[Path, EmulatorHandle]
) -> None:
    """An operator that never acts: progress every minute, then a timeout naming the phase and
    what still differs (a clock that advances 30 s per poll stands in for 5 minutes)."""
    kubeconfig, _ = k8s_emulator
    operator = cnpg_cluster_factory(mode="stuck")
    desired = {**wanted_settings(DatabaseTuning()), "work_mem": "8MB"}
    now = [0.0]
    log = ListLog()
    with pytest.raises(ClusterSettingsError) as caught:
        converge_cluster_settings(
            applier(kubeconfig).target(),
            connect_to(operator.server),
            desired,
            log,
            timeout_s=300,
            clock=lambda: now[0],
            sleep=lambda s: now.__setitem__(0, now[0] + 30),
        )
    message = str(caught.value)
    assert "did not finish applying the settings within 300 s" in message
    assert "phase Cluster in healthy state" in message
    assert "work_mem is 4MB, want 8MB" in message
    assert "kubectl cnpg status twinme-db -n twinme-postgres" in message
    progress = [m for m in log if "still waiting after" in m]
    assert [m.split(" s:")[0].rsplit(" ", 1)[-1] for m in progress] == ["60", "120", "180", "240"]
    # the Cluster holds the declared value: the operator may still apply it
    assert read_cluster(kubeconfig)["spec"]["postgresql"]["parameters"]["work_mem"] == "8MB"
