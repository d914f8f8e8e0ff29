"""Limits as operators write them, and the errors a typo gets."""

from __future__ import annotations

import pytest

from twinme_ops.capacity.limits import CapacityLimits
from twinme_ops.capacity.sizes import SizeError, human_bytes, parse_minutes, parse_size


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("20Gi", 20 * 1024**3),
        ("500M", 500 * 1000**2),
        ("1.5Ti", int(1.5 * 1024**4)),
        ("2gb", 2 * 1024**3),  # Redis: gb = 1024^3
        ("2GB", 2 * 1024**3),
        ("512mb", 512 * 1024**2),
        ("100k", 100_000),  # Redis: k = 1000
        ("1073741824", 1024**3),
        (" 4Gi ", 4 * 1024**3),
    ],
)
def test_sizes_in_kubernetes_and_redis_units(text: str, expected: int) -> None:
    assert parse_size("TWINME_POSTGRES_VOLUME_SIZE", text) == expected


@pytest.mark.parametrize("text", ["20 gigs", "Gi", "20GiB", "abc", "1e", "-"])
def test_a_bad_size_names_the_setting_and_the_fix(text: str) -> None:
    with pytest.raises(SizeError) as err:
        parse_size("TWINME_FILES_VOLUME_SIZE", text)
    message = str(err.value)
    assert message.startswith(f"TWINME_FILES_VOLUME_SIZE={text!r} is not a size")
    assert "Fix: " in message and "20Gi" in message


@pytest.mark.parametrize("text", ["0", "-5Gi", "0gb"])
def test_a_size_must_be_positive(text: str) -> None:
    with pytest.raises(SizeError, match="not a positive size. Fix: "):
        parse_size("TWINME_REDIS_MAXMEMORY", text)


def test_minutes() -> None:
    assert parse_minutes("TWINME_BACKUP_WINDOW_MINUTES", "240") == 240
    assert parse_minutes("TWINME_BACKUP_WINDOW_MINUTES", "90.5") == 90.5
    for bad in ("4h", "", "0", "-1", "nan", "inf"):
        with pytest.raises(SizeError, match="not a positive number of minutes. Fix: e.g."):
            parse_minutes("TWINME_BACKUP_WINDOW_MINUTES", bad)


def test_limits_resolve_unset_to_none_and_report_the_bad_one() -> None:
    limits = CapacityLimits(postgres_volume_size="50Gi", backup_window_minutes="240").resolve()
    assert limits.postgres_bytes == 50 * 1024**3
    assert limits.backup_window_s == 240 * 60
    assert limits.files_bytes is None and limits.redis_bytes is None
    with pytest.raises(SizeError, match="TWINME_REDIS_MAXMEMORY='2 gigs'"):
        CapacityLimits(redis_maxmemory="2 gigs").resolve()


def test_human_bytes() -> None:
    assert human_bytes(12) == "12 B"
    assert human_bytes(1536 * 1024**2) == "1.5 GiB"
