"""deployment_tests_job: the spec's deployment-tests.sh as a job, against real servers."""

from __future__ import annotations

from typing import Any

import dagster as dg

from tests.support.api_app import ControlledApp
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.defs.release.deployment_tests import deployment_tests_job
from twinme_ops.release.rollback import ReleaseSettings
from twinme_ops.scratch.postgres import PostgresServer
from twinme_ops.scratch.redis import RedisServer
from twinme_ops.servers.postgres import PostgresResource
from twinme_ops.servers.redis import RedisResource


def _run(
    app_url: str,
    slack: SlackReceiver,
    pg_url: str,
    redis_url: str,
    run_config: dict[str, Any] | None = None,
) -> dg.ExecuteInProcessResult:
    defs = dg.Definitions(
        jobs=[deployment_tests_job],
        resources={
            "release_settings": ReleaseSettings(
                api_url=app_url, load_users=2, load_spawn_rate=2, load_duration_s=3
            ),
            "postgres": PostgresResource(url=pg_url),
            "redis": RedisResource(url=redis_url),
            "slack": SlackNotifier(webhook_url=slack.url, max_retries=0),
        },
    )
    return defs.resolve_job_def("deployment_tests_job").execute_in_process(
        run_config=run_config or {}, instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )


def _failure(result: dg.ExecuteInProcessResult) -> str:
    """The description of the one step failure (what the UI and the Slack alert show)."""
    (event,) = [e for e in result.all_events if e.is_step_failure]
    data = event.step_failure_data
    return (data.user_failure_data.description or "") if data.user_failure_data else ""


def test_a_healthy_api_passes_with_its_numbers_in_metadata(
    app: ControlledApp,
    slack_receiver: SlackReceiver,
    pg_server: PostgresServer,
    redis_server: RedisServer,
) -> None:
    result = _run(app.url, slack_receiver, pg_server.url(), redis_server.url())
    assert result.success
    (output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    metadata = output.event_specific_data.metadata  # type: ignore[union-attr]
    assert int(metadata["load_requests"].value) > 0  # type: ignore[arg-type]
    assert 0 < float(metadata["load_p95_ms"].value) < 200  # type: ignore[arg-type]
    assert metadata["load_error_rate_pct"].value == 0
    assert not slack_receiver.messages


def test_a_slow_api_fails_and_alerts_with_the_reason(
    app: ControlledApp,
    slack_receiver: SlackReceiver,
    pg_server: PostgresServer,
    redis_server: RedisServer,
) -> None:
    app.delay_s = 0.3
    result = _run(app.url, slack_receiver, pg_server.url(), redis_server.url())
    assert not result.success
    assert "p95" in _failure(result)
    (alert,) = slack_receiver.messages
    assert "deployment_tests_job" in alert and "p95" in alert


def test_unreachable_services_are_each_named(
    app: ControlledApp, slack_receiver: SlackReceiver
) -> None:
    app.ready_status = 503
    result = _run(
        app.url,
        slack_receiver,
        "postgresql://postgres:s3cret-pg@127.0.0.1:1/postgres",
        "redis://:s3cret-redis@127.0.0.1:1/0",
        {"ops": {"deployment_tests": {"config": {"load_duration_s": 2}}}},
    )
    assert not result.success
    message = _failure(result)
    assert "/ready" in message and "database" in message and "redis" in message
    everything = message + "".join(slack_receiver.messages)
    assert "s3cret" not in everything


def test_no_api_url_is_a_clear_error(
    slack_receiver: SlackReceiver, pg_server: PostgresServer, redis_server: RedisServer
) -> None:
    result = _run("", slack_receiver, pg_server.url(), redis_server.url())
    assert not result.success
    assert "TWINME_API_URL" in _failure(result)
