"""Restore primitives, shared part: the error every restore step raises and common helpers.

Every primitive restores *next to* what is live and switches over only once the restored copy is
complete, because a backup artifact is verified (sha256, last encryption chunk, end of the zstd
frame) only when its stream ends (:func:`twinme_ops.backups.artifacts.read_artifact`). The
primitives live in one module per component:

- :mod:`twinme_ops.backups.restore.postgres`: :func:`pg_restore_stream` into a fresh database
  made by :func:`create_database` (:mod:`~twinme_ops.backups.restore.postgres_databases`), then
  :func:`swap_databases` (:mod:`~twinme_ops.backups.restore.postgres_swap`) renames it over the
  live one (``psql < dump`` into a live database fails on existing objects or duplicates rows).
- :mod:`twinme_ops.backups.restore.files`: :func:`safe_extract` into a staging directory (refusing
  anything that would write outside it), then :func:`replace_tree` makes the live tree equal to
  it without replacing its root, which may be a mount point.
- :mod:`twinme_ops.backups.restore.redis`: :func:`scratch_redis_from_rdb` loads the RDB into a
  scratch server, then :func:`replay_redis` copies every key to the live server with
  ``DUMP``/``RESTORE`` and removes the others with ``SCAN``/``UNLINK``: production renames
  ``FLUSHALL``, ``CONFIG`` and ``KEYS`` away, and with ``appendonly yes`` a server ignores an RDB
  dropped on its disk.

No Dagster in these modules: they are plain library code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from twinme_ops.common.redact import redact


class RestoreError(RuntimeError):
    """A restore step failed; the message names the component, the object and the fix.

    Messages are redacted: no password, URL userinfo or query ever appears in them.
    """


def restore_error(message: str) -> RestoreError:
    """A :class:`RestoreError` with ``message`` redacted."""
    return RestoreError(redact(message))


def close_iterator(chunks: Iterable[bytes]) -> None:
    """Close a generator we stop reading early, so its ``finally`` (open readers) runs now."""
    close = getattr(chunks, "close", None)
    if callable(close):
        with contextlib.suppress(Exception):
            close()
