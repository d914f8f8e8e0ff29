"""What an alert tells a person to do when a release or deployment-test step fails or is stopped.

Each entry is the step's name for people and its next action (``common/step_advice.py``); the
alert formatter lays them out, ``defs/alerts/steps.py`` gathers them by step name. A release's
own failures roll back by themselves; a release stopped from outside does not, hence ``stopped``.
"""

from __future__ import annotations

from twinme_ops.common.step_advice import DEFAULT_ADVICE, StepAdvice

_NOT_DEPLOYED = "Production is unchanged: nothing was deployed."

STEPS: dict[str, StepAdvice] = {
    "source_checkout": StepAdvice(
        "release checkout", f"{_NOT_DEPLOYED} Check TWINME_GIT_REMOTE and the commit."
    ),
    "app_tests": StepAdvice(
        "release app tests",
        f"{_NOT_DEPLOYED} The release stopped before any build: fix the tests and push again.",
    ),
    "container_image": StepAdvice(
        "release image build",
        f"{_NOT_DEPLOYED} Fix the image build (Dockerfile, registry), then re-run release_job.",
    ),
    "api_deployment": StepAdvice(
        "API deployment",
        DEFAULT_ADVICE,
        stopped="The rollout was stopped halfway and NOT rolled back: check the API now "
        "(Deployment, /health), and run `twinme-ops rollback` if the new version is unhealthy.",
    ),
    "api_deployment_deployment_verification": StepAdvice(
        "deployment verification",
        DEFAULT_ADVICE,
        stopped="The new version is deployed but its verification was stopped, and nothing was "
        "rolled back: run deployment_tests_job, or `twinme-ops rollback`.",
    ),
    "deployment_tests": StepAdvice(
        "deployment tests",
        "Production was not changed by this job: look at the failing check and the API's "
        "dashboards.",
    ),
}
