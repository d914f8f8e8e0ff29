"""release_job end to end: a real push, the sample app's tests, a buildah image pushed to a real
registry, a rollout on kmock, verification against a controlled app, and Slack."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from tests.support.api_app import ControlledApp
from tests.support.git_repos import Repo, tick
from tests.support.k8s_emulator import INITIAL_IMAGE, DeploymentController
from tests.support.registry_fixtures import RegistryServer
from tests.support.release_env import deploy_resources
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.defs.release.assets import release_assets
from twinme_ops.defs.release.checks import deployment_verification
from twinme_ops.defs.release.jobs import release_job
from twinme_ops.release.app_tests.local import LocalAppTestRunner
from twinme_ops.release.app_tests.runner import OFFLINE_COMMANDS
from twinme_ops.release.git import GitRepoResource
from twinme_ops.release.images.local import ImageBuilderResource
from twinme_ops.scratch.postgres import PostgresServer
from twinme_ops.scratch.redis import RedisServer


def test_a_push_is_tested_built_deployed_by_digest_and_verified(
    tmp_path: Path,
    image_registry: RegistryServer,
    node_base_image: str,
    k8s_emulator,
    deployment_controller: DeploymentController,
    app: ControlledApp,
    slack_receiver: SlackReceiver,
    pg_server: PostgresServer,
    redis_server: RedisServer,
) -> None:
    repo = Repo(tmp_path / "git")
    sha = repo.add_sample_app()
    git = GitRepoResource(remote=str(repo.bare), workdir_root=str(tmp_path / "checkouts"))
    request, _ = tick(git)
    assert isinstance(request, dg.RunRequest) and request.run_key == sha

    resources = deploy_resources(k8s_emulator[0], app, slack_receiver, pg_server, redis_server)
    kube = resources["kubernetes"]
    defs = dg.Definitions(
        assets=release_assets,
        asset_checks=[deployment_verification],
        jobs=[release_job],
        resources={
            **resources,
            "git": git,
            "app_test_runner": LocalAppTestRunner(),
            "image_builder": ImageBuilderResource(
                registry=image_registry.host_port,
                tls_verify=False,
                build_args={"BASE_IMAGE": node_base_image},
            ),
        },
    )
    config = dict(request.run_config)
    config["ops"] = {
        **config.get("ops", {}),
        "app_tests": {"config": {"commands": list(OFFLINE_COMMANDS)}},
    }
    result = defs.resolve_job_def("release_job").execute_in_process(
        run_config=config,
        tags=request.tags,
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert result.success, [e.message for e in result.all_events if e.is_failure]

    image = result.asset_materializations_for_node("container_image")[0].metadata
    image_ref = str(image["image_ref"].value)
    assert image_ref.startswith(f"{image_registry.host_port}/twinme-api@sha256:")
    assert str(image["tag_ref"].value).endswith(f":{sha}")
    assert kube.current_image("api") == image_ref != INITIAL_IMAGE
    deployment = kube.read_deployment()
    annotations = deployment.metadata.annotations or {}  # type: ignore[union-attr]
    assert annotations["kubernetes.io/change-cause"] == f"twinme release {sha}"
    (message,) = [m for m in slack_receiver.messages if "deployed and verified" in m]
    assert sha[:12] in message and image_ref in message
