"""A tool's output, read from its pipe in bursts: the lines that are there, never waiting for more.

Steps stream the output of the tools they run (npm, buildah, locust) into the run's log, and every
log message of a run is one event written to Dagster's event storage: a SQLite commit locally, an
insert into PostgreSQL in production, a few milliseconds each, tens of milliseconds while an
image build keeps the disk busy. Tools print in bursts (a test report, a build's summary, locust's
statistics table): logged line by line, a burst of forty lines kept the step waiting a second
for its own log after the tool had exited. :func:`read_bursts` hands over every complete line
already waiting in the pipe at once, so that a caller logs a burst as one message of several
lines; a line printed alone is handed over alone, as soon as it is read. Nothing is held back.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Iterator
from typing import IO, Any

_CHUNK = 64 * 1024


def read_bursts(stream: IO[Any]) -> Iterator[list[str]]:
    """Yield the lines of ``stream`` (a pipe from ``subprocess``) as they arrive, in bursts.

    Each item holds the complete lines that one read returned: those printed together, or while
    the caller was busy with the previous burst. Lines are decoded as UTF-8 (undecodable bytes
    replaced), without their line ends (``\\n``, ``\\r\\n`` or ``\\r``, as Python's universal
    newlines). A last line without a line end is yielded at end of file. ``stream`` is read
    through its file descriptor: do not read it otherwise.
    """
    fd = stream.fileno()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    while True:
        chunk = os.read(fd, _CHUNK)
        text = pending + decoder.decode(chunk, final=not chunk)
        if not chunk:
            if text:
                yield _lines(text if text.endswith(("\n", "\r")) else text + "\n")
            return
        # a "\r" at the end may be the first half of a "\r\n": wait for the next read
        cut = max(text.rfind("\n"), text.rfind("\r", 0, len(text) - 1))
        if cut < 0:
            pending = text
            continue
        pending = text[cut + 1 :]
        yield _lines(text[: cut + 1])


def _lines(text: str) -> list[str]:
    """The lines of ``text``, which ends with a line end."""
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")[:-1]
