"""Everything a newcomer meets in the UI says what it is: descriptions of the loaded definitions.

The UI shows these texts next to each asset, check, job, schedule, sensor, op and resource; a
missing or placeholder description leaves an operator guessing at 3 a.m. The e2e UI test checks
that the webserver serves these same texts.
"""

from __future__ import annotations

import re

import dagster as dg
import pytest

from twinme_ops.definitions import build_definitions

MIN_CHARS = 40
MIN_WORDS = 5
PLACEHOLDERS = re.compile(r"\b(todo|tbd|fixme|xxx|lorem ipsum|placeholder)\b", re.IGNORECASE)


def description_problem(name: str, description: str | None) -> str | None:
    """Why a description does not explain its object to a newcomer, or None when it does."""
    text = " ".join((description or "").split())
    if not text:
        return "has no description"
    if len(text) < MIN_CHARS or len(text.split()) < MIN_WORDS:
        return f"has a too short description ({len(text)} chars): {text!r}"
    if text.lower().strip(" .") in {name.lower(), name.replace("_", " ").lower()}:
        return f"has a description that only repeats its name: {text!r}"
    if PLACEHOLDERS.search(text):
        return f"has a placeholder description: {text!r}"
    return None


def _problems(kind: str, items: dict[str, str | None]) -> list[str]:
    found = []
    for name, description in sorted(items.items()):
        problem = description_problem(name, description)
        if problem:
            found.append(f"{kind} {name} {problem}")
    return found


@pytest.fixture(scope="module")
def repo() -> dg.RepositoryDefinition:
    return build_definitions().get_repository_def()


def test_the_check_rejects_missing_short_and_name_only_descriptions() -> None:
    assert description_problem("backup_set", None) == "has no description"
    assert description_problem("backup_set", "   ") == "has no description"
    assert "too short" in str(description_problem("backup_set", "The backup set."))
    assert "repeats its name" in str(
        description_problem(
            "a_rather_long_asset_name_with_many_parts", "A rather long asset name with many parts."
        )
    )
    assert "placeholder" in str(
        description_problem("x", "TODO: describe what this asset holds and who reads it later")
    )
    assert (
        description_problem(
            "backup_set", "The day's backup set, with its manifest written last by design."
        )
        is None
    )


def test_every_asset_and_asset_check_is_described(repo: dg.RepositoryDefinition) -> None:
    graph = repo.asset_graph
    assets = {
        key.to_user_string(): graph.get(key).description for key in graph.get_all_asset_keys()
    }
    checks = {
        key.to_user_string(): graph.get_check_spec(key).description
        for key in graph.asset_check_keys
    }
    assert assets and checks
    problems = _problems("asset", assets) + _problems("asset check", checks)
    assert not problems, "\n".join(problems)


def test_every_job_schedule_and_sensor_is_described(repo: dg.RepositoryDefinition) -> None:
    # __ASSET_JOB is Dagster's own hidden job: the UI never lists it
    jobs = {j.name: j.description for j in repo.get_all_jobs() if not j.name.startswith("__")}
    schedules = {s.name: s.description for s in repo.schedule_defs}
    sensors = {s.name: s.description for s in repo.sensor_defs}
    assert {"nightly_backup_job", "nightly_backup_schedule", "backup_freshness_sensor"} <= (
        set(jobs) | set(schedules) | set(sensors)
    )
    problems = (
        _problems("job", jobs) + _problems("schedule", schedules) + _problems("sensor", sensors)
    )
    assert not problems, "\n".join(problems)


def test_every_op_of_an_op_job_is_described(repo: dg.RepositoryDefinition) -> None:
    # ops that compute assets or checks carry those descriptions (checked above); the others
    # (recovery steps, drills, deployment tests) are what the job's graph shows
    asset_ops = {
        op_def.name
        for assets_def in repo.asset_graph.assets_defs  # checks included
        for op_def in assets_def.node_def.iterate_op_defs()
    }
    ops = {
        f"{job.name}.{op_def.name}": op_def.description
        for job in repo.get_all_jobs()
        for op_def in job.graph.iterate_op_defs()
        if op_def.name not in asset_ops and not job.name.startswith("__")
    }
    assert any(name.startswith("recover_job.") for name in ops), sorted(ops)
    problems = _problems("op", ops)
    assert not problems, "\n".join(problems)


def test_every_resource_is_described(repo: dg.RepositoryDefinition) -> None:
    resources = repo.get_top_level_resources()
    assert {"postgres", "redis", "backup_store", "slack"} <= set(resources)
    problems = _problems("resource", {k: r.description for k, r in resources.items()})
    assert not problems, "\n".join(problems)
