"""The committer's wire format: an event crosses the pipe and comes back as it was sent."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from mirror.eventlog import IncomingEvent, dedup_key
from mirror.events import parse_event, unreadable_event
from mirror.states import EventSource
from receiver import frames
from tests.factories import appointment, encode, event, patient

_DOCUMENTS = st.sampled_from(
    [
        event("patient.created", patient("PAT1", visits=[1, {"n": 2**63}], note=None)),
        event("appointment.cancelled", {"appointment_id": "APT1"}),
        event("patient.deleted", {"patient_id": "PAT1"}, "2024-01-12T10:30:00.123456789+05:30"),
        event("doctor.created", {"doctor_id": "DOC1"}),  # unknown: no write
        event("appointment.created", appointment("APT2", duration=30.5)),
    ]
)


def _sent(document: dict[str, object], received: datetime) -> IncomingEvent:
    body = encode(document)
    parsed = parse_event(document)
    return IncomingEvent(
        EventSource.WEBHOOK,
        dedup_key(parsed.event_id, body),
        parsed,
        body,
        [("x-a", "b")],
        received,
    )


@given(document=_DOCUMENTS, micros=st.integers(min_value=0, max_value=10**15))
def test_an_event_round_trips_through_the_pipe(document: dict[str, object], micros: int) -> None:
    received = datetime.fromtimestamp(micros / 10**6, UTC)
    item = _sent(document, received)
    payload = frames.encode_batch([frames.frame_of(item)])
    [back] = [frames.incoming_of(frame) for frame in frames.decode_batch(payload)]
    assert back == item


def test_an_unreadable_event_keeps_its_reason() -> None:
    body = b"<html>"
    item = IncomingEvent(
        EventSource.WEBHOOK, dedup_key(None, body), unreadable_event(body), body, [],
        datetime.now(UTC), unreadable="body is not valid JSON",
    )  # fmt: skip
    [frame] = frames.decode_batch(frames.encode_batch([frames.frame_of(item)]))
    assert frames.incoming_of(frame) == item


def test_answers_are_told_apart_by_their_tag() -> None:
    committed = frames.Committed([frames.Receipt(7, "applied", "created")])
    for answer in (frames.Ready(), committed, frames.Unavailable("database is locked")):
        assert frames.decode_answer(frames.encode_answer(answer)) == answer
