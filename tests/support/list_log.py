"""A log (``twinme_ops.common.log.Log``) that keeps every line: what tests pass as ``log``."""

from __future__ import annotations


class ListLog(list[str]):
    """Every line logged, in order, at any level: the list itself is what tests assert on."""

    def debug(self, msg: str, /) -> None:
        self.append(msg)

    def info(self, msg: str, /) -> None:
        self.append(msg)

    def warning(self, msg: str, /) -> None:
        self.append(msg)

    @property
    def lines(self) -> list[str]:
        return self

    @property
    def text(self) -> str:
        return "\n".join(self)
