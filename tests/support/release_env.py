"""The resources a release's deploy and verify steps use, pointed at a test's servers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.api_app import ControlledApp
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.alerting.metrics import MetricsResource
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.release.rollback import ReleaseSettings
from twinme_ops.scratch.postgres import PostgresServer
from twinme_ops.scratch.redis import RedisServer
from twinme_ops.servers.kube import KubernetesResource
from twinme_ops.servers.postgres import PostgresResource
from twinme_ops.servers.redis import RedisResource


def deploy_resources(
    kubeconfig: Path,
    app: ControlledApp,
    slack: SlackReceiver,
    pg: PostgresServer,
    redis_server: RedisServer,
) -> dict[str, Any]:
    """The resources the deploy and verify steps use, pointed at the test's servers."""
    return {
        "kubernetes": KubernetesResource(
            kubeconfig=str(kubeconfig), rollout_timeout_s=30, poll_interval_s=0.2
        ),
        "release_settings": ReleaseSettings(
            api_url=app.url, load_users=2, load_spawn_rate=2, load_duration_s=3
        ),
        "postgres": PostgresResource(url=pg.url("postgres")),
        "redis": RedisResource(url=redis_server.url(with_password=True)),
        "slack": SlackNotifier(webhook_url=slack.url, max_retries=0),
        "metrics": MetricsResource(),  # no gateway: logged only
    }
