"""Versions of a record: when it was written upstream, compared as instants.

A version key is a fixed-width string whose lexicographic order is the version order:
``<UTC instant with nanoseconds>|<action rank>|<content digest>``. Fixed width makes the key
comparable in Python and in SQL alike, and keeps sub-second precision that a datetime would
round away.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum

from config import MirrorError

_INSTANT = re.compile(
    r"(?P<date>\d{4}-\d{2}-\d{2})[T ](?P<time>\d{2}:\d{2}:\d{2})"
    r"(?:[.,](?P<fraction>\d{1,9}))?"
    r"(?P<zone>Z|z|[+-]\d{2}:?\d{2})?"
)


# HealthDock's own form (``2026-04-01T20:06:56.396Z``): the key's instant is this text with six
# more zeros.
_MILLISECONDS_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", re.ASCII)


class VersionError(MirrorError, ValueError):
    """A timestamp that is not an ISO 8601 instant."""


class Action(IntEnum):
    """What a write does; at equal instants the greater rank wins (delete > update > create)."""

    CREATE = 0
    UPDATE = 1
    DELETE = 2


_RANKS = {action: str(int(action)) for action in Action}


@dataclass(frozen=True, order=True, slots=True)
class Instant:
    """A moment in UTC with nanosecond precision."""

    seconds: datetime  # whole seconds, UTC
    nanos: int

    def iso(self) -> str:
        return f"{self.seconds.isoformat(timespec='seconds')[:19]}.{self.nanos:09d}Z"

    def to_datetime(self) -> datetime:
        """The instant as a datetime; sub-microsecond digits are dropped."""
        return self.seconds + timedelta(microseconds=self.nanos // 1000)


def parse_instant(text: object) -> Instant:
    """Parse an ISO 8601 timestamp; an instant without a zone is taken as UTC."""
    if not isinstance(text, str):
        raise VersionError("timestamp must be a string")
    fast = _parse_common(text)
    if fast is not None:
        return fast
    match = _INSTANT.fullmatch(text.strip())
    if match is None:
        raise VersionError("timestamp is not ISO 8601 (YYYY-MM-DDTHH:MM:SS[.fff][Z|+HH:MM])")
    try:
        local = datetime.fromisoformat(f"{match['date']}T{match['time']}")
    except ValueError as exc:
        raise VersionError(f"timestamp is not a valid date and time: {exc}") from None
    zone = match["zone"]
    offset = timedelta(0)
    if zone and zone not in ("Z", "z"):
        digits = zone[1:].replace(":", "")
        hours, minutes = int(digits[:2]), int(digits[2:])
        if hours > 23 or minutes > 59:
            raise VersionError("timestamp has an invalid UTC offset")
        offset = timedelta(hours=hours, minutes=minutes)
        if zone[0] == "-":
            offset = -offset
    try:
        seconds = (local - offset).replace(tzinfo=UTC)
    except OverflowError:
        raise VersionError("timestamp is out of range") from None
    if not 1 <= seconds.year <= 9999:
        raise VersionError("timestamp is out of range")
    fraction = match["fraction"] or ""
    return Instant(seconds, int(fraction.ljust(9, "0")) if fraction else 0)


def parse_moment(text: str) -> datetime | None:
    """``parse_instant(text).to_datetime()``, or None where that raises: typed columns need
    the datetime alone, for every record a pass reads, without building the Instant."""
    utc = _common_moment(text)
    if utc is not None:
        return utc
    try:
        return parse_instant(text).to_datetime()
    except VersionError:
        return None


def _parse_common(text: str) -> Instant | None:
    """The usual forms (whole seconds or milliseconds, with a zone), without the regex."""
    utc = _common_moment(text)
    if utc is None:
        return None
    return Instant(utc.replace(microsecond=0), utc.microsecond * 1000)


def _common_moment(text: str) -> datetime | None:
    """The usual forms as an aware UTC datetime; None for anything else (the exact path)."""
    if len(text) not in (20, 24, 25, 29) or text[10] != "T" or text[4] != "-":
        return None
    # datetime keeps microseconds and silently drops further digits: a fraction longer than
    # six digits (29 characters also fits ``.12345678Z``) takes the exact path.
    if text[19:20] in (".", ","):
        after_point = text[20:]
        if len(after_point) - len(after_point.lstrip("0123456789")) > 6:
            return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None or not 1 <= moment.year <= 9999:
        return None
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return None


class VersionKey(str):
    """A version as the mirror stores it: ``<instant>|<action rank>|<content digest>``.

    A string, so that keys compare in Python as they do in SQL (``source_version``,
    ``webhook_events.version``); its parts are read from their fixed positions here alone.
    """

    __slots__ = ()
    _INSTANT_WIDTH = 30  # YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ

    @property
    def instant(self) -> str:
        """The ISO instant (what analysts see as ``source_version``)."""
        return self[: self._INSTANT_WIDTH]

    @property
    def action(self) -> Action:
        return Action(int(self[self._INSTANT_WIDTH + 1]))

    @property
    def digest(self) -> str:
        return self[self._INSTANT_WIDTH + 3 :]


@dataclass(frozen=True, slots=True)
class Version:
    """The version of one write: its instant, then its action, then its content digest."""

    instant: Instant
    action: Action
    digest: str  # hex sha-256 of the canonical content
    # A plain str, as it travels (msgpack frames, SQL parameters); VersionKey(key) reads it.
    key: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", version_key(self.instant, self.action, self.digest))


def version_key(instant: Instant, action: Action, digest: str) -> str:
    """The key of ``Version(instant, action, digest)``, without building the Version: it is
    made for every record a reconcile pass reads."""
    return f"{instant.iso()}|{int(action)}|{digest}"


def version_key_at(timestamp: object, action: Action, digest: str) -> str:
    """``version_key(parse_instant(timestamp), action, digest)``; raises what that raises.

    HealthDock writes its instants in UTC with milliseconds (``2026-04-01T20:06:56.396Z``),
    and there the key's instant is that text with six more zeros: no Instant is built, no
    datetime formatted, for the records of a pass (a fifth of a no-change pass's CPU went
    to both). The text is still checked to be a real date and time.
    """
    if type(timestamp) is str and _MILLISECONDS_UTC.fullmatch(timestamp):
        try:
            datetime.fromisoformat(timestamp[:19])  # a real date and time
        except ValueError:
            pass  # parse_instant says why
        else:
            return f"{timestamp[:23]}000000Z|{_RANKS[action]}|{digest}"
    return version_key(parse_instant(timestamp), action, digest)
