"""The one log protocol: where the domain code reports progress and warnings.

Every function that reports as it works takes a ``log`` with ``info`` and ``warning``: Dagster's
``context.log``, a ``logging.Logger`` (the CLI, the benchmarks) and the tests' list of lines all
fit, so a step passes its own log down unchanged and long work shows in the run's log.
"""

from __future__ import annotations

import logging
from typing import Protocol


class Log(Protocol):
    """What a logger offers: ``logging.Logger`` and Dagster's log manager both fit."""

    def debug(self, msg: str, /) -> object:
        """Detail for whoever debugs the tool."""
        ...

    def info(self, msg: str, /) -> object:
        """Progress a person may want to read."""
        ...

    def warning(self, msg: str, /) -> object:
        """Something went wrong that did not stop the work."""
        ...


# where a function's progress goes when its caller passes no log
DEFAULT_LOG: Log = logging.getLogger("twinme_ops")
