"""Real log output of twinme_ops in JSON mode, for the log format and log shipper tests.

:func:`run_job_json` runs a real job of the code location in a subprocess (``dagster job
execute``) with ``TWINME_LOG_FORMAT=json`` and the repository's own dagster.yaml (its
``python_logs`` handler), and returns what the run worker wrote to stdout and stderr, as a
Kubernetes node's container log file would hold them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
# a password a careless error message could carry: no log line may show it
PLANTED_SECRET = "Planted-S3cret-Pw-4471"


@dataclass
class CapturedRun:
    """What a run wrote: its stdout and stderr lines, and the exit status."""

    stdout: list[str]
    stderr: list[str]
    returncode: int

    def events(self) -> list[dict[str, Any]]:
        """Every stdout line parsed as JSON (a line that is not JSON fails the caller)."""
        return [json.loads(line) for line in self.stdout if line.strip()]


def run_job_json(tmp_path: Path) -> CapturedRun:
    """deployment_tests_job against an API, a database and a Redis that cannot be reached, with
    the planted password in each URL: the run fails, its errors quote the URLs."""
    home = tmp_path / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    config = tmp_path / "run_config.yaml"
    api_url = f"http://ops:{PLANTED_SECRET}@127.0.0.1:9"
    ops_config = {"api_url": api_url, "load_users": 1, "load_duration_s": 1}
    config.write_text(yaml.safe_dump({"ops": {"deployment_tests": {"config": ops_config}}}))
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "TWINME_HOME": str(tmp_path / "twinme"),
        "TWINME_LOG_FORMAT": "json",
        "DATABASE_URL": f"postgresql://ops:{PLANTED_SECRET}@127.0.0.1:9/twinme",
        "REDIS_URL": f"redis://:{PLANTED_SECRET}@127.0.0.1:9/0",
    }
    dagster = str(Path(sys.executable).with_name("dagster"))
    done = subprocess.run(
        [dagster, "job", "execute", "-m", "twinme_ops.definitions"]
        + ["-j", "deployment_tests_job", "-c", str(config)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return CapturedRun(done.stdout.splitlines(), done.stderr.splitlines(), done.returncode)
