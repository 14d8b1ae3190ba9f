"""Versions compare as instants, with sub-second precision kept."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mirror.versions import (
    Action,
    VersionError,
    parse_instant,
    parse_moment,
    version_key,
    version_key_at,
)


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


@pytest.mark.parametrize(
    ("newer", "older"),
    [
        # The probe's cases: 29 characters fits the fast path's length, eight digits did not.
        ("2024-01-12T10:30:00.12345678Z", "2024-01-12T10:30:00.1234567Z"),
        ("2024-01-12T10:30:00.00000001Z", "2024-01-12T10:30:00.000000005Z"),
        ("2024-01-12T10:30:00.1234561+05:30", "2024-01-12T10:30:00.123456+05:30"),
    ],
)
def test_fractions_longer_than_microseconds_keep_their_digits(newer: str, older: str) -> None:
    assert parse_instant(newer) > parse_instant(older)


def _exact_nanoseconds(date: str, clock: str, fraction: str, zone_minutes: int | None) -> int:
    """Nanoseconds since the epoch, by integer arithmetic alone (the reference)."""
    year, month, day = (int(part) for part in date.split("-"))
    hour, minute, second = (int(part) for part in clock.split(":"))
    days = (datetime.date(year, month, day) - datetime.date(1970, 1, 1)).days
    seconds = days * 86400 + hour * 3600 + minute * 60 + second - 60 * (zone_minutes or 0)
    return seconds * 10**9 + int(fraction.ljust(9, "0") or "0")


def _zone_text(minutes: int | None, style: int) -> str:
    if minutes is None:
        return ""
    if minutes == 0 and style == 0:
        return "Z"
    sign = "-" if minutes < 0 else "+"
    hours, rest = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{rest:02d}" if style < 2 else f"{sign}{hours:02d}{rest:02d}"


@settings(max_examples=500, deadline=None)
@given(
    moment=st.datetimes(
        min_value=datetime.datetime(1900, 1, 2), max_value=datetime.datetime(2200, 12, 30)
    ),
    fraction=st.text("0123456789", min_size=0, max_size=9),
    zone_minutes=st.one_of(st.none(), st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59)),
    style=st.integers(min_value=0, max_value=2),
)
def test_every_fraction_and_zone_parses_exactly(
    moment: datetime.datetime, fraction: str, zone_minutes: int | None, style: int
) -> None:
    date, clock = moment.strftime("%Y-%m-%d"), moment.strftime("%H:%M:%S")
    text = f"{date}T{clock}{'.' + fraction if fraction else ''}{_zone_text(zone_minutes, style)}"
    instant = parse_instant(text)
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    seconds = (instant.seconds - epoch) // datetime.timedelta(seconds=1)
    assert seconds * 10**9 + instant.nanos == _exact_nanoseconds(
        date, clock, fraction, zone_minutes
    )


@settings(max_examples=500, deadline=None)
@given(
    moment=st.datetimes(
        min_value=datetime.datetime(1, 1, 1), max_value=datetime.datetime(9999, 12, 31, 23, 59)
    ),
    fraction=st.text("0123456789", min_size=0, max_size=10),
    zone_minutes=st.one_of(st.none(), st.integers(min_value=-23 * 60 - 59, max_value=23 * 60 + 59)),
    style=st.integers(min_value=0, max_value=2),
    noise=st.sampled_from(["", " ", "x", "T"]),
)
def test_typed_columns_read_the_same_moment_as_the_version(
    moment: datetime.datetime, fraction: str, zone_minutes: int | None, style: int, noise: str
) -> None:
    # parse_moment is the typed columns' shortcut: it must agree with parse_instant, out of
    # range and malformed text included.
    date, clock = moment.strftime("%Y-%m-%d"), moment.strftime("%H:%M:%S")
    text = f"{date}T{clock}{'.' + fraction if fraction else ''}{_zone_text(zone_minutes, style)}"
    text += noise
    try:
        expected: datetime.datetime | None = parse_instant(text).to_datetime()
    except VersionError:
        expected = None
    assert parse_moment(text) == expected


def test_more_than_nine_fraction_digits_are_refused() -> None:
    with pytest.raises(VersionError):
        parse_instant("2024-01-12T10:30:00.1234567891+05:30")


def _exact_key(text: object, action: Action, digest: str) -> str | None:
    try:
        return version_key(parse_instant(text), action, digest)
    except VersionError:
        return None


def _shortcut_key(text: object, action: Action, digest: str) -> str | None:
    try:
        return version_key_at(text, action, digest)
    except VersionError:
        return None


@settings(max_examples=1000, deadline=None)
@given(
    moment=st.datetimes(
        min_value=datetime.datetime(1, 1, 1), max_value=datetime.datetime(9999, 12, 31, 23, 59)
    ),
    action=st.sampled_from(Action),
    # HealthDock's form, then each of its characters replaced by anything, leap seconds too.
    spot=st.one_of(st.none(), st.integers(min_value=0, max_value=23)),
    replacement=st.characters(),
    leap=st.booleans(),
)
def test_the_key_of_healthdocks_usual_timestamp_is_the_exact_parsers(
    moment: datetime.datetime, action: Action, spot: int | None, replacement: str, leap: bool
) -> None:
    """version_key_at builds no Instant for ``YYYY-MM-DDTHH:MM:SS.mmmZ``: the same key as the
    exact parser, and the same refusal of what is not an instant."""
    text = moment.isoformat(timespec="milliseconds") + "Z"
    if leap:
        text = text[:17] + "60" + text[19:]
    if spot is not None:
        text = text[:spot] + replacement + text[spot + 1 :]
    assert _shortcut_key(text, action, "ab" * 32) == _exact_key(text, action, "ab" * 32)


@pytest.mark.parametrize(
    "text",
    ["2026-04-01T20:06:56.396Z", "2026-04-01T20:06:56.396+05:30", "2026-04-01T20:06:56Z",
     "2026-04-01T20:06:56.396123456Z", "2026-04-01 20:06:56.396Z", 17, None,
     "2026-W14-3T20:06:56.396Z", "2026-04-01T20:06:56.396z", "2026-04-01T20:06:56.٣٩٦Z",
     "2026-02-30T20:06:56.396Z"],
)  # fmt: skip
def test_every_other_form_keeps_the_exact_path(text: object) -> None:
    assert _shortcut_key(text, Action.UPDATE, "cd" * 32) == _exact_key(
        text, Action.UPDATE, "cd" * 32
    )
