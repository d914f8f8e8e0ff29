"""Rows shaped like a TwinMe dump (a COPY stream), for the benchmarks and the artifact tests."""

from __future__ import annotations

import os
from collections.abc import Iterator


def dump_like(total: int, piece: int = 256 * 1024) -> Iterator[bytes]:
    """``total`` bytes in ``piece``-sized chunks: repeated text plus random tokens, so they
    compress about like a TwinMe dump (3-4x) and never by accident."""
    row = 0
    produced = 0
    while produced < total:
        lines = []
        size = 0
        while size < piece:
            row += 1
            line = f"{row}\tuser{row % 977}@example.com\t{os.urandom(12).hex()}\tsession event\n"
            lines.append(line)
            size += len(line)
        data = "".join(lines).encode()[: total - produced]
        produced += len(data)
        yield data
