"""The floor plan as a checked contract: import-linter's contracts in pyproject.toml.

A module that imports upward (a server reaching into a domain, a domain into ``defs``), across
domains (backups, database and release stay independent), or into the embedded sandbox from
anywhere but ``defs/resources.py`` and the CLI fails here with the import chain that breaks it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the package and contracts under ``root``."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), str(root / "pyproject.toml")],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_import_contract_is_kept() -> None:
    result = _lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout and "3 kept" in result.stdout, result.stdout


def test_a_server_that_imports_the_sandbox_breaks_a_contract(tmp_path: Path) -> None:
    """The check sees a violation when there is one: a copy of the package in which a server
    imports the sandbox."""
    copy = tmp_path / "repo"
    shutil.copytree(
        REPO / "twinme_ops", copy / "twinme_ops", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "pyproject.toml", copy / "pyproject.toml")
    server = copy / "twinme_ops" / "servers" / "files.py"
    server.write_text(server.read_text() + "\nfrom twinme_ops.sandbox import servers  # noqa\n")
    result = _lint_imports(copy)
    assert result.returncode != 0, result.stdout
    assert "twinme_ops.servers.files -> twinme_ops.sandbox.servers" in result.stdout, result.stdout


def test_dagster_validates_the_code_location_it_autoloads(tmp_path: Path) -> None:
    """``dagster definitions validate``: every object under ``defs/`` loads, with its resources,
    through the autoloader (nothing is listed by hand in definitions.py)."""
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("dagster")),
            "definitions",
            "validate",
            "-m",
            "twinme_ops.definitions",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "DAGSTER_HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Validation successful for code location twinme_ops.definitions" in (
        result.stdout + result.stderr
    )
    source = (REPO / "twinme_ops" / "definitions.py").read_text()
    assert "load_from_defs_folder(" in source
    assert "_job" not in source and "_schedule" not in source and "_sensor" not in source
