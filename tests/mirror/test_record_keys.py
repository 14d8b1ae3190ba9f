"""A record's key, as every writer reads it (``mirror.events.record_id_of``): the usual short
string takes a shortcut, and what the shortcut lets through is exactly what the rules accept."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mirror.events import PayloadError, Resource, record_id_of


@pytest.mark.parametrize(
    ("record", "key"),
    [
        ({"id": "PAT1"}, "PAT1"),
        ({"patient_id": "PAT2", "id": "other"}, "PAT2"),  # the webhook's name comes first
        ({"patient_id": None, "id": "PAT3"}, "PAT3"),
        ({"id": "P" * 128}, "P" * 128),
        ({"id": 42}, "42"),
        ({"id": "Zoë-1"}, "Zoë-1"),
    ],
)
def test_keys_the_mirror_accepts(record: dict[str, Any], key: str) -> None:
    assert record_id_of(Resource.PATIENT, record) == key


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({}, "must be a string"),
        ({"id": ""}, "must be a string"),
        ({"id": True}, "must be a string"),
        ({"id": 1.5}, "must be a string"),
        ({"id": ["PAT1"]}, "must be a string"),
        ({"id": "P" * 129}, "longer than 128"),
        ({"id": "PAT\x001"}, "must not contain NUL"),
        ({"id": 2**64}, "does not fit in 64 bits"),
    ],
)
def test_keys_the_mirror_refuses_say_why(record: dict[str, Any], reason: str) -> None:
    with pytest.raises(PayloadError, match=reason):
        record_id_of(Resource.PATIENT, record)


@given(st.text(max_size=140))
def test_any_string_key_is_accepted_exactly_when_the_rules_allow(text: str) -> None:
    allowed = 0 < len(text) <= 128 and "\x00" not in text
    try:
        key = record_id_of(Resource.APPOINTMENT, {"appointment_id": text})
    except PayloadError:
        assert not allowed
    else:
        assert allowed
        assert key == text
