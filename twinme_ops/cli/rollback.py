"""``twinme-ops rollback``: roll the API back by hand (patch, wait, verify, tell Slack)."""

from __future__ import annotations

import argparse
import getpass
import logging
import sys


def cmd_rollback(args: argparse.Namespace) -> int:
    """Roll the API Deployment back by hand: patch, wait for the rollout, verify, tell Slack."""

    import dagster as dg

    from twinme_ops.alerting.alert import Alert, Fact
    from twinme_ops.defs.resources import build_resources
    from twinme_ops.release.rollback import rollback

    log = logging.getLogger("twinme_ops.rollback")
    keys = ("kubernetes", "release_settings", "postgres", "redis", "slack")
    wanted = {k: v for k, v in build_resources().items() if k in keys}
    with dg.build_resources(wanted) as res:
        kube, settings = res.kubernetes, res.release_settings
        if not kube.is_configured():
            print(
                "error: no Kubernetes cluster configured. Fix: set KUBECONFIG (and "
                "TWINME_K8S_NAMESPACE), or run inside the cluster with TWINME_ENV=production.",
                file=sys.stderr,
            )
            return 2
        container = args.container or settings.container
        current = kube.current_image(container)
        target = args.image or kube.previous_image()
        if not target:
            print(
                f"error: {kube.describe()} records no previous image. Fix: pass --image "
                "REGISTRY/REPO@sha256:... (the previous_image of api_deployment in the UI).",
                file=sys.stderr,
            )
            return 2
        if target == current:
            print(f"{kube.describe()} already runs {target}: nothing to do")
            return 0
        print(f"{kube.describe()}, container {container}:\n  now   {current}\n  back to {target}")
        if not args.yes:
            answer = input("roll back? [y/N] ") if sys.stdin.isatty() else ""
            if answer.strip().lower() not in ("y", "yes"):
                print("not rolled back (confirm with --yes, or answer y)", file=sys.stderr)
                return 3
        verify = settings.verifier(res.postgres, res.redis, log)
        reason = f"manual rollback by {getpass.getuser()} from {current}"
        outcome = rollback(kube, container, target, reason, verify, log)
        res.slack.send(
            Alert(
                headline=f"TwinMe API rolled back by hand ({getpass.getuser()})",
                severity="success" if outcome.healthy else "failure",
                emoji=":leftwards_arrow_with_hook:",
                facts=[
                    Fact("Deployment", kube.describe()),
                    Fact("Was running", current),
                    Fact("Rollback", outcome.sentence()),
                ],
                advice=""
                if outcome.healthy
                else "The API is NOT healthy on this image either: "
                "check the Deployment and /health now, or roll back to another known-good digest.",
            ),
            log=log,
        )
        print(outcome.sentence())
        return 0 if outcome.healthy else 1


def register_rollback(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``twinme-ops rollback [--image REF] [--yes]``."""
    parser = subparsers.add_parser(
        "rollback",
        help="roll the API back to the previous (or a given) image, wait, verify",
        description="Patch the API Deployment back to the image the last release replaced "
        "(recorded in the twinme.ai/previous-image annotation) or to --image, wait for the "
        "rollout like kubectl rollout status, run the deployment verification when "
        "TWINME_API_URL is set, and tell Slack. Exit code 0 only when the result is healthy.",
    )
    parser.add_argument("--image", help="digest-pinned image to go back to (default: previous)")
    parser.add_argument("--container", help="container to patch (default: api)")
    parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    parser.set_defaults(handler=cmd_rollback)
