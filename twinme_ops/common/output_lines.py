"""A tool's output, read from its pipe in batches: at most one batch a second, none held longer.

Steps stream the output of the tools they run (npm, buildah, locust) into the run's log, and every
log message of a run is one event written to Dagster's event storage. Locally that is a SQLite
database per run, opened, committed and checkpointed for every event: milliseconds each, tens of
milliseconds while an image build keeps the disk busy, and the flushes compete with the build's
own writes. Logged line by line (about fifty events), the image build inside a run took 1 to 2 s
longer than the same build logging nowhere, and a burst of test-report lines kept ``app_tests``
waiting for its own log after npm had exited. PostgreSQL, the production storage, is cheaper per
event, but not free.

:func:`read_bursts` therefore hands the lines over in batches: lines that arrive within
``every_s`` of the previous batch wait for the end of that interval and go together, as one log
message of several lines; a line that arrives after a quiet interval goes at once. No line waits
more than ``every_s``, and the last ones go as soon as the tool closes its output.
"""

from __future__ import annotations

import codecs
import os
import select
import time
from collections.abc import Iterator
from typing import IO, Any

# one log event a second at most per tool: live enough to follow a build, cheap for the event log
LOG_EVERY_S = 1.0
_CHUNK = 64 * 1024


def read_bursts(stream: IO[Any], every_s: float = LOG_EVERY_S) -> Iterator[list[str]]:
    """Yield the lines of ``stream`` (a pipe from ``subprocess``) in batches, as they arrive.

    A batch is handed over when ``every_s`` has passed since the caller got the previous one (at
    once after a quiet interval, and at end of file); with ``every_s=0`` each batch is what one
    read returned. Lines are decoded as UTF-8 (undecodable bytes replaced), without their line
    ends (``\\n``, ``\\r\\n`` or ``\\r``, as Python's universal newlines); a last line without
    one is yielded at end of file. ``stream`` is read through its file descriptor: do not read it
    otherwise.
    """
    fd = stream.fileno()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""  # the start of a line whose end has not arrived yet
    ready: list[str] = []  # complete lines not handed over yet
    handed = float("-inf")  # when the caller got the previous batch
    while True:
        if ready:
            wait = handed + every_s - time.monotonic()
            if wait <= 0 or not select.select([fd], [], [], wait)[0]:
                yield ready
                ready, handed = [], time.monotonic()
                continue
        chunk = os.read(fd, _CHUNK)
        text = pending + decoder.decode(chunk, final=not chunk)
        if not chunk:  # end of file
            if text:
                ready += _lines(text if text.endswith(("\n", "\r")) else text + "\n")
            if ready:
                yield ready
            return
        # a "\r" at the end may be the first half of a "\r\n": wait for the next read
        cut = max(text.rfind("\n"), text.rfind("\r", 0, len(text) - 1))
        pending = text[cut + 1 :]
        if cut >= 0:
            ready += _lines(text[: cut + 1])


def _lines(text: str) -> list[str]:
    """The lines of ``text``, which ends with a line end."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")[:-1]
