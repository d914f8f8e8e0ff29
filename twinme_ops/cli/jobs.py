"""Running a job of the code location from the command line: in this process, recorded in the
instance the web UI reads, tagged with who ran it, its failures printed (redacted)."""

from __future__ import annotations

import getpass
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import dagster as dg


def cli_instance() -> Any:
    """The Dagster instance the CLI records its runs in, so that the web UI shows them:

    - ``$DAGSTER_HOME`` when set;
    - else, run from the repository (its ``dagster.yaml`` in the working directory) with no
      ``TWINME_HOME`` either, the repository's instance: the one ``DAGSTER_HOME=$PWD dagster dev``
      opens (README, command 1 and the web UI);
    - else a persistent one under ``$TWINME_HOME/dagster``, telemetry off.
    """
    import dagster as dg

    from twinme_ops.sandbox.servers import default_home

    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    here = Path.cwd()
    if not os.environ.get("TWINME_HOME") and _is_repository_instance(here / "dagster.yaml"):
        return dg.DagsterInstance.from_config(str(here))
    home = default_home() / "dagster"
    home.mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.local_temp(
        tempdir=str(home), overrides={"telemetry": {"enabled": False}}
    )


def _is_repository_instance(config: Path) -> bool:
    """The repository's own instance config (it names twinme_ops' run coordinator)."""
    try:
        return "twinme_ops.instance.run_coordinator" in config.read_text()
    except OSError:
        return False


def run_job(
    name: str, run_config: dict[str, Any], *, partition: str | None = None
) -> dg.ExecuteInProcessResult:
    """Execute job ``name`` here; on failure, print each failed step's message (redacted)."""
    import warnings

    import dagster as dg

    from twinme_ops.common.redact import redact
    from twinme_ops.definitions import build_definitions

    # dagster's preview notices (partitioned checks, defs-folder loading) are for developers
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    job = build_definitions().resolve_job_def(name)
    result = job.execute_in_process(
        partition_key=partition,
        run_config=run_config,
        # who ran it, as the machine knows them (the webserver writes a verified identity)
        tags={"twinme/launched_by": f"{getpass.getuser()}@{socket.gethostname()} (cli)"},
        instance=cli_instance(),
        raise_on_error=False,
    )
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure and event.step_failure_data:
                error = event.step_failure_data.error
                message = error.message if error else ""
                print(f"FAILED {event.step_key}: {redact(message.strip())}", file=sys.stderr)
        print(f"run {result.run_id} failed (errors above)", file=sys.stderr)
    return result
