"""The one entry point of the code location (``dagster dev``, ``definitions validate``).

Every asset, check, job, schedule and sensor is found in ``defs/`` by Dagster's autoloader
(a ``dg.ComponentTree`` of the project configured by ``twinme_ops/dg.toml``): adding one to a
module of ``defs/`` is enough, nothing is listed here. The resources come from
``defs/resources.py`` (the one ``TWINME_ENV`` switch).

The tree builds the ``defs/`` folder only, not the project's root as ``dg.load_from_defs_folder``
does: the root adds a catalogue of every component type that installed packages register
(``dagster_dg_cli.registry_modules`` entry points), for which Dagster imports each of them, and
dagster-aws' is all of dagster-aws, boto3 and botocore (about 1 s, half of the load time). This
code location declares no components, so the catalogue, the component tree shown by the UI, and
the UI-managed (app-managed) components of Dagster+ are left out; the objects loaded are the same
(tests/test_architecture.py).
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from twinme_ops.defs.resources import build_resources


def build_definitions() -> dg.Definitions:
    """Every Dagster object under ``defs/``, with the resources of the current environment."""
    tree = dg.ComponentTree.for_project(Path(__file__).parent)
    return dg.Definitions.merge(
        tree.build_defs(tree.defs_module_path),
        dg.Definitions(resources=build_resources()),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions()
