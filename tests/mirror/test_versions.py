"""Versions compare as instants, with sub-second precision kept."""

from __future__ import annotations

import pytest

from mirror.versions import VersionError, parse_instant


def test_zulu_and_offset_forms_of_one_moment_are_equal() -> None:
    assert parse_instant("2024-01-12T10:30:00Z") == parse_instant("2024-01-12T16:00:00+05:30")
    assert parse_instant("2024-01-12T10:30:00Z") == parse_instant("2024-01-12T05:30:00-0500")


def test_sub_second_precision_is_kept() -> None:
    whole = parse_instant("2024-01-12T10:30:00Z")
    later = parse_instant("2024-01-12T10:30:00.000000001Z")
    assert whole < later
    assert later.iso() == "2024-01-12T10:30:00.000000001Z"
    assert parse_instant("2024-01-12T10:30:00.5Z") == parse_instant("2024-01-12T10:30:00.500Z")


def test_instant_without_zone_is_utc() -> None:
    assert parse_instant("2024-01-12T10:30:00") == parse_instant("2024-01-12T10:30:00Z")


def test_keys_sort_as_instants_across_day_boundaries() -> None:
    earlier = parse_instant("2024-01-13T01:00:00+05:30")  # 2024-01-12T19:30Z
    later = parse_instant("2024-01-12T20:00:00Z")
    assert earlier.iso() < later.iso()


@pytest.mark.parametrize(
    "text",
    [
        None,
        17,
        "",
        "2024-01-12",
        "yesterday",
        "2024-13-01T00:00:00Z",
        "2024-01-12T25:00:00Z",
        "2024-01-12T10:30:00+24:00",
        "2024-01-12T10:30:00.1234567890Z",
        "0000-01-01T00:00:00Z",
    ],
)
def test_invalid_timestamps_raise_version_error(text: object) -> None:
    with pytest.raises(VersionError):
        parse_instant(text)
