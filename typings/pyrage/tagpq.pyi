from __future__ import annotations


class Recipient:
    @classmethod
    def from_str(cls, v: str) -> Recipient: ...
