"""twinme_ops' quantity parser agrees with the official client's on every kind of input."""

from __future__ import annotations

import pytest
from kubernetes.utils import parse_quantity as official

from twinme_ops.common.quantity import parse_quantity

VALUES = [
    "0",
    "1",
    "1.5",
    "100m",
    "500m",
    "2",
    "250M",
    "2Gi",
    "1Ki",
    "1.5Gi",
    "3Ti",
    "1Pi",
    "1Ei",
    "10k",
    "10K",
    "1n",
    "7u",
    "1e3",
    "5E",
    "512Mi",
    "0.5",
    "-1",
    "+2",
    "1M",
    "4G",
    "4T",
    "1P",
]
INVALID = ["", "abc", "1ki", "1Xi", "Gi", "1.2.3", "1Qi", "m", "1iB"]


@pytest.mark.parametrize("value", VALUES)
def test_the_same_number_as_the_official_client(value: str) -> None:
    assert parse_quantity(value) == official(value)


@pytest.mark.parametrize("value", INVALID)
def test_the_same_refusals_as_the_official_client(value: str) -> None:
    with pytest.raises(ValueError):
        official(value)
    with pytest.raises(ValueError):
        parse_quantity(value)


def test_numbers_pass_through() -> None:
    for number in (3, 2.5):
        assert parse_quantity(number) == official(number)
