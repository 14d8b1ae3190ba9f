"""Hostile and arbitrary searches: never a 5xx, always a Bundle or an OperationOutcome; and
keyset paging's invariant, that the pages of a search, whatever their size, are its matches
exactly once, in id order."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import Engine

from tests.fhir_r4.conftest import AUTH, seed

FUZZ = settings(
    max_examples=150,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
NAMES = ["family", "family:exact", "given", "name", "birthdate", "gender", "identifier", "_id",
         "_lastUpdated", "_count", "_total", "_cursor", "_format", "date", "patient",
         "practitioner", "status", "_sort", "family:contains", "x", ""]  # fmt: skip
FHIRISH = st.sampled_from(["ge", "lt", "ne", "eq", "sa", "2026", "-03", "-05", "T10:00", "Z",
                           "+05:30", "|", ",", "\\", "Patient/", "male", "booked", "%", "_",
                           "\x00", "é", "\U0010ffff", " ", "1990-01-01", "999999999",
                           "\ud7ff", "²", "AA", "9999-12-31T23:59Z", "0001-01-01T00:00+05:30",
                           "T20:00-05:00", "http://127.0.0.1:8080/fhir/Patient/"])  # fmt: skip
VALUES = st.one_of(st.text(max_size=40), st.lists(FHIRISH, max_size=6).map("".join))


@FUZZ
@given(
    kind=st.sampled_from(["Patient", "Appointment"]),
    params=st.lists(st.tuples(st.sampled_from(NAMES), VALUES), max_size=6),
)
def test_any_search_is_a_bundle_or_an_outcome(
    fhir: TestClient[Litestar], kind: str, params: list[tuple[str, str]]
) -> None:
    response = fhir.get(f"/fhir/{kind}", params=params, headers=AUTH)
    assert response.status_code in (200, 400, 406), response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == ("Bundle" if response.status_code == 200 else "OperationOutcome")


@FUZZ
@given(kind=st.sampled_from(["Patient", "Appointment"]), record_id=st.text(max_size=80))
def test_any_read_is_a_resource_or_an_outcome(
    fhir: TestClient[Litestar], kind: str, record_id: str
) -> None:
    response = fhir.get(f"/fhir/{kind}/{quote(record_id, safe='')}", headers=AUTH)
    assert response.status_code in (200, 400, 404, 405, 410), response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    # "", "." and "..": the path is the search's, or another one.
    expected = (
        (kind, "OperationOutcome") if record_id.strip(".") else ("Bundle", "OperationOutcome")
    )
    assert response.json()["resourceType"] in expected


def _pages(client: TestClient[Litestar], kind: str, params: list[tuple[str, str]]) -> list[str]:
    seen: list[str] = []
    url: str | None = f"/fhir/{kind}"
    query: Any = params
    while url is not None:
        body = client.get(url, params=query, headers=AUTH).json()
        seen += [entry["resource"]["id"] for entry in body.get("entry", [])]
        link = next((x["url"] for x in body["link"] if x["relation"] == "next"), None)
        url, query = (
            (None, None) if link is None else (urlsplit(link).path, parse_qsl(urlsplit(link).query))
        )
    return seen


@settings(max_examples=25, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    size=st.integers(min_value=1, max_value=7),
    params=st.sampled_from(
        [
            [],
            [("family", "s")],
            [("gender", "female,other")],
            [("birthdate", "ge1950")],
            [("name", "a,e,i")],
        ]
    ),
)
def test_pages_of_any_size_are_the_matches_once_in_order(
    many: TestClient[Litestar], size: int, params: list[tuple[str, str]]
) -> None:
    everything = _pages(many, "Patient", [*params, ("_count", "100")])
    assert everything == sorted(everything)
    assert _pages(many, "Patient", [*params, ("_count", str(size))]) == everything


# Forty patients whose names and birth dates vary, for the paging property.
_GIVEN = ["Asha", "Ravi", "Meera", "Kiran", "Esha", "Imran", "Ojas", "Uma"]
_FAMILY = ["Sharma", "Shah", "Iyer", "Rao", "Singh"]


def _many_patients() -> list[dict[str, Any]]:
    return [
        {"id": f"PAT{i:04d}", "first_name": _GIVEN[i % 8], "last_name": _FAMILY[i % 5],
         "date_of_birth": f"{1940 + i}-0{1 + i % 9}-1{i % 10}",
         "gender": ["M", "F", "Other"][i % 3]}
        for i in range(40)
    ]  # fmt: skip


@pytest.fixture
def many(fhir: TestClient[Litestar], seeded: Engine) -> TestClient[Litestar]:
    seed(seeded, _many_patients(), [])
    return fhir
