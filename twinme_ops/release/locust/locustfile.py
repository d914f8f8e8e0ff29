"""The load test's locustfile (twinme_ops.release.load_test): GET each configured path in turn.

Not a module of twinme_ops: package data that :func:`twinme_ops.release.load_test.run_load_test`
copies into the run's temporary directory and hands to ``locust -f`` (locust's gevent
monkey-patching must stay out of the process that runs Dagster). Settings come from the
environment: ``TWINME_LOCUST_PATHS`` (a JSON list of paths), ``TWINME_LOCUST_WAIT_S`` (each
user's pause between two rounds) and ``TWINME_LOCUST_FINAL_CSV``. locust's periodic CSV writer
runs once a second and is not flushed at shutdown, so the last second of the run would be
missing from ``<prefix>_stats.csv``: the final stats are written again, in the same format, to
``TWINME_LOCUST_FINAL_CSV`` when locust quits.
"""

import csv
import json
import os
from typing import Any

from locust import HttpUser, constant, events, task
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV

_PATHS = json.loads(os.environ["TWINME_LOCUST_PATHS"])
_FINAL_CSV = os.environ["TWINME_LOCUST_FINAL_CSV"]
_env: dict[str, Any] = {}


@events.init.add_listener
def _remember_environment(environment: Any, **_kwargs: Any) -> None:
    _env["environment"] = environment


@events.quit.add_listener
def _write_final_stats(**_kwargs: Any) -> None:
    environment = _env.get("environment")
    if environment is None:
        return
    with open(_FINAL_CSV, "w", newline="") as f:
        # Any: locust's CSVWriter protocol names writerow's parameter unlike the csv stubs
        writer: Any = csv.writer(f)
        StatsCSV(environment, PERCENTILES_TO_REPORT).requests_csv(writer)


class VerificationUser(HttpUser):
    """One simulated user: GET every path, then pause ``TWINME_LOCUST_WAIT_S``."""

    wait_time = constant(float(os.environ["TWINME_LOCUST_WAIT_S"]))

    @task
    def get_paths(self) -> None:
        """One round of requests, each named by its path in the statistics."""
        for path in _PATHS:
            self.client.get(path, name=path)
