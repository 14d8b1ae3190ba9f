"""What a HealthDock event means for the mirror: its type, version and record write.

Pure functions over an already verified body; nothing here touches the database.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import msgspec

from config import MirrorError
from mirror.versions import Action, VersionError, parse_instant, version_key_at


class PayloadError(MirrorError, ValueError):
    """A signed body that is not a HealthDock event; the message names the field, never data."""


class Resource(StrEnum):
    PATIENT = "patient"
    APPOINTMENT = "appointment"

    @property
    def id_field(self) -> str:
        return _ID_FIELDS[self]


# Looked up for every record a pass reads: computed once.
_ID_FIELDS = {resource: f"{resource.value}_id" for resource in Resource}


# Appointment status events may carry only the key; their type says the status.
_IMPLIED_STATUS = {"confirmed": "confirmed", "cancelled": "cancelled", "completed": "completed"}

EVENT_TYPES: Mapping[str, tuple[Resource, Action]] = {
    "patient.created": (Resource.PATIENT, Action.CREATE),
    "patient.updated": (Resource.PATIENT, Action.UPDATE),
    "patient.deleted": (Resource.PATIENT, Action.DELETE),
    "appointment.created": (Resource.APPOINTMENT, Action.CREATE),
    "appointment.updated": (Resource.APPOINTMENT, Action.UPDATE),
    "appointment.confirmed": (Resource.APPOINTMENT, Action.UPDATE),
    "appointment.cancelled": (Resource.APPOINTMENT, Action.UPDATE),
    "appointment.completed": (Resource.APPOINTMENT, Action.UPDATE),
    "appointment.deleted": (Resource.APPOINTMENT, Action.DELETE),
}

_MAX_ID_LENGTH = 128
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")
_MAX_TYPE_LENGTH = 64
_MAX_TIMESTAMP_LENGTH = 64  # webhook_events.event_timestamp
# Far deeper than any HealthDock body, and far from the interpreter's recursion limit, which
# the encoders downstream (content digest, the committer's frames, the feed's answers) share.
MAX_NESTING = 64
# The committer's frames are msgpack, whose integers are signed or unsigned 64-bit.
_INTEGERS = range(-(2**63), 2**64)


@dataclass(frozen=True, slots=True)
class RecordWrite:
    """One write to one mirrored record, from an event or from the API."""

    resource: Resource
    record_id: str
    action: Action
    version: str  # the key of mirror.versions.Version: ordered as the versions are
    fields: Mapping[str, Any] | None  # the record as HealthDock sent it; None for a delete


@dataclass(frozen=True, slots=True)
class Event:
    """A parsed HealthDock event."""

    event_id: str | None
    event_type: str
    timestamp: str
    write: RecordWrite | None  # None for event types we do not support yet


def decode_document(body: bytes) -> object:
    """Decode a body that can be read one way only.

    Duplicate member names are refused: the signed reading of such bytes need not be the one a
    later reader (SQLite's ``json_extract``, a feed consumer) takes. So are lone UTF-16
    surrogate escapes (``"\\ud800"``, which JSON.stringify writes): no text column can store
    them. The usual body, compact as JSON.stringify writes it, is proven unique by encoding
    it back to the same bytes; any other takes the slower exact check.
    """
    try:
        document = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        _exact_decode(body)  # raises with the reason, unless the JSON is merely unusual
        if _SURROGATE_ESCAPE.search(body):
            raise PayloadError(
                "body holds a lone UTF-16 surrogate escape (\\ud800-\\udfff), which no "
                "text column can store"
            ) from None
        raise PayloadError("body is not JSON the mirror can read") from None
    if msgspec.json.encode(document) != body:
        _exact_decode(body)
    return document


def _exact_decode(body: bytes) -> object:
    def unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
        members = dict(pairs)
        if len(members) != len(pairs):
            raise PayloadError("body holds an object with duplicate member names")
        return members

    def constant(name: str) -> object:
        raise PayloadError(f"body holds {name}, which is not JSON")

    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise PayloadError("body is not UTF-8") from None
    try:
        return json.loads(text, object_pairs_hook=unique, parse_constant=constant)
    except RecursionError:
        raise PayloadError(f"body is nested more than {MAX_NESTING} levels deep") from None
    except json.JSONDecodeError:
        raise PayloadError("body is not valid JSON") from None


def content_digest(content: object) -> str:
    """Hex sha-256 of the canonical JSON of ``content`` (sorted keys, compact)."""
    return hashlib.sha256(msgspec.json.encode(content, order="sorted")).hexdigest()


def _text_key(name: str, text: str) -> str:
    # PostgreSQL text cannot hold NUL: stored, such a key would fail every batch it is in.
    if "\x00" in text:
        raise PayloadError(f"{name} must not contain NUL")
    return text


def nested_too_deep(value: object) -> bool:
    """More than :data:`MAX_NESTING` levels of arrays and objects."""
    return _oversized(value, integers=False) == "nesting"


def _oversized(document: object, *, integers: bool = True) -> str | None:
    """What in ``document`` the mirror cannot carry: deep nesting or a too-wide integer."""
    level: list[dict[str, Any] | list[Any]] = (
        [document] if isinstance(document, dict | list) else []
    )
    depth = 0
    while level:
        depth += 1
        deeper: list[dict[str, Any] | list[Any]] = []
        for container in level:
            for value in container.values() if isinstance(container, dict) else container:
                if integers and type(value) is int and value not in _INTEGERS:
                    return "integer"
                if isinstance(value, dict | list):
                    deeper.append(value)
        if deeper and depth == MAX_NESTING:
            return "nesting"
        level = deeper
    return None


def record_id_of(resource: Resource, record: Mapping[str, Any]) -> str:
    """The record's key: ``patient_id``/``appointment_id``, else ``id``."""
    value = record.get(_ID_FIELDS[resource])
    if value is None:
        value = record.get("id")
    # The usual key (a short string), in a few operations: this runs for every record a
    # pass reads. Anything else takes the checks below, which say what is wrong.
    if type(value) is str and 0 < len(value) <= _MAX_ID_LENGTH and "\x00" not in value:
        return value
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise PayloadError(f"data.{resource.id_field} (or data.id) must be a string")
    if isinstance(value, int) and value not in _INTEGERS:
        raise PayloadError(f"data.{resource.id_field} does not fit in 64 bits")
    text = str(value)
    if len(text) > _MAX_ID_LENGTH:
        raise PayloadError(f"data.{resource.id_field} is longer than {_MAX_ID_LENGTH}")
    return _text_key(f"data.{resource.id_field}", text)


def record_write(
    resource: Resource, action: Action, timestamp: object, record: Mapping[str, Any]
) -> RecordWrite:
    """The write that puts ``record`` (as of ``timestamp``) into the mirror."""
    record_id = record_id_of(resource, record)
    fields = None if action is Action.DELETE else record
    content: dict[str, Any] | None = None
    if fields is not None:
        # The key's name differs between webhooks (patient_id) and the API (id): not content.
        content = dict(fields)
        content.pop("id", None)
        content.pop(_ID_FIELDS[resource], None)
    digest = content_digest([record_id, content])
    try:
        version = version_key_at(timestamp, action, digest)
    except VersionError as exc:
        raise PayloadError(f"timestamp: {exc}") from None
    return RecordWrite(resource, record_id, action, version, fields)


def read_event(body: bytes) -> Event:
    """The event a verified body holds; :class:`PayloadError` says why when it holds none."""
    return parse_event(decode_document(body))


def unreadable_event(body: bytes) -> Event:
    """What can safely be said of a verified body that :func:`read_event` refused.

    Its type and timestamp when they are plain short strings (so an operator can filter on
    them), else empty; never its id, so that redeliveries are recognized by the digest of the
    signed bytes alone.
    """
    try:
        document = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError):
        document = None
    members = document if isinstance(document, dict) else {}

    def plain(name: str, limit: int) -> str:
        value = members.get(name)
        ok = isinstance(value, str) and len(value) <= limit and "\x00" not in value
        return value if ok else ""  # type: ignore[return-value]

    return Event(
        event_id=None,
        event_type=plain("event", _MAX_TYPE_LENGTH),
        timestamp=plain("timestamp", _MAX_TIMESTAMP_LENGTH),
        write=None,
    )


def parse_event(document: object) -> Event:
    """Turn a verified, decoded webhook body into an event."""
    if not isinstance(document, dict):
        raise PayloadError("body must be a JSON object")
    oversized = _oversized(document)
    if oversized == "nesting":
        raise PayloadError(f"body is nested more than {MAX_NESTING} levels deep")
    if oversized == "integer":
        raise PayloadError("body holds an integer that does not fit in 64 bits")
    event_type = document.get("event")
    if not isinstance(event_type, str) or not 0 < len(event_type) <= _MAX_TYPE_LENGTH:
        raise PayloadError("event must be a non-empty string")
    _text_key("event", event_type)
    timestamp = document.get("timestamp")
    if isinstance(timestamp, str) and len(timestamp) > _MAX_TIMESTAMP_LENGTH:
        raise PayloadError(f"timestamp is longer than {_MAX_TIMESTAMP_LENGTH}")
    event_id = document.get("id")
    if event_id is not None and (not isinstance(event_id, str | int) or isinstance(event_id, bool)):
        raise PayloadError("id must be a string")
    if event_id is not None and len(str(event_id)) > _MAX_ID_LENGTH:
        raise PayloadError(f"id is longer than {_MAX_ID_LENGTH}")
    if isinstance(event_id, str):
        _text_key("id", event_id)
    data = document.get("data")
    if not isinstance(data, dict):
        raise PayloadError("data must be a JSON object")
    known = EVENT_TYPES.get(event_type)
    write = None
    if known is not None:
        resource, action = known
        status = _IMPLIED_STATUS.get(event_type.rsplit(".", 1)[1])
        if status is not None and "status" not in data:
            data = {**data, "status": status}
        write = record_write(resource, action, timestamp, data)
    else:
        # Stored for a later replay, so its timestamp must already be a version.
        try:
            parse_instant(timestamp)
        except VersionError as exc:
            raise PayloadError(f"timestamp: {exc}") from None
    return Event(
        event_id=None if event_id is None else str(event_id),
        event_type=event_type,
        timestamp=str(timestamp),
        write=write,
    )
