"""Release pipeline benchmark: push-to-run latency, and release_job against the same steps run
directly, in one run.

Everything is real except the Kubernetes API (kmock plus the tests' deployment controller, as in
the test suite): a bare Git repository and real pushes, the sample app's npm tests, buildah
building ``deploy/app/Dockerfile.production`` and pushing to a local ``docker-registry``, a
rollout through the official client, the verification (probes, SELECT 1, PING, locust), a Slack
receiver and a Prometheus Pushgateway.

- **Sensor detection:** after each push, one ``git_push_sensor`` tick (``git ls-remote``) is timed.
  Push-to-run latency is at most the sensor interval (30 s) plus that tick.
- **Pipeline overhead:** ``release_job`` run the way a run worker runs it: ``dg.execute_job`` of
  the code location (:mod:`bench.release_location`: ``twinme_ops.definitions`` with resources
  from the environment, so production's defaults), with the job's own executor, on a persistent
  (SQLite) instance; against the direct steps: ``git clone`` + checkout, the test commands,
  ``buildah bud`` + ``buildah push``, patch + wait through the official client, then the same
  verification. Rounds alternate direct, pipeline, pipeline, direct, ... so that warm caches and
  a busy machine favour neither. Goal: at most 1.1x. Launching the run itself (a run pod in
  production) is counted on neither side: like the sensor interval, it is push-to-run latency.
- **Noise:** the image build is most of both totals, and the same buildah commands (same CPU
  time) took anywhere from 10 to 27 s on two shared cores as other work came and went. The
  report therefore also gives both sides without it, and the JSON every step of every round; on
  a busy machine, run more rounds.

Run: ``python -m bench.release [--rounds 2]`` (root, with the tools of ``.ci/deps``).
``--quick``: one round, one tick and a 2 s load test, every step once; CI runs it
(``tests/test_bench.py``) so that the benchmark cannot rot. Exit status 0 only if every release
succeeded.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
from kubernetes import client, config

from bench import release_location
from bench.results_io import report
from tests.support.git_repos import Repo
from tests.support.k8s_emulator import CONTAINER, DEPLOYMENT, NAMESPACE
from tests.support.pushgateway import start_gateway, stop_gateway
from tests.support.registry_fixtures import build_node_base_image, start_registry
from tests.support.slack_receiver import SlackReceiver
from twinme_ops.common.deploy_files import deploy_file
from twinme_ops.defs.release.sensors import git_push_sensor
from twinme_ops.release.app_tests.runner import OFFLINE_COMMANDS
from twinme_ops.release.git import GitRepoResource
from twinme_ops.release.rollback import ReleaseSettings
from twinme_ops.scratch.postgres import PostgresServer
from twinme_ops.scratch.redis import RedisServer
from twinme_ops.servers.postgres import PostgresResource
from twinme_ops.servers.redis import RedisResource

SENSOR_INTERVAL_S = 30
# direct step -> the release_job step doing the same work
STEPS = {
    "checkout": "source_checkout",
    "tests": "app_tests",
    "image": "container_image",
    "deploy": "api_deployment",
    "verification": "api_deployment_deployment_verification",
}
_log = logging.getLogger("bench.release")


def sh(cmd: list[str] | str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command, fail loudly; returns stdout."""
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, shell=isinstance(cmd, str), capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return proc.stdout


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


# The stand-ins for what runs elsewhere in production, each in a process of its own so that the
# bench's threads (and release_job's, which runs in this process) neither slow them down nor are
# slowed down by them: the API (the tests' controlled app, with Node's listen backlog so that ten
# locust users connecting at once are not dropped), and the Kubernetes API (kmock) with the tests'
# deployment controller, which polls it 50 times a second.
_APP_CODE = """
import sys
import threading
from tests.support.api_app import ControlledApp

class App(ControlledApp):
    request_queue_size = 511

app = App()
threading.Thread(target=app.serve_forever, daemon=True).start()
print(app.url, flush=True)
sys.stdin.read()  # until the bench closes it
"""
_CLUSTER_CODE = """
import sys
from pathlib import Path
from tests.support.k8s_emulator import (
    DeploymentController, EmulatorHandle, create_deployment, write_kubeconfig
)

emulator = EmulatorHandle().start()
kubeconfig = write_kubeconfig(Path(sys.argv[1]), emulator.url, "bench-token")
create_deployment(kubeconfig)
controller = DeploymentController(kubeconfig).start()
controller.wait_settled()
print(emulator.url, flush=True)
sys.stdin.read()  # until the bench closes it
controller.stop()
errors = emulator.server_errors()
emulator.stop()
if errors:
    sys.exit(f"the Kubernetes emulator failed on requests: {errors!r}")
"""


class ChildServer:
    """A stand-in server in a child process; the first line it prints is its URL."""

    def __init__(self, what: str, code: str, *args: str) -> None:
        self.what = what
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=Path(__file__).parents[1],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        self.url = self._proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            self._proc.kill()
            self._proc.wait(10)
            raise RuntimeError(f"the {what} did not start")

    def stop(self) -> None:
        """Close its stdin, which ends it (the cluster checks its emulator first)."""
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            code = self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.terminate()
            code = self._proc.wait(10)
        if code != 0:
            raise RuntimeError(f"the {self.what} exited with {code}")


class Bench:
    """The servers of one benchmark run, and the two ways of releasing a commit."""

    def __init__(
        self,
        root: Path,
        registry: str,
        base_image: str,
        kubeconfig: Path,
        pushgateway_url: str,
        load_s: int,
    ) -> None:
        self.root = root
        self.registry = registry
        self.base_image = base_image
        self.kubeconfig = kubeconfig
        self.repo = Repo(root / "git")
        self.repo.add_sample_app()
        self.app = ChildServer("stand-in API", _APP_CODE)
        server_dir = root / "servers"
        server_dir.mkdir()
        server_dir.chmod(0o755)  # the PostgreSQL system user must traverse it
        self.pg = PostgresServer.start(server_dir / "pg")
        self.redis = RedisServer.start(server_dir / "redis")
        self.slack = SlackReceiver()
        self.settings = ReleaseSettings(
            api_url=self.app.url, load_users=10, load_spawn_rate=10, load_duration_s=load_s
        )
        self.git = GitRepoResource(remote=str(self.repo.bare), workdir_root=str(root / "checkouts"))
        self.postgres = PostgresResource(url=self.pg.url("postgres"))
        self.redis_resource = RedisResource(url=self.redis.url())
        # what the code location reads (resources.py), inherited by the run's step processes
        self.environment = {
            "TWINME_ENV": "local",
            "TWINME_HOME": str(root / "home"),
            "DATABASE_URL": self.postgres.url,
            "REDIS_URL": self.redis_resource.url,
            "TWINME_GIT_REMOTE": str(self.repo.bare),
            "TWINME_GIT_BRANCH": "main",
            "TWINME_REGISTRY": registry,
            "TWINME_IMAGE_BUILDER": "buildah",
            "KUBECONFIG": str(kubeconfig),
            "TWINME_K8S_NAMESPACE": NAMESPACE,
            "TWINME_API_URL": self.app.url,
            "SLACK_WEBHOOK_URL": self.slack.url,
            "TWINME_PUSHGATEWAY_URL": pushgateway_url,
            "TWINME_BENCH_BASE_IMAGE": base_image,
            "TWINME_BENCH_LOAD_USERS": str(self.settings.load_users),
            "TWINME_BENCH_LOAD_S": str(load_s),
        }
        os.environ.update(self.environment)
        os.environ.pop("TWINME_DAGSTER_URL", None)
        (root / "dagster").mkdir()
        self.instance = dg.DagsterInstance.local_temp(tempdir=str(root / "dagster"))

    def close(self) -> None:
        self.instance.dispose()
        self.app.stop()
        self.slack.close()
        self.pg.stop()
        self.redis.stop()

    def push(self, n: int) -> str:
        sha = self.repo.commit(f"release {n}", {"RELEASE": f"{n}\n"})
        self.repo.push()
        return sha

    # --- direct: the same steps with the raw tools --------------------------------------------

    def direct(self, sha: str) -> dict[str, float]:
        work = self.root / f"direct-{sha[:12]}"
        steps: dict[str, float] = {}
        steps["checkout"], _ = timed(
            lambda: (
                sh(["git", "clone", "--quiet", "--no-checkout", str(self.repo.bare), str(work)]),
                sh(["git", "checkout", "--quiet", "--detach", sha], cwd=work),
            )
        )
        steps["tests"], _ = timed(lambda: [sh(c, cwd=work) for c in OFFLINE_COMMANDS])
        steps["image"], ref = timed(lambda: self._buildah(work, sha))
        steps["deploy"], _ = timed(lambda: self._patch_and_wait(ref, sha))
        verify = self.settings.verifier(self.postgres, self.redis_resource, _log)
        steps["verification"], result = timed(verify)
        if result is None or not result.passed:
            raise RuntimeError(f"direct verification failed: {result}")
        shutil.rmtree(work, ignore_errors=True)
        return steps

    def _buildah(self, work: Path, sha: str) -> str:
        storage = self.root / f"buildah-{sha[:12]}"
        env = {**os.environ, "STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot"}
        base = ["buildah", f"--root={storage}/s", f"--runroot={storage}/r", "--storage-driver=vfs"]
        ref = f"{self.registry}/twinme-api:{sha}"
        dockerfile = deploy_file("app/Dockerfile.production", "Dockerfile.production")
        sh(
            [*base, "bud", "--isolation=chroot", "--format=docker", "--tls-verify=false"]
            + ["--pull=missing", "--build-arg", f"BASE_IMAGE={self.base_image}"]
            + ["-f", str(dockerfile), "-t", ref, str(work)],
            env=env,
        )
        digestfile = storage / "digest"
        sh([*base, "push", "--tls-verify=false", f"--digestfile={digestfile}", ref], env=env)
        digest = digestfile.read_text().strip()
        shutil.rmtree(storage, ignore_errors=True)
        return f"{self.registry}/twinme-api@{digest}"

    def _patch_and_wait(self, image: str, sha: str) -> None:
        api = client.AppsV1Api(
            config.new_client_from_config(config_file=str(self.kubeconfig), persist_config=False)
        )
        # what `kubectl set image` + `kubectl annotate` send: a JSON patch on the container's index
        current = api.read_namespaced_deployment(DEPLOYMENT, NAMESPACE)
        names = [c.name for c in current.spec.template.spec.containers]  # type: ignore[union-attr]
        patch = [
            {
                "op": "replace",
                "path": f"/spec/template/spec/containers/{names.index(CONTAINER)}/image",
                "value": image,
            },
            {
                "op": "add",
                "path": "/metadata/annotations",
                "value": {"kubernetes.io/change-cause": f"bench {sha}"},
            },
        ]
        api.patch_namespaced_deployment(DEPLOYMENT, NAMESPACE, patch)
        # `kubectl rollout status` watches: it sees the end of the rollout at once
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            d = api.read_namespaced_deployment(DEPLOYMENT, NAMESPACE)
            s, want = d.status, d.spec.replicas  # type: ignore[union-attr]
            if (
                s is not None
                and (s.observed_generation or 0) >= (d.metadata.generation or 0)  # type: ignore[union-attr]
                and s.updated_replicas == want
                and s.available_replicas == want
                and (s.replicas or 0) == want
            ):
                return
            time.sleep(0.1)
        raise RuntimeError("direct rollout did not finish in 120 s")

    # --- pipeline: release_job ----------------------------------------------------------------

    def pipeline(self, sha: str) -> dict[str, float]:
        run_config = {
            "ops": {
                "source_checkout": {"config": {"sha": sha}},
                "app_tests": {"config": {"commands": list(OFFLINE_COMMANDS)}},
            }
        }
        job = dg.reconstructable(release_location.release_job)
        started = time.perf_counter()
        with dg.execute_job(
            job, instance=self.instance, run_config=run_config, tags={"twinme/sha": sha}
        ) as result:
            wall = time.perf_counter() - started
            if not result.success:
                failures = [e.message for e in result.all_events if e.is_failure]
                raise RuntimeError(f"release_job failed: {failures}")
            run_id = result.run_id
        steps = _step_durations(self.instance, run_id)
        steps["total"] = wall
        return steps

    def sensor_tick(self) -> tuple[float, str | None]:
        with dg.build_sensor_context(cursor=None, resources={"git": self.git}) as context:
            seconds, request = timed(lambda: git_push_sensor(context))
        return seconds, getattr(request, "run_key", None)


def _step_durations(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """Seconds from STEP_START to STEP_SUCCESS of each step of the run."""
    starts: dict[str, float] = {}
    durations: dict[str, float] = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = record.timestamp
        elif event.event_type_value == "STEP_SUCCESS" and event.step_key in starts:
            durations[event.step_key] = round(record.timestamp - starts[event.step_key], 3)
    missing = set(STEPS.values()) - set(durations)
    if missing:
        raise RuntimeError(f"release_job run {run_id} has no successful step {sorted(missing)}")
    return durations


@contextmanager
def servers(root: Path) -> Iterator[tuple[str, str, Path, str]]:
    """Registry (with the offline Node base image), kmock + controller, Pushgateway."""
    kubeconfig = root / "kubeconfig.yaml"
    cluster = ChildServer("Kubernetes emulator", _CLUSTER_CODE, str(kubeconfig))
    gateway_dir = root / "pushgateway"
    gateway_dir.mkdir()
    gateway_proc, gateway = start_gateway(gateway_dir, auth=False)
    try:
        with start_registry() as registry:
            print("building the offline Node base image ...", flush=True)
            base = build_node_base_image(registry)
            yield registry.host_port, base, kubeconfig, gateway.url
    finally:
        stop_gateway(gateway_proc)
        cluster.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="direct/pipeline pairs")
    parser.add_argument("--ticks", type=int, default=5, help="timed sensor ticks")
    parser.add_argument("--load-s", type=int, default=5, help="load test seconds, both sides")
    parser.add_argument(
        "--quick", action="store_true", help="CI form: 1 round, 1 tick, a 2 s load test"
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.ticks, args.load_s = 1, 1, 2
    if args.rounds < 1 or args.ticks < 1 or args.load_s < 1:
        parser.error("--rounds, --ticks and --load-s must be at least 1")

    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="twinme-bench-release-"))
    root.chmod(0o755)
    try:
        with servers(root) as (registry, base, kubeconfig, pushgateway_url):
            bench = Bench(root, registry, base, kubeconfig, pushgateway_url, args.load_s)
            try:
                results = run(bench, args.rounds, args.ticks)
            finally:
                bench.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["quick"] = args.quick
    results["bench_wall_s"] = round(time.monotonic() - started, 1)
    tick = results["sensor_tick_median_s"]
    report(
        "release",
        results,
        f"release_job {results['pipeline_total_s']:.1f} s vs direct steps "
        f"{results['direct_total_s']:.1f} s: {results['ratio_total']:.2f}x (goal <= 1.1x), of "
        f"which {results['pipeline_outside_steps_s']:.2f} s outside the steps\n"
        f"without the image build (the same buildah commands on both sides, from "
        f"{min(results['image_build_s']):.1f} to {max(results['image_build_s']):.1f} s in this "
        f"run): {results['pipeline_without_image_s']:.1f} s vs "
        f"{results['direct_without_image_s']:.1f} s, {results['ratio_without_image']:.2f}x\n"
        f"sensor tick {tick * 1000:.0f} ms, so push-to-run <= {SENSOR_INTERVAL_S} s + "
        f"{tick:.2f} s",
    )
    return 0


def run(bench: Bench, rounds: int, ticks: int) -> dict[str, Any]:
    """Time the sensor ticks, then alternate direct and pipeline releases of fresh pushes."""
    tick_s = []
    for n in range(ticks):
        sha = bench.push(n)
        seconds, run_key = bench.sensor_tick()
        if run_key != sha:
            raise RuntimeError(f"the sensor did not request {sha} (got {run_key})")
        tick_s.append(seconds)
    direct: list[dict[str, float]] = []
    pipeline: list[dict[str, float]] = []
    for r in range(rounds):
        for kind in ("direct", "pipeline") if r % 2 == 0 else ("pipeline", "direct"):
            sha = bench.push(100 + 2 * r + (kind == "pipeline"))
            print(f"round {r + 1}: {kind} release of {sha[:12]} ...", flush=True)
            if kind == "direct":
                steps = bench.direct(sha)
                steps["total"] = sum(steps.values())
                direct.append(steps)
            else:
                steps = bench.pipeline(sha)
                pipeline.append(steps)
            print(f"  {kind}: " + ", ".join(f"{k} {v:.2f} s" for k, v in steps.items()))
    direct_total = statistics.mean(d["total"] for d in direct)
    pipeline_total = statistics.mean(p["total"] for p in pipeline)
    outside = statistics.mean(p["total"] - sum(p[s] for s in STEPS.values()) for p in pipeline)
    per_step = {
        name: {
            "direct_s": round(statistics.mean(d[name] for d in direct), 2),
            "pipeline_s": round(statistics.mean(p[step] for p in pipeline), 2),
        }
        for name, step in STEPS.items()
    }
    # the image build dominates both totals and varies most with the machine's other work
    direct_rest = statistics.mean(d["total"] - d["image"] for d in direct)
    pipeline_rest = statistics.mean(p["total"] - p[STEPS["image"]] for p in pipeline)
    return {
        "rounds": rounds,
        "sensor_interval_s": SENSOR_INTERVAL_S,
        "sensor_tick_s": [round(t, 4) for t in tick_s],
        "sensor_tick_median_s": round(statistics.median(tick_s), 4),
        "direct": direct,
        "pipeline": pipeline,
        "per_step_mean": per_step,
        "pipeline_outside_steps_s": round(outside, 2),
        "direct_total_s": round(direct_total, 2),
        "pipeline_total_s": round(pipeline_total, 2),
        "ratio_total": round(pipeline_total / direct_total, 3),
        "image_build_s": sorted(
            [round(d["image"], 2) for d in direct] + [round(p[STEPS["image"]], 2) for p in pipeline]
        ),
        "direct_without_image_s": round(direct_rest, 2),
        "pipeline_without_image_s": round(pipeline_rest, 2),
        "ratio_without_image": round(pipeline_rest / direct_rest, 3),
    }


if __name__ == "__main__":
    sys.exit(main())
