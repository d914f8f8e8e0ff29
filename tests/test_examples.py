"""Every example run config in examples/run_config/ is valid for the job it is named after."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from twinme_ops.definitions import build_definitions

EXAMPLES = sorted((Path(__file__).parents[1] / "examples" / "run_config").glob("*.yaml"))


def test_there_is_an_example_for_every_job_that_takes_config() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {
        "base_backup_job",
        "nightly_backup_job",
        "restore_drill_job",
        "pitr_drill_job",
        "retention_job",
        "recover_job",
        "release_job",
        "deployment_tests_job",
        "jwt_key_rotation_job",
        "jwt_key_expiry_job",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_run_config_validates(path: Path) -> None:
    job = build_definitions().resolve_job_def(path.stem)
    config = yaml.safe_load(path.read_text())
    dg.validate_run_config(job, config)  # raises DagsterInvalidConfigError with the bad keys
