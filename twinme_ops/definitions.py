"""The one entry point of the code location (``dagster dev``, ``definitions validate``).

Every asset, check, job, schedule and sensor is found in ``defs/`` by Dagster's autoloader
(``dg.load_from_defs_folder``, configured by ``twinme_ops/dg.toml``): adding one to a module of
``defs/`` is enough, nothing is listed here. The resources come from ``defs/resources.py`` (the
one ``TWINME_ENV`` switch).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from twinme_ops.defs.resources import build_resources


def build_definitions() -> dg.Definitions:
    """Every Dagster object under ``defs/``, with the resources of the current environment."""
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
        dg.Definitions(resources=build_resources()),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
