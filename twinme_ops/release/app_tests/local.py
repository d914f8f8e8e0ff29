"""The pushed commit's tests on this machine: isolated from production, with throwaway servers.

:class:`LocalAppTestRunner` (the default outside production) runs each command of ``app_tests``
in a scratch copy of the checkout, with :func:`~twinme_ops.release.app_tests.runner.clean_env`
(nothing of
this process's environment: no DATABASE_URL, REDIS_URL, AWS keys, backup key, webhook, git
token, KUBECONFIG), a throwaway HOME and TMPDIR, as the unprivileged user ``twinme-app-tests``,
in mount and PID namespaces of its own that hide ``$TWINME_HOME``, ``$DAGSTER_HOME``, the
kubeconfig and the ServiceAccount token (:mod:`twinme_ops.release.app_tests.isolation`).

**Network.** Pushed code runs only inside a network namespace where loopback is the only
interface: neither the sandbox's nor production's database exists there, whatever address the
code hardcodes. Only steps that run none of its code get the network:

- ``npm ci`` runs in two phases: ``npm ci --ignore-scripts`` with the network (npm fetches the
  locked packages; no package script runs), then ``npm rebuild`` offline (the packages' install
  scripts, and the project's own; ``npm run prepare`` when it has one). Install scripts that
  download something (prebuilt binaries, node-gyp headers) fail offline; node's headers are
  given to node-gyp when they are installed next to node. ``install_scripts_network`` opts in.
- ``npm audit`` runs with the network (it sends the lock file to the registry, runs no script).
- every other command runs offline.

**Throwaway PostgreSQL and Redis** (:mod:`~twinme_ops.release.app_tests.services`) start inside the
namespace (while ``npm ci`` downloads), as the user ``twinme-app-services``: PostgreSQL 18 with
pgvector and pg_trgm created in database ``app_tests``, owned by the non-superuser role
``app_tests`` (it may create roles, not superusers; the superuser's password is never given out),
and Redis with neither persistence nor password, both on the namespace's 127.0.0.1. Offline
commands get their URLs as ``DATABASE_URL``/``TEST_DATABASE_URL``, ``REDIS_URL``/``TEST_REDIS_URL``
and ``PG*``.

``isolation="none"`` (``TWINME_APP_TESTS_ISOLATION=none``: developer laptops only) keeps the
clean environment and the throwaway servers but drops the namespaces and the user: every run
says so in a warning. A machine that cannot isolate otherwise fails with
:class:`~twinme_ops.release.app_tests.isolation.IsolationUnavailable` naming the fix; it never
falls back.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import stat
import tempfile
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from twinme_ops.common.log import Log
from twinme_ops.release.app_tests.isolation import (
    SERVICES_USER,
    TESTS_USER,
    IsolationUnavailable,
    NetworkNamespace,
    confinement_argv,
    give_tree,
    hidden_paths,
    probe_confinement,
    require_tools,
    sandbox_user,
)
from twinme_ops.release.app_tests.runner import (
    DEFAULT_PATH,
    AppTestRunner,
    AppTestsFailed,
    AppTestsUnavailable,
    CommandResult,
    clean_env,
    combine,
    run_command,
)
from twinme_ops.release.app_tests.services import ThrowawayServices, ready, start_services
from twinme_ops.scratch.redis import redis_server_binary

ISOLATION_MODES = ("namespaces", "none")
# always hidden from pushed code, when they exist: where pods and containers keep credentials
ALWAYS_HIDDEN = ("/var/run/secrets", "/run/secrets", "/etc/twinme")
# variables of this process that configure npm's network access, passed to online steps only
NETWORK_ENV = ("npm_config_registry", "npm_config_strict_ssl", "npm_config_cafile")


@dataclass(frozen=True)
class Step:
    """One process a configured command is run as, and whether it may use the network."""

    command: str
    online: bool


def plan(command: str, app_dir: Path, *, install_scripts_network: bool = False) -> list[Step]:
    """The steps of one configured command (see the module docstring)."""
    argv = shlex.split(command)
    if argv[:2] == ["npm", "ci"]:
        steps = [
            Step(shlex.join([*argv, "--ignore-scripts"]), True),
            Step("npm rebuild --foreground-scripts", install_scripts_network),
        ]
        if "prepare" in _scripts(app_dir):
            steps.append(Step("npm run prepare", install_scripts_network))
        return steps
    if argv[:2] == ["npm", "audit"]:
        return [Step(command, True)]
    return [Step(command, False)]


def _scripts(app_dir: Path) -> dict[str, Any]:
    try:
        scripts = json.loads((app_dir / "package.json").read_text()).get("scripts")
    except (OSError, ValueError, AttributeError):
        return {}
    return scripts if isinstance(scripts, dict) else {}


def _world_reachable(path: Path) -> bool:
    """Whether any user can traverse to ``path`` and execute it (node under /root cannot)."""
    return all(part.stat().st_mode & stat.S_IXOTH for part in (*reversed(path.parents), path))


class LocalAppTestRunner(AppTestRunner):
    """Runs the app's commands on this machine, isolated (see the module docstring)."""

    isolation: str = Field(
        default="namespaces",
        description="'namespaces' (network, mount and PID namespaces, an unprivileged user; "
        "needs root) or 'none' (developer laptops: same clean environment, no isolation; "
        "TWINME_APP_TESTS_ISOLATION).",
    )
    work_root: str = Field(
        default="",
        description="Where each run's scratch directory is made. Empty: the system's temp dir.",
    )
    hidden_paths: list[str] = Field(
        default=[],
        description="Paths pushed code must not see ($TWINME_HOME, $DAGSTER_HOME, kubeconfig...)"
        "; the run's checkout and /var/run/secrets are always hidden.",
    )
    services: bool = Field(
        default=True, description="Start a throwaway PostgreSQL and Redis for the tests."
    )
    install_scripts_network: bool = Field(
        default=False,
        description="Give packages' install scripts (npm rebuild) the network. Off: offline.",
    )

    def run(
        self,
        checkout: Path,
        *,
        sha: str,
        commands: Sequence[str],
        log: Log,
        timeout_s: float = 900,
        run_id: str = "",
    ) -> list[CommandResult]:
        if self.isolation not in ISOLATION_MODES:
            raise AppTestsUnavailable(
                f"app tests isolation {self.isolation!r} is not one of "
                f"{', '.join(ISOLATION_MODES)}. Fix: TWINME_APP_TESTS_ISOLATION"
            )
        node, npm = shutil.which("node"), shutil.which("npm")
        if node is None or npm is None:
            raise AppTestsUnavailable("node and npm are not on PATH. Fix: install Node.js >= 18")
        work = Path(tempfile.mkdtemp(prefix="twinme-app-tests-", dir=self.work_root or None))
        work.chmod(0o755)  # the users below traverse it, into their own 0700 directories
        try:
            return self._run_in(work, Path(checkout), commands, log, timeout_s, node, npm)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _run_in(
        self,
        work: Path,
        checkout: Path,
        commands: Sequence[str],
        log: Log,
        timeout_s: float,
        node: str,
        npm: str,
    ) -> list[CommandResult]:
        isolated = self.isolation == "namespaces"
        tools: dict[str, str] = {}
        uid, gid = os.getuid(), os.getgid()
        if isolated:
            tools = require_tools()
            uid, gid = sandbox_user(TESTS_USER)
            probe_confinement(tools, uid, gid)
            for tool in (node, npm):
                if not _world_reachable(Path(tool).resolve()):
                    raise IsolationUnavailable(
                        f"{tool} cannot be run by the unprivileged user {TESTS_USER}: a "
                        "directory above it is private. Fix: install Node.js system-wide"
                    )
        else:
            warn = log.warning
            warn(
                "APP TESTS ARE NOT ISOLATED (TWINME_APP_TESTS_ISOLATION=none): the pushed code "
                "runs as this user, with the network, and can read what this user can. Only for "
                "a developer laptop; never where production credentials are."
            )
        app, home, tmp = work / "app", work / "home", work / "tmp"
        shutil.copytree(checkout, app, symlinks=True)  # the checkout stays pristine for the build
        for path in (home, tmp):
            path.mkdir(mode=0o700)
        if isolated:
            for path in (app, home, tmp):
                give_tree(path, uid, gid)
        path_dirs = dict.fromkeys([str(Path(node).parent), str(Path(npm).parent)])
        base = {"HOME": str(home), "TMPDIR": str(tmp), "npm_config_cache": str(home / ".npm")}
        headers = Path(node).resolve().parent.parent
        if (headers / "include" / "node" / "node.h").is_file():
            base["npm_config_nodedir"] = str(headers)  # node-gyp then downloads nothing
        env = clean_env(base, path=":".join([*path_dirs, DEFAULT_PATH]))
        network_env = {n: os.environ[n] for n in NETWORK_ENV if os.environ.get(n)}
        prefix: list[str] = []
        hidden: list[Path] = []
        if isolated:
            candidates = [*self.hidden_paths, *ALWAYS_HIDDEN, str(checkout)]
            keep = [work, node, npm, *tools.values()]
            if self.services:
                keep.append(redis_server_binary()[0])  # Redis runs confined too
            hidden = hidden_paths(candidates, keep=keep)
            prefix = confinement_argv(tools, uid, gid, hidden)
            log.info(
                f"isolation: user {TESTS_USER} (uid {uid}), no network but loopback for the "
                "pushed code (npm ci fetches packages with --ignore-scripts first), hidden: "
                + (", ".join(str(p) for p in hidden) or "nothing")
            )
        with NetworkNamespace() if isolated else _NoNamespace() as ns:
            services: Future[ThrowawayServices] | None = None
            if self.services:
                redis_prefix = None
                if isolated:
                    redis_prefix = confinement_argv(
                        tools, *sandbox_user(SERVICES_USER), hidden, pid_namespace=False
                    )
                services = ns.submit(lambda: start_services(work, redis_prefix))
            try:
                return self._commands(
                    commands, app, env, network_env, prefix, ns, services, log, timeout_s
                )
            finally:
                if services is not None:
                    # a startup failure was reported by _commands if it mattered
                    with contextlib.suppress(Exception):
                        services.result().stop()

    def _commands(
        self,
        commands: Sequence[str],
        app: Path,
        env: dict[str, str],
        network_env: dict[str, str],
        prefix: Sequence[str],
        ns: NetworkNamespace | _NoNamespace,
        services: Future[ThrowawayServices] | None,
        log: Log,
        timeout_s: float,
    ) -> list[CommandResult]:
        results: list[CommandResult] = []
        for command in commands:
            steps = plan(command, app, install_scripts_network=self.install_scripts_network)
            if len(steps) > 1:
                log.info(
                    f"`{command}` runs as: "
                    + "; then ".join(
                        f"`{s.command}` ({'with' if s.online else 'without'} network)"
                        for s in steps
                    )
                )
            parts: list[CommandResult] = []
            for step in steps:
                step_env = dict(env)
                if step.online:
                    step_env.update(network_env)
                elif services is not None:
                    step_env.update(ready(services).env())
                result = run_command(
                    step.command,
                    app,
                    log=log,
                    timeout=timeout_s,
                    full_env=step_env,
                    prefix=prefix,
                    spawn=None if step.online else ns.popen,
                )
                parts.append(result)
                if not result.ok:
                    break
            results.append(combine(command, parts))
            if not results[-1].ok:
                raise AppTestsFailed(results[-1], results)
        return results


class _NoNamespace:
    """:class:`NetworkNamespace`'s interface, on the calling thread (isolation 'none')."""

    def __enter__(self) -> _NoNamespace:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def submit(self, fn: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn())
        except Exception as exc:
            future.set_exception(exc)
        return future

    def popen(self, *args: Any, **kwargs: Any) -> Any:
        import subprocess

        return subprocess.Popen(*args, **kwargs)
