"""recover_job end to end: back up, damage production, recover, and find it exactly as it was."""

from __future__ import annotations

from typing import Any, cast

import dagster as dg
import pytest
from kubernetes.client import V1Deployment

from tests.support.backup_helpers import PARTITION, run_backup, store_for
from tests.support.production import PROD_REDIS_PASSWORD, damage, production_state, recover
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.backups import recovery as recovery_lib
from twinme_ops.backups.manifest import MANIFEST
from twinme_ops.sandbox.servers import DATABASE


def test_recovery_brings_production_back_exactly(
    production: dict[str, Any], backup_env, slack_receiver: SlackReceiver
) -> None:
    assert run_backup().success
    before = production_state(production)
    assert before["partitions"] and before["sequences"]
    damage(production)
    assert production_state(production) != before

    instance = dg.DagsterInstance.ephemeral()
    result = recover({"set_id": "latest-verified", "confirm": DATABASE}, instance)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    after = production_state(production)
    for key in ("tables", "sequences", "partitions", "files"):
        assert after[key] == before[key], key
    assert after["redis"].keys() == before["redis"].keys()
    for k, (kind, value, has_ttl) in before["redis"].items():
        assert after["redis"][k][:2] == (kind, value) and after["redis"][k][2] == has_ttl, k

    store = store_for(backup_env["TWINME_BACKUP_URL"])
    safety = [s for s in store.list_sets() if s.startswith("safety-")]
    assert len(safety) == 1 and store.exists(safety[0], MANIFEST)
    assert any(f"recovery completed for backup: {PARTITION}" in m for m in slack_receiver.messages)
    assert PROD_REDIS_PASSWORD not in "\n".join(slack_receiver.messages)


@pytest.mark.parametrize("confirm", ["", "twinme_prod", "TWINME"])
def test_recovery_without_the_right_confirm_touches_nothing(
    production: dict[str, Any], backup_env, confirm: str
) -> None:
    assert run_backup().success
    damage(production)
    damaged = production_state(production)
    instance = dg.DagsterInstance.ephemeral()
    result = recover({"set_id": PARTITION, "confirm": confirm}, instance)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "recovery_preflight"
    message = failure.step_failure_data.error.message  # type: ignore[union-attr]
    assert "confirm must equal the target database name ('twinme')" in message
    assert "Nothing was touched" in message
    assert production_state(production) == damaged
    store = store_for(backup_env["TWINME_BACKUP_URL"])
    assert not [s for s in store.list_sets() if s.startswith("safety-")]


def test_recovery_refuses_a_password_in_run_config(production: dict[str, Any], backup_env) -> None:
    assert run_backup().success
    result = recover(
        {
            "set_id": PARTITION,
            "confirm": DATABASE,
            "target_redis_url": f"redis://:{PROD_REDIS_PASSWORD}@127.0.0.1:6379/0",
        },
        dg.DagsterInstance.ephemeral(),
    )
    assert not result.success
    assert PROD_REDIS_PASSWORD not in "\n".join(str(e.message) for e in result.all_events)


def test_recovery_scales_the_api_down_and_back_on_kubernetes(
    production: dict[str, Any],
    backup_env,
    deployment_controller,
    k8s_emulator,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a cluster configured, the API is at 0 replicas while data is restored, then back
    at the count it had, with the rollout waited for like `kubectl rollout status`."""
    from tests.support.k8s_emulator import apps_api

    kubeconfig, _ = k8s_emulator
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    assert run_backup().success
    api = apps_api(kubeconfig)

    def deployment() -> V1Deployment:
        return cast(V1Deployment, api.read_namespaced_deployment("twinme-api", "twinme-prod"))

    assert deployment().spec.replicas == 3  # type: ignore[union-attr]

    replicas_seen: list[int] = []
    real_restore = recovery_lib.restore_postgres

    def spy(*args: Any, **kwargs: Any) -> None:
        replicas_seen.append(deployment().spec.replicas)  # type: ignore[union-attr]
        real_restore(*args, **kwargs)

    monkeypatch.setattr("twinme_ops.defs.recovery.jobs.restore_postgres", spy)
    result = recover({"set_id": PARTITION, "confirm": DATABASE}, dg.DagsterInstance.ephemeral())
    assert result.success
    assert replicas_seen == [0]  # scaled down while PostgreSQL was restored
    dep = deployment()
    assert dep.spec.replicas == 3 and dep.status.available_replicas == 3  # type: ignore[union-attr]


def test_a_failed_step_says_what_was_restored_and_where_to_return(
    production: dict[str, Any],
    backup_env,
    monkeypatch: pytest.MonkeyPatch,
    slack_receiver: SlackReceiver,
) -> None:
    assert run_backup().success

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("Redis went away during the replay")

    monkeypatch.setattr("twinme_ops.defs.recovery.jobs.restore_redis", broken)
    result = recover({"set_id": PARTITION, "confirm": DATABASE}, dg.DagsterInstance.ephemeral())
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "recovery_restore"
    message = failure.step_failure_data.error.message  # type: ignore[union-attr]
    assert "Redis went away" in message
    assert "restored: postgres; not restored: redis, files" in message
    assert "safety backup of the pre-recovery state: set safety-" in message
    (alert,) = [m for m in slack_receiver.messages if "FAILED" in m]
    assert "recovery restore" in alert and "Restored: postgres\n" in alert
    assert "Not restored: redis, files\n" in alert and "Safety backup: set safety-" in alert
