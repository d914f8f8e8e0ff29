"""Kubernetes resource quantities (``500m``, ``2Gi``, ``1.5``) as exact decimals.

The same rules as the official client's ``kubernetes.utils.parse_quantity`` (which
tests/common/test_quantity.py uses as the oracle), without importing the ``kubernetes`` package: its
``__init__`` loads the whole API client, about half a second at every load of the code location,
while the step resources of each heavy job are checked when the definitions are built.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

_EXPONENTS = {"n": -3, "u": -2, "m": -1, "K": 1, "k": 1, "M": 2, "G": 3, "T": 4, "P": 5, "E": 6}


def parse_quantity(quantity: str | int | float | Decimal) -> Decimal:
    """``quantity`` as a number: binary suffixes Ki..Ei (1024), decimal n u m k M G T P E (1000).

    Raises ``ValueError`` for anything Kubernetes would not accept as a quantity.
    """
    if isinstance(quantity, (int, float, Decimal)):
        return Decimal(quantity)
    text = str(quantity)
    number, suffix = text, ""
    if len(text) >= 2 and text[-1] == "i" and text[-2] in _EXPONENTS:
        number, suffix = text[:-2], text[-2:]
    elif text and text[-1] in _EXPONENTS:
        number, suffix = text[:-1], text[-1]
    try:
        value = Decimal(number)
    except InvalidOperation:
        raise ValueError(f"Invalid number format: {number}") from None
    if not suffix:
        return value
    # "ki" is not a suffix (SI's k is lower case, the binary Ki upper case)
    if suffix == "ki":
        raise ValueError(f"{text} has unknown suffix")
    base = 1024 if suffix.endswith("i") else 1000
    return value * (Decimal(base) ** _EXPONENTS[suffix[0]])
