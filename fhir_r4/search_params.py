"""FHIR search parameters, parsed into the mirror's search criteria (``mirror.search``).

Pure functions of the query string: every parameter is understood exactly or refused with a
:class:`SearchError` naming it, never silently ignored (a client that filters on something we
ignore would take the whole mirror for its answer). Semantics are FHIR R4's: repeated
parameters must all hold, commas separate alternatives, ``\\,`` is a literal comma; dates carry
a prefix (``eq ne gt ge lt le``) and a precision, and a date without a time is a day in
``HEALTHDOCK_TIMEZONE``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

from fhir_r4.mapping import (
    ABHA_SYSTEM,
    APPOINTMENT_ID_SYSTEM,
    APPOINTMENT_STATUSES,
    FHIR_ID_CHARACTERS,
    FHIR_ID_LENGTH,
    GENDERS,
    PATIENT_ID_SYSTEM,
    is_fhir_id,
)
from mirror import Resource, search

DEFAULT_COUNT = 20
MAX_COUNT = 100
# Bounds on what one search may ask, so a query string cannot make an unbounded statement.
_MAX_VALUE_LENGTH = 256
_MAX_ALTERNATIVES = 50
_MAX_PARAMETERS = 30


class SearchError(ValueError):
    """A search the API cannot answer as asked: 400 with an OperationOutcome. ``code`` is the
    FHIR issue type (``invalid`` or ``not-supported``); the message names the parameter and
    never quotes its value (it can be a patient's name)."""

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code


class FormatNotAcceptable(SearchError):
    """``_format`` asked for something other than JSON: 406."""

    def __init__(self) -> None:
        super().__init__("_format: only JSON (application/fhir+json) is served", "not-supported")


class TotalMode(StrEnum):
    """``_total``: whether the Bundle counts every match (``accurate``) or only when it is free."""

    NONE = "none"
    ESTIMATE = "estimate"
    ACCURATE = "accurate"


@dataclass(frozen=True, slots=True)
class SearchRequest:
    resource: Resource
    criteria: tuple[search.Criterion, ...]
    count: int
    after: str | None  # the keyset cursor: the last id of the previous page
    total: TotalMode
    # The parameters that select (not _count or the cursor), canonical, for next links.
    query: tuple[tuple[str, str], ...]


# --- values ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Value:
    """One of a parameter's comma-separated values, its FHIR escapes (``\\,`` ``\\|``
    ``\\$`` ``\\\\``) still in, so that an escaped ``|`` is not taken for a system's end."""

    escaped: str

    @property
    def text(self) -> str:
        return _unescape(self.escaped)

    def system_and_code(self) -> tuple[str | None, str]:
        """``system|code`` split at its first unescaped bar; (None, code) without one."""
        bar = _unescaped_bar.search(self.escaped)
        if bar is None:
            return None, self.text
        return _unescape(self.escaped[: bar.end() - 1]), _unescape(self.escaped[bar.end() :])


_unescaped_bar = re.compile(r"(?:^|(?<=[^\\]))(?:\\\\)*\|")


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _alternatives(name: str, raw: str) -> list[_Value]:
    """A parameter's comma-separated values."""
    if len(raw) > _MAX_VALUE_LENGTH:
        raise SearchError(f"{name}: a value is longer than {_MAX_VALUE_LENGTH} characters")
    if "\x00" in raw:
        # No mirrored value holds one (PostgreSQL's text cannot), so no search could match it.
        raise SearchError(f"{name}: a value holds a NUL character")
    values, current, escaped = [], [], False
    for char in raw:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == ",":
            values.append("".join(current))
            current = []
        else:
            current.append(char)
    if escaped:
        raise SearchError(f"{name}: a value ends with a lone backslash")
    values.append("".join(current))
    if len(values) > _MAX_ALTERNATIVES:
        raise SearchError(f"{name}: more than {_MAX_ALTERNATIVES} alternatives")
    if any(not value for value in values):
        raise SearchError(f"{name}: an empty value between commas")
    return [_Value(value) for value in values]


_DATE = re.compile(
    r"(?P<prefix>eq|ne|gt|ge|lt|le|sa|eb|ap)?"
    r"(?P<year>\d{4})(?:-(?P<month>\d{2})(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?P<fraction>\.\d{1,9})?)?"
    r"(?P<offset>Z|[+-]\d{2}:\d{2})?)?)?)?"
)


@dataclass(frozen=True, slots=True)
class _DateValue:
    prefix: str
    low: date | datetime  # the value's range: [low, high)
    high: date | datetime
    has_time: bool


def _parse_date(name: str, raw: str, zone: ZoneInfo) -> _DateValue:
    match = _DATE.fullmatch(raw)
    if match is None:
        raise SearchError(
            f"{name}: not a FHIR date (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm[:ss][zone], "
            "with an optional prefix eq, ne, gt, ge, lt or le)"
        )
    prefix = match["prefix"] or "eq"
    if prefix in ("sa", "eb", "ap"):
        raise SearchError(f"{name}: the prefix {prefix} is not supported", "not-supported")
    try:
        year = int(match["year"])
        if match["month"] is None:
            return _days(prefix, date(year, 1, 1), date(year + 1, 1, 1) if year < 9999 else None)
        first = date(year, int(match["month"]), 1)
        if match["day"] is None:
            last_month = (year, first.month) == (9999, 12)
            following = None if last_month else (first + timedelta(days=31)).replace(day=1)
            return _days(prefix, first, following)
        day = date(year, first.month, int(match["day"]))
        if match["hour"] is None:
            return _days(prefix, day, day + timedelta(days=1) if day < date.max else None)
        fraction = match["fraction"] or ""
        clock = time(
            int(match["hour"]),
            int(match["minute"]),
            int(match["second"] or 0),
            int(fraction[1:7].ljust(6, "0")) if fraction else 0,
        )
        moment = datetime.combine(day, clock)
        offset = match["offset"]
        if offset is None:
            moment = moment.replace(tzinfo=zone)
        else:
            moment = datetime.fromisoformat(moment.isoformat() + offset.replace("Z", "+00:00"))
    except (ValueError, OverflowError):
        raise SearchError(f"{name}: not a valid date or time") from None
    if match["second"] is None:
        precision = timedelta(minutes=1)
    elif fraction:
        precision = timedelta(microseconds=10 ** max(0, 6 - (len(fraction) - 1)))
    else:
        precision = timedelta(seconds=1)
    try:
        # Both ends must be instants the database can compare: in UTC, within years 1-9999.
        low, high = moment.astimezone(UTC), (moment + precision).astimezone(UTC)
    except (ValueError, OverflowError):
        raise SearchError(f"{name}: an instant outside the years 1 to 9999") from None
    return _DateValue(prefix, low, high, True)


def _days(prefix: str, low: date, high: date | None) -> _DateValue:
    # The last representable day has no day after it: its range ends with the calendar.
    return _DateValue(prefix, low, high if high is not None else date.max, False)


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(), tzinfo=zone).astimezone(UTC)


def _range(column: str, value: _DateValue) -> search.Between:
    low, high = value.low, value.high
    match value.prefix:
        case "eq":
            return search.Between(column, low, high)
        case "ne":
            return search.Between(column, low, high, outside=True)
        case "gt":
            return search.Between(column, high, None)
        case "ge":
            return search.Between(column, low, None)
        case "lt":
            return search.Between(column, None, low)
        case _:  # le
            return search.Between(column, None, high)


# --- parameter types -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SearchContext:
    """What a parameter's meaning depends on besides its text."""

    zone: ZoneInfo  # HEALTHDOCK_TIMEZONE: a day without a time is one of its days
    base: str  # this server's FHIR base URL: an absolute reference names one of ours under it


_Parser = Callable[[str, str, str | None, SearchContext], search.Criterion]


def _no_modifier(name: str, modifier: str | None) -> None:
    if modifier is not None:
        raise SearchError(f"{name}: the modifier :{modifier} is not supported", "not-supported")


def _text(columns: tuple[str, ...]) -> _Parser:
    def parse(name: str, raw: str, modifier: str | None, _: SearchContext) -> search.Criterion:
        if modifier not in (None, "exact"):
            raise SearchError(f"{name}: the modifier :{modifier} is not supported", "not-supported")
        return tuple(
            search.TextMatch(columns, value.text, exact=modifier == "exact")
            for value in _alternatives(name, raw)
        )

    return parse


def _token(column: str, system: str, codes: Mapping[str, tuple[str, ...]]) -> _Parser:
    """A coded parameter over ``column``: each FHIR code stands for these mirror values (none:
    valid, but nothing in the mirror has it)."""

    def parse(name: str, raw: str, modifier: str | None, _: SearchContext) -> search.Criterion:
        _no_modifier(name, modifier)
        values: list[str] = []
        for value in _alternatives(name, raw):
            given_system, code = value.system_and_code()
            if given_system is not None and given_system != system:
                continue  # another code system, or none (|code): none of ours matches it
            if code not in codes:
                raise SearchError(f"{name}: unknown code (use one of {', '.join(codes)})")
            values += codes[code]
        return (search.Equals(column, tuple(values)),)

    return parse


_GENDER_CODES = {
    "male": ("M",),
    "female": ("F",),
    "other": ("Other",),
    "unknown": (),
}
_STATUS_CODES = {
    code: tuple(ours for ours, theirs in APPOINTMENT_STATUSES.items() if theirs == code)
    for code in ("proposed", "pending", "booked", "arrived", "fulfilled", "cancelled", "noshow",
                 "entered-in-error", "checked-in", "waitlist")
}  # fmt: skip


def _digits_forms(value: str) -> tuple[str, ...]:
    """An ABHA number as written with or without its hyphens (XX-XXXX-XXXX-XXXX)."""
    digits = value.replace("-", "")
    if len(digits) != 14 or not digits.isdigit():
        return (value,)
    hyphenated = f"{digits[:2]}-{digits[2:6]}-{digits[6:10]}-{digits[10:]}"
    return tuple(dict.fromkeys((value, digits, hyphenated)))


def _identifier(id_system: str, abha: bool) -> _Parser:
    def parse(name: str, raw: str, modifier: str | None, _: SearchContext) -> search.Criterion:
        _no_modifier(name, modifier)
        alternatives: list[search.Alternative] = []
        for value in _alternatives(name, raw):
            system, code = value.system_and_code()
            # system|: any identifier in that system; |value: one without a system (none of
            # ours); value: in any system.
            if system in (None, id_system):
                every = search.Between("id", None, None)
                alternatives.append(search.Equals("id", (code,)) if code else every)
            if abha and system in (None, ABHA_SYSTEM):
                alternatives.append(
                    search.Equals("abha_number", _digits_forms(code))
                    if code
                    else search.Between("abha_number", None, None)  # has one
                )
        # Only unknown systems (or none): a valid search that nothing matches.
        return tuple(alternatives) or (search.Equals("id", ()),)

    return parse


def _ids(name: str, raw: str, modifier: str | None, _: SearchContext) -> search.Criterion:
    _no_modifier(name, modifier)
    return (search.Equals("id", tuple(value.text for value in _alternatives(name, raw))),)


def _reference(column: str, kind: str) -> _Parser:
    def parse(
        name: str, raw: str, modifier: str | None, context: SearchContext
    ) -> search.Criterion:
        _no_modifier(name, modifier)
        ids = []
        for value in _alternatives(name, raw):
            reference = value.text
            if "://" in reference:
                ours = f"{context.base}/{kind}/"
                if not reference.startswith(ours):
                    continue  # a record of another server: not one of ours
                reference = reference.removeprefix(ours)
            else:
                reference = reference.removeprefix(f"{kind}/")
            if "/" in reference:
                raise SearchError(f"{name}: a reference to a {kind} ({kind}/<id> or <id>)")
            if not reference:
                raise SearchError(f"{name}: a reference without an id")
            ids.append(reference)
        return (search.Equals(column, tuple(ids)),)

    return parse


def _dates(day_column: str | None, instant_column: str | None) -> _Parser:
    """A date parameter. A day (or month, year) compares ``day_column``, or, without one, its
    span in the zone compares ``instant_column``; a time compares ``instant_column``, or, without
    one, is refused."""

    def one(name: str, value: _DateValue, zone: ZoneInfo) -> search.Between:
        if not value.has_time and day_column is not None:
            return _range(day_column, value)
        if instant_column is None:
            raise SearchError(f"{name}: a date without a time (YYYY, YYYY-MM or YYYY-MM-DD)")
        if not value.has_time:
            # A day's span in the zone: from its midnight to the next day's.
            try:
                low, high = _local_midnight(value.low, zone), _local_midnight(value.high, zone)
            except OverflowError:
                raise SearchError(f"{name}: not a valid date") from None
            value = _DateValue(value.prefix, low, high, True)
        return _range(instant_column, value)

    def parse(
        name: str, raw: str, modifier: str | None, context: SearchContext
    ) -> search.Criterion:
        _no_modifier(name, modifier)
        zone = context.zone
        return tuple(one(name, _parse_date(name, value.text, zone), zone)
                     for value in _alternatives(name, raw))  # fmt: skip

    return parse


PARAMETERS: Mapping[Resource, Mapping[str, _Parser]] = {
    Resource.PATIENT: {
        "_id": _ids,
        "identifier": _identifier(PATIENT_ID_SYSTEM, abha=True),
        "family": _text(("last_name",)),
        "given": _text(("first_name",)),
        "name": _text(("last_name", "first_name")),
        "birthdate": _dates("date_of_birth", None),
        "gender": _token("gender", "http://hl7.org/fhir/administrative-gender", _GENDER_CODES),
        "_lastUpdated": _dates(None, "updated_at"),
    },
    Resource.APPOINTMENT: {
        "_id": _ids,
        "identifier": _identifier(APPOINTMENT_ID_SYSTEM, abha=False),
        "date": _dates("local_date", "date_time"),
        "patient": _reference("patient_id", "Patient"),
        "practitioner": _reference("doctor_id", "Practitioner"),
        "status": _token("status", "http://hl7.org/fhir/appointmentstatus", _STATUS_CODES),
        "_lastUpdated": _dates(None, "updated_at"),
    },
}
# What every search takes besides its filters.
CONTROL_PARAMETERS = ("_count", "_total", "_format", "_cursor")
_COUNT = re.compile(r"[0-9]{1,6}")  # ASCII digits: str.isdigit() would take "²" too
_JSON_FORMATS = {"json", "application/json", "application/fhir+json"}
assert set(GENDERS.values()) <= set(_GENDER_CODES)


def encode_cursor(record_id: str) -> str:
    return base64.urlsafe_b64encode(record_id.encode()).decode().rstrip("=")


def _decode_cursor(raw: str) -> str:
    try:
        decoded = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise SearchError("_cursor: not a cursor of this API (take it from a next link)") from None
    # Every id a page ends on is a FHIR id (others are never served).
    if not raw.isascii() or not is_fhir_id(decoded):
        raise SearchError("_cursor: not a cursor of this API (take it from a next link)")
    return decoded


def check_read_parameters(params: Sequence[tuple[str, str]]) -> None:
    """A read takes ``_format`` alone: ``_elements`` or ``_summary``, say, would be expected
    to shape the answer, so they are refused rather than ignored."""
    check_format(params)
    for name, _ in params:
        if name != "_format":
            raise SearchError(
                f"{name[:64]}: a read takes no parameter but _format", "not-supported"
            )


def check_format(params: Sequence[tuple[str, str]]) -> None:
    """Refuse ``_format`` values other than JSON (406), for reads as for searches."""
    for name, value in params:
        if name == "_format" and value.strip() and value.strip().lower() not in _JSON_FORMATS:
            raise FormatNotAcceptable


@dataclass(slots=True)
class _Control:
    """What a search's control parameters asked, each given at most once."""

    count: int = DEFAULT_COUNT
    after: str | None = None
    total: TotalMode = TotalMode.ESTIMATE
    given: set[str] = field(default_factory=set)

    def take(self, name: str, value: str) -> None:
        if name in self.given:
            raise SearchError(f"{name}: given more than once")
        self.given.add(name)
        if name == "_count":
            if _COUNT.fullmatch(value) is None:
                raise SearchError(f"_count: a whole number from 0 (capped at {MAX_COUNT})")
            # Over the cap is not an error in FHIR: the server pages in smaller steps.
            self.count = min(int(value), MAX_COUNT)
        elif name == "_total":
            try:
                self.total = TotalMode(value)
            except ValueError:
                raise SearchError("_total: one of none, estimate or accurate") from None
        elif name == "_cursor":
            self.after = _decode_cursor(value)


def parse_search(
    resource: Resource, params: Sequence[tuple[str, str]], context: SearchContext
) -> SearchRequest:
    """The search a query string asks for, or SearchError naming what is wrong."""
    check_format(params)
    if len(params) > _MAX_PARAMETERS:
        raise SearchError(f"more than {_MAX_PARAMETERS} parameters")
    known = PARAMETERS[resource]
    # A HealthDock id FHIR cannot carry is left out of FHIR altogether (fhir_r4.mapping).
    criteria: list[search.Criterion] = [(search.IdShape(FHIR_ID_CHARACTERS, FHIR_ID_LENGTH),)]
    query: list[tuple[str, str]] = []
    control = _Control()
    for full_name, value in params:
        name, colon, modifier = full_name.partition(":")
        if not value:
            continue  # FHIR: a parameter without a value is ignored
        if name in CONTROL_PARAMETERS and not colon:
            if name != "_format":
                control.take(name, value)
            continue
        parser = known.get(name)
        if parser is None:
            supported = ", ".join([*known, *CONTROL_PARAMETERS])
            raise SearchError(
                f"{name[:64]}: not a supported search parameter of {resource_name(resource)} "
                f"(supported: {supported})",
                "not-supported",
            )
        criteria.append(parser(name, value, modifier if colon else None, context))
        query.append((full_name, value))
    return SearchRequest(resource, tuple(criteria), control.count, control.after, control.total,
                         tuple(query))  # fmt: skip


def resource_name(resource: Resource) -> str:
    return {Resource.PATIENT: "Patient", Resource.APPOINTMENT: "Appointment"}[resource]
