"""Release assets: the commit being released, then the application's own tests on it.

``source_checkout`` records where the commit was checked out; ``app_tests`` (and later the image
build) read that from its latest materialization, so materializing ``app_tests`` alone from the UI
tests the last checkout.
"""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from twinme_ops.alerting.metric_samples import DeployOutcome
from twinme_ops.alerting.metrics import MetricsResource
from twinme_ops.alerting.slack import SlackNotifier
from twinme_ops.common.deploy_files import deploy_file
from twinme_ops.common.redact import redact
from twinme_ops.defs.alerts.hooks import StepContext, send_step_alert, step_where
from twinme_ops.defs.alerts.steps import release_failure
from twinme_ops.release.app_tests.runner import (
    DEFAULT_COMMANDS,
    AppTestRunner,
    AppTestsFailed,
    AppTestsUnavailable,
    CommandResult,
)
from twinme_ops.release.git import GitError, GitRepoResource, is_sha
from twinme_ops.release.images.local import ImageBuilderResource, ImageBuildError
from twinme_ops.release.rollback import (
    ReleaseSettings,
    RollbackOutcome,
    latest_metadata,
    rollback,
)
from twinme_ops.release.verification import VerificationResult
from twinme_ops.servers.kube import KubernetesResource, RolloutFailed
from twinme_ops.servers.postgres import PostgresResource
from twinme_ops.servers.redis import RedisResource

RELEASE_GROUP = "release"
SOURCE_CHECKOUT = dg.AssetKey("source_checkout")


class SourceCheckoutConfig(dg.Config):
    """Which commit to release."""

    sha: str = Field(
        default="",
        description="Full commit id to release. Empty: the branch's current head on the remote.",
    )


class AppTestsConfig(dg.Config):
    """The application's test commands."""

    commands: list[str] = Field(
        default=list(DEFAULT_COMMANDS),
        description=(
            "Commands run in order in the checkout; the first failure stops the release. "
            "`npm audit` needs the npm registry: drop it where there is no network."
        ),
    )
    timeout_s: float = Field(default=900, gt=0, description="Time limit of each command.")


@dg.asset(
    group_name=RELEASE_GROUP,
    kinds={"git"},
    description="Exactly one commit of the watched branch, checked out in a clean work directory.",
)
def source_checkout(
    context: dg.AssetExecutionContext, config: SourceCheckoutConfig, git: GitRepoResource
) -> dg.MaterializeResult:
    """Check out the configured sha (or the branch head) and record where it is."""
    start = time.monotonic()
    try:
        sha = config.sha.strip().lower()
        if not sha:
            head = git.ls_remote_head()
            if head is None:
                raise dg.Failure(
                    description=(
                        f"branch {git.branch} does not exist on {git.remote_display}. Fix: set "
                        "TWINME_GIT_BRANCH, or give the sha in the run config."
                    )
                )
            sha = head
            context.log.info(f"no sha configured: releasing the head of {git.branch}, {sha}")
        elif not is_sha(sha):
            raise dg.Failure(
                description=f"sha {config.sha!r} is not a full commit id (40 hex characters)."
            )
        path = git.checkout(sha, f"{git.workdir_root}/{sha}")
        subject = git.commit_subject(path)
        for removed in git.prune_checkouts(path):
            context.log.info(f"removed the old checkout {removed}")
    except GitError as exc:
        raise dg.Failure(description=f"source checkout failed: {exc}") from None
    duration = time.monotonic() - start
    context.log.info(f"checked out {sha} ({subject}) into {path} in {duration:.1f} s")
    return dg.MaterializeResult(
        metadata={
            "sha": sha,
            "commit_subject": subject,
            "remote": git.remote_display,
            "branch": git.branch,
            "checkout_path": dg.MetadataValue.path(str(path)),
            "duration_s": round(duration, 3),
        },
        tags={"twinme/sha": sha},
    )


def roll_back_and_report(
    context: StepContext,
    kubernetes: KubernetesResource,
    slack: SlackNotifier,
    metrics: MetricsResource,
    *,
    attempt: DeployOutcome,
    image: str,
    container: str,
    previous: str,
    reason: str,
    verify: Callable[[], VerificationResult | None],
) -> RollbackOutcome:
    """Roll back a failed release ``attempt``, then tell Slack and the Pushgateway how it ended."""
    sha = attempt.sha
    outcome = rollback(kubernetes, container, previous, reason, verify, context.log)
    alert = release_failure(step_where(context, sha), reason, image, outcome, previous)
    send_step_alert(context, slack, alert)
    metrics.push_deploy(attempt.after_rollback(outcome.healthy), log=context.log)
    return outcome


def checkout_of_latest(context: dg.AssetExecutionContext, git: GitRepoResource) -> tuple[str, str]:
    """(sha, path) of the latest ``source_checkout``, verified to still hold that commit."""
    event = context.instance.get_latest_materialization_event(SOURCE_CHECKOUT)
    materialization = event.asset_materialization if event else None
    if materialization is None:
        raise dg.Failure(description="no source_checkout yet. Fix: run release_job.")
    metadata = materialization.metadata
    sha = str(metadata["sha"].value)
    path = str(metadata["checkout_path"].value)
    try:
        head = git.head(path)
    except GitError as exc:
        raise dg.Failure(
            description=f"the checkout of {sha} is gone ({exc}). Fix: re-run release_job."
        ) from None
    if head != sha:
        raise dg.Failure(description=f"{path} holds {head}, not {sha}. Fix: re-run release_job.")
    return sha, path


def _results_metadata(results: list[CommandResult], failed_command: str | None) -> dict[str, Any]:
    """Per-command duration (numeric, plotted by the UI) and a readable summary table."""
    rows = ["| command | result | exit | duration (s) |", "|---|---|---|---|"]
    metadata: dict[str, Any] = {}
    for r in results:
        status = "ok" if r.ok else ("timed out" if r.timed_out else "FAILED")
        rows.append(f"| `{r.command}` | {status} | {r.exit_code} | {r.duration_s:.1f} |")
        metadata[f"duration_s: {r.command}"] = round(r.duration_s, 3)
    metadata["commands"] = dg.MetadataValue.md("\n".join(rows))
    metadata["total_duration_s"] = round(sum(r.duration_s for r in results), 3)
    if failed_command:
        metadata["failed_command"] = failed_command
    return metadata


@dg.asset(
    group_name=RELEASE_GROUP,
    deps=[source_checkout],
    kinds={"node"},
    description=(
        "The application's test commands (npm ci, test:ci, test:integration, audit) passed on "
        "the checked-out commit, isolated from production (no secret, no network but the npm "
        "registry's, throwaway PostgreSQL and Redis). A failure stops the release before any "
        "image is built."
    ),
)
def app_tests(
    context: dg.AssetExecutionContext,
    config: AppTestsConfig,
    git: GitRepoResource,
    app_test_runner: AppTestRunner,
) -> dg.MaterializeResult:
    """Run the test commands on the checkout, streaming their output to the run's logs."""
    sha, path = checkout_of_latest(context, git)
    context.log.info(f"testing {sha} in {path}: {', '.join(config.commands)}")
    try:
        results = app_test_runner.run(
            Path(path),
            sha=sha,
            commands=config.commands,
            log=context.log,
            timeout_s=config.timeout_s,
            run_id=context.run.run_id,
        )
    except AppTestsUnavailable as exc:
        raise dg.Failure(description=f"app tests of {sha[:12]} cannot run: {exc}") from None
    except AppTestsFailed as exc:
        metadata = _results_metadata(exc.results, exc.failed.command)
        metadata["sha"] = sha
        metadata["exit_code"] = exc.failed.exit_code
        metadata["last_lines"] = dg.MetadataValue.md("```\n" + "\n".join(exc.failed.tail) + "\n```")
        raise dg.Failure(description=f"{exc} (commit {sha})", metadata=metadata) from None
    except OSError as exc:
        raise dg.Failure(description=redact(f"cannot run the app tests in {path}: {exc}")) from None
    metadata = _results_metadata(results, None)
    metadata["sha"] = sha
    return dg.MaterializeResult(metadata=metadata, tags={"twinme/sha": sha})


CONTAINER_IMAGE = dg.AssetKey("container_image")
API_DEPLOYMENT = dg.AssetKey("api_deployment")


class ContainerImageConfig(dg.Config):
    """Which Dockerfile to build the checkout with."""

    dockerfile: str = Field(
        default="",
        description="Path of a Dockerfile inside the checkout. Empty: twinme_ops's own "
        "deploy/app/Dockerfile.production (the spec's, fixed), with the checkout as context.",
    )


@dg.asset(
    key=CONTAINER_IMAGE,
    group_name=RELEASE_GROUP,
    deps=[app_tests],
    kinds={"docker"},
    description=(
        "The application image built from the tested commit with buildah (daemonless), "
        "docker, or a rootless buildah Job in the cluster, tagged with the commit sha (never "
        ":latest) and pushed; the digest recorded here is what api_deployment deploys."
    ),
)
def container_image(
    context: dg.AssetExecutionContext,
    config: ContainerImageConfig,
    git: GitRepoResource,
    image_builder: ImageBuilderResource,
) -> dg.MaterializeResult:
    if not image_builder.registry:
        raise dg.Failure(
            description="no image registry configured. Fix: set TWINME_REGISTRY (host[:port]) "
            "to the registry the cluster pulls from."
        )
    sha, path = checkout_of_latest(context, git)
    dockerfile = (
        Path(path) / config.dockerfile
        if config.dockerfile
        else deploy_file("app/Dockerfile.production", "Dockerfile.production")
    )
    try:
        # locally from the checkout; in the cluster, the builder's pod clones the commit itself
        built = image_builder.build_commit(
            checkout=Path(path),
            dockerfile=dockerfile,
            commit=sha,
            remote=git.remote,
            branch=git.branch,
            log=context.log,
            run_id=context.run.run_id,
        )
    except ImageBuildError as exc:
        raise dg.Failure(description=f"image build of {sha[:12]} failed: {redact(exc)}") from None
    context.log.info(f"pushed {built.image_ref} in {built.duration_s:.1f} s")
    metadata: dict[str, Any] = {
        "sha": sha,
        "image_ref": built.image_ref,
        "tag_ref": built.tag_ref,
        "digest": built.digest,
        "builder": image_builder.tool,
        "build_s": round(built.duration_s, 2),
    }
    if built.size_bytes is not None:  # none from the cluster: no made-up 0 on the size plot
        metadata["size_bytes"] = dg.MetadataValue.int(built.size_bytes)
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    key=API_DEPLOYMENT,
    group_name="release",
    deps=[CONTAINER_IMAGE],
    kinds={"kubernetes"},
    description=(
        "The API Deployment runs the image just built, pinned by digest (never :latest), with "
        "the commit as change cause; waits like kubectl rollout status. A failed rollout is "
        "rolled back to the previous image, verified again, and reported to Slack."
    ),
)
def api_deployment(
    context: dg.AssetExecutionContext,
    kubernetes: KubernetesResource,
    release_settings: ReleaseSettings,
    postgres: PostgresResource,
    redis: RedisResource,
    slack: SlackNotifier,
    metrics: MetricsResource,
) -> dg.MaterializeResult:
    image = latest_metadata(context.instance, CONTAINER_IMAGE)
    image_ref, sha = str(image.get("image_ref", "")), str(image.get("sha", ""))
    if "@sha256:" not in image_ref:
        raise dg.Failure(
            description=f"no digest-pinned image to deploy (got {image_ref or 'nothing'}). "
            "Fix: run container_image first; :latest or a bare tag cannot be rolled back."
        )
    container = release_settings.container
    previous = kubernetes.current_image(container)
    started = time.monotonic()
    kubernetes.set_image(container, image_ref, change_cause=f"twinme release {sha}")
    try:
        status = kubernetes.wait_for_rollout(log=context.log)
    except RolloutFailed as exc:
        rollout_s = time.monotonic() - started
        reason = f"rollout of {sha[:12]} failed: {redact(exc).splitlines()[0]}"
        outcome = roll_back_and_report(
            context,
            kubernetes,
            slack,
            metrics,
            attempt=DeployOutcome(sha, rollout_s=rollout_s),
            image=image_ref,
            container=container,
            previous=previous,
            reason=reason,
            verify=release_settings.verifier(postgres, redis, context.log),
        )
        raise dg.Failure(description=f"{reason}; {outcome.sentence()}") from None
    return dg.MaterializeResult(
        metadata={
            "sha": sha,
            "image": image_ref,
            "previous_image": previous,
            "rollout_s": round(time.monotonic() - started, 2),
            **{f"rollout_{k}": v for k, v in status.to_metadata().items()},
        }
    )


release_assets = [source_checkout, app_tests, container_image, api_deployment]
