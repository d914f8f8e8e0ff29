"""git_push_sensor: a push to the watched branch starts one release of the newest commit."""

import dagster as dg

from twinme_ops.common.redact import redact
from twinme_ops.defs.logs.ticks import logged_tick
from twinme_ops.defs.release.jobs import release_job
from twinme_ops.release.git import GitError, GitRepoResource


@dg.sensor(
    job=release_job,
    minimum_interval_seconds=30,
    description=(
        "Polls TWINME_GIT_REMOTE/TWINME_GIT_BRANCH with git ls-remote (no clone). A new head "
        "starts release_job for that sha (run_key = sha, so a commit is released once); several "
        "pushes between ticks release only the newest. The first tick releases the current head."
    ),
)
@logged_tick
def git_push_sensor(
    context: dg.SensorEvaluationContext, git: GitRepoResource
) -> dg.RunRequest | dg.SkipReason:
    """One ``git ls-remote`` per tick; the cursor is the last head seen."""
    if not git.remote:
        return dg.SkipReason("no Git remote configured: set TWINME_GIT_REMOTE to watch pushes")
    try:
        head = git.ls_remote_head()
    except GitError as exc:
        return dg.SkipReason(f"Git remote unreachable: {exc}")
    except Exception as exc:  # the sensor must keep ticking whatever happens
        return dg.SkipReason(redact(f"cannot poll {git.remote_display}: {exc}"))
    if head is None:
        return dg.SkipReason(f"branch {git.branch} not found on {git.remote_display}")
    if head == context.cursor:
        return dg.SkipReason(f"no new commit on {git.branch} (head {head[:12]})")
    previous = context.cursor or "none"
    context.update_cursor(head)
    context.log.info(f"new head of {git.branch}: {head} (previous: {previous})")
    return dg.RunRequest(
        run_key=head,
        run_config={"ops": {"source_checkout": {"config": {"sha": head}}}},
        tags={"twinme/sha": head},
    )
