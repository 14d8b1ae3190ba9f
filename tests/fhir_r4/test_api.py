"""``/fhir`` as a FHIR client sees it: reads, searches with FHIR's semantics, paging, errors as
OperationOutcomes, roles and the audit trail; every resource checked against FHIR R4B."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import Engine

from fhir_r4 import ABHA_SYSTEM, PATIENT_ID_SYSTEM, appointment_resource, patient_resource
from mirror import Resource
from tests.fhir_r4.conftest import AUTH, seed
from tests.support.access import audit_rows, create_token

FHIR_JSON = "application/fhir+json"


def get(client: TestClient[Litestar], path: str, **params: Any) -> Any:
    return client.get(f"/fhir/{path}", params=params, headers=AUTH)


def search(client: TestClient[Litestar], kind: str, params: Any = None) -> dict[str, Any]:
    """A search's Bundle, checked as FHIR; the answer's ids are in its entries."""
    response = client.get(f"/fhir/{kind}", params=params or {}, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body: dict[str, Any] = response.json()
    Bundle.model_validate(body)
    return body


def ids(bundle: dict[str, Any]) -> list[str]:
    return [entry["resource"]["id"] for entry in bundle.get("entry", [])]


def outcome(response: Any, status: int) -> str:
    """The diagnostics of an error answer, which must be an OperationOutcome."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body = response.json()
    OperationOutcome.model_validate(body)
    return str(body["issue"][0]["diagnostics"])


# --- reads -----------------------------------------------------------------------------------


def test_a_patient_reads_as_fhir_with_its_identifiers(fhir: TestClient[Litestar]) -> None:
    response = get(fhir, "Patient/PAT001")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(FHIR_JSON)
    body = response.json()
    assert body == {
        "resourceType": "Patient",
        "id": "PAT001",
        "meta": {"lastUpdated": "2026-01-10T10:00:00Z"},
        "identifier": [
            {"system": PATIENT_ID_SYSTEM, "value": "PAT001"},
            {"system": ABHA_SYSTEM, "value": "12345678901234"},
        ],
        "name": [{"family": "Sharma", "given": ["Asha"]}],
        "telecom": [{"system": "phone", "value": "+919800000001"}],
        "gender": "female",
        "birthDate": "1990-01-15",
    }


def test_unknown_fields_are_not_invented_into_fhir(fhir: TestClient[Litestar]) -> None:
    body = get(fhir, "Patient/PAT004").json()
    assert body["gender"] == "other"
    assert "gold" not in str(body)  # HealthDock's loyalty_tier has no FHIR meaning here
    assert "telecom" not in body  # no phone: no telecom, rather than an empty one


def test_an_appointment_reads_with_its_times_in_the_zone(fhir: TestClient[Litestar]) -> None:
    body = get(fhir, "Appointment/APT001").json()
    assert body["status"] == "booked"
    assert body["start"] == "2026-03-06T01:30:00+05:30"
    assert body["end"] == "2026-03-06T02:00:00+05:30"
    assert body["minutesDuration"] == 30
    assert body["participant"] == [
        {"actor": {"reference": "Patient/PAT001"}, "status": "accepted"},
        {"actor": {"reference": "Practitioner/DOC01"}, "status": "accepted"},
    ]
    assert body["appointmentType"] == {"text": "consultation"}
    follow_up = get(fhir, "Appointment/APT004").json()
    assert follow_up["appointmentType"]["coding"][0]["code"] == "FOLLOWUP"


@pytest.mark.parametrize(
    ("status", "fhir_status"),
    [("APT001", "booked"), ("APT002", "fulfilled"), ("APT003", "cancelled"),
     ("APT004", "booked")],
)  # fmt: skip
def test_statuses_map_as_spec_says(
    fhir: TestClient[Litestar], status: str, fhir_status: str
) -> None:
    assert get(fhir, f"Appointment/{status}").json()["status"] == fhir_status


def test_a_status_fhir_has_no_code_for_is_said_to_be_unknown(fhir: TestClient[Litestar]) -> None:
    body = get(fhir, "Appointment/APT006").json()
    assert "status" not in body
    assert body["_status"]["extension"][0]["valueCode"] == "unknown"


def test_tombstoned_unknown_and_malformed_ids(fhir: TestClient[Litestar]) -> None:
    assert "deleted" in outcome(get(fhir, "Patient/PAT005"), 410)
    assert "deleted" in outcome(get(fhir, "Appointment/APT005"), 410)
    outcome(get(fhir, "Patient/PAT999"), 404)
    outcome(get(fhir, "Appointment/PAT001"), 404)
    outcome(get(fhir, "Patient/PAT_6"), 400)
    outcome(get(fhir, "Observation/1"), 404)
    outcome(fhir.post("/fhir/Patient", headers=AUTH, json={}), 405)


def test_a_read_refuses_parameters_that_would_shape_it(fhir: TestClient[Litestar]) -> None:
    assert "_elements" in outcome(get(fhir, "Patient/PAT001", _elements="id"), 400)
    assert "_summary" in outcome(get(fhir, "Appointment/APT001", _summary="true"), 400)


def test_links_name_the_configured_base_never_the_requests_host(
    fhir: TestClient[Litestar],
) -> None:
    headers = {**AUTH, "Host": "evil.example"}
    bundle = fhir.get("/fhir/Patient", params={"_count": "1"}, headers=headers).json()
    urls = [link["url"] for link in bundle["link"]] + [e["fullUrl"] for e in bundle["entry"]]
    assert all(url.startswith("http://127.0.0.1:8080/fhir/") for url in urls), urls
    assert fhir.get("/fhir/metadata", headers={"Host": "x:notaport"}).status_code == 200


def test_only_json_is_served(fhir: TestClient[Litestar]) -> None:
    assert get(fhir, "Patient/PAT001", _format="json").status_code == 200
    assert get(fhir, "Patient/PAT001", _format="application/fhir+json").status_code == 200
    outcome(get(fhir, "Patient/PAT001", _format="xml"), 406)
    outcome(get(fhir, "Patient", _format="application/fhir+xml"), 406)


# --- search semantics ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"family": "sha"}, ["PAT001", "PAT002", "PAT003"]),
        ({"family": "SHARMA"}, ["PAT001", "PAT002"]),
        ({"family:exact": "Sharma"}, ["PAT001", "PAT002"]),
        ({"family:exact": "sharma"}, []),
        ({"given": "as"}, ["PAT001"]),
        ({"name": "k"}, ["PAT004"]),  # Kiran, by the given name
        ({"name": "iy,mee"}, ["PAT003", "PAT004"]),
        ({"family": "sha", "given": "r"}, ["PAT002"]),
        ({"birthdate": "1990"}, ["PAT001", "PAT003"]),
        ({"birthdate": "1990-12"}, ["PAT003"]),
        ({"birthdate": "1990-01-15"}, ["PAT001"]),
        ({"birthdate": "ge1990-01-01"}, ["PAT001", "PAT003", "PAT004"]),
        ({"birthdate": "gt1990"}, ["PAT004"]),
        ({"birthdate": "lt1990-01-15"}, ["PAT002"]),
        ({"birthdate": "le1990-01-15"}, ["PAT001", "PAT002"]),
        ({"birthdate": "ne1990-01-15"}, ["PAT002", "PAT003", "PAT004"]),
        ({"birthdate": ["ge1990-01-01", "lt1991-01-01"]}, ["PAT001", "PAT003"]),
        ({"gender": "female"}, ["PAT001", "PAT003"]),
        ({"gender": "male,other"}, ["PAT002", "PAT004"]),
        ({"gender": "http://hl7.org/fhir/administrative-gender|male"}, ["PAT002"]),
        ({"gender": "unknown"}, []),
        ({"gender": "|female"}, []),  # |code: a code without a system, none of ours
        ({"identifier": "PAT00\\|1"}, []),  # an escaped bar is part of the value
        ({"identifier": f"{ABHA_SYSTEM}|12345678901234"}, ["PAT001"]),
        ({"identifier": f"{ABHA_SYSTEM}|12-3456-7890-1234"}, ["PAT001"]),
        ({"identifier": "98765432109876"}, ["PAT003"]),  # stored with hyphens
        ({"identifier": f"{PATIENT_ID_SYSTEM}|PAT002"}, ["PAT002"]),
        ({"identifier": "PAT003"}, ["PAT003"]),
        ({"identifier": f"{ABHA_SYSTEM}|"}, ["PAT001", "PAT003"]),
        ({"identifier": "https://example.org/mrn|PAT001"}, []),
        ({"_id": "PAT002,PAT004"}, ["PAT002", "PAT004"]),
        ({"_lastUpdated": "gt2026-01-31"}, ["PAT002", "PAT003", "PAT004"]),
        ({"_lastUpdated": "2026-02-01"}, ["PAT002"]),  # a local day, in Asia/Kolkata
        ({"_lastUpdated": "ge2026-02-01T05:30:00.250+05:30"}, ["PAT002", "PAT003", "PAT004"]),
        ({"_lastUpdated": "lt2026-02-01T05:30:00.250+05:30"}, ["PAT001"]),
    ],
)
def test_patient_search(
    fhir: TestClient[Litestar], params: dict[str, Any], expected: list[str]
) -> None:
    bundle = search(fhir, "Patient", params)
    assert ids(bundle) == expected  # tombstoned PAT005 and the non-FHIR id PAT_6 never show
    assert bundle["total"] == len(expected)  # one page holds them all: the total is free


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        # The local day: APT001 (20:00 UTC on the 5th) is on the 6th in Asia/Kolkata.
        ({"date": "2026-03-05"}, ["APT002", "APT003"]),
        ({"date": "2026-03-06"}, ["APT001"]),
        ({"date": ["ge2026-03-05", "lt2026-03-07"]}, ["APT001", "APT002", "APT003"]),
        ({"date": "2026-03"}, ["APT001", "APT002", "APT003"]),
        ({"date": "gt2026-03"}, ["APT004", "APT006"]),
        ({"date": "ge2026-03-05T10:00:00+05:30"}, ["APT001", "APT003", "APT004", "APT006"]),
        ({"date": "2026-03-05T10:00"}, ["APT003"]),  # a minute, in the zone
        ({"date": "lt2026-03-05T04:30:00Z"}, ["APT002"]),
        ({"patient": "Patient/PAT001"}, ["APT001", "APT002"]),
        ({"patient": "PAT002"}, ["APT003"]),  # APT005 is tombstoned
        ({"patient": "http://127.0.0.1:8080/fhir/Patient/PAT003"}, ["APT004"]),  # our base
        ({"patient": "http://elsewhere.example/fhir/Patient/PAT003"}, []),  # another server's
        ({"practitioner": "Practitioner/DOC01"}, ["APT001", "APT003", "APT004"]),
        ({"practitioner": "DOC01", "date": "2026-03-05"}, ["APT003"]),
        ({"status": "booked"}, ["APT001", "APT004"]),
        ({"status": "fulfilled,cancelled"}, ["APT002", "APT003"]),
        ({"status": "noshow"}, []),
        # 06:00 UTC on the 5th is 11:30 that day in Asia/Kolkata.
        ({"_lastUpdated": "ge2026-03-05"}, ["APT002", "APT004"]),
        ({"_lastUpdated": "ge2026-03-05T12:00:00+05:30"}, ["APT004"]),
    ],
)
def test_appointment_search(
    fhir: TestClient[Litestar], params: dict[str, Any], expected: list[str]
) -> None:
    assert ids(search(fhir, "Appointment", params)) == expected


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"telecom": "+91"}, "telecom"),
        ({"_sort": "-zzzz"}, "_sort"),
        ({"_include": "Appointment:patient"}, "_include"),
        ({"family:contains": "arm"}, ":contains"),
        ({"gender:not": "male"}, ":not"),
        ({"birthdate": "1990-13-01"}, "birthdate"),
        ({"birthdate": "sa1990"}, "sa"),
        ({"birthdate": "1990-01-01T10:00"}, "birthdate"),
        ({"birthdate": "yesterday"}, "birthdate"),
        ({"gender": "f"}, "gender"),
        ({"_count": "ten"}, "_count"),
        ({"_count": "-1"}, "_count"),
        ({"_total": "exact"}, "_total"),
        ({"_cursor": "%%%"}, "_cursor"),
        ({"family": "a,,b"}, "family"),
        ({"family": "x" * 300}, "family"),
        ({"_count": "²"}, "_count"),  # a digit to str.isdigit(), not to int()
        ({"_cursor": "AA"}, "_cursor"),  # decodes to NUL
        ({"_lastUpdated": "9999-12-31T23:59Z"}, "_lastUpdated"),  # its minute ends past 9999
        ({"_lastUpdated": "9999-12-31T20:00-05:00"}, "_lastUpdated"),
        ({"birthdate": "2000-01-01", "_lastUpdated": "0001-01-01T01:00+05:30"}, "_lastUpdated"),
    ],
)
def test_a_bad_or_unsupported_parameter_is_a_400_naming_it(
    fhir: TestClient[Litestar], params: dict[str, str], named: str
) -> None:
    diagnostics = outcome(get(fhir, "Patient", **params), 400)
    assert named in diagnostics
    for value in params.values():
        if len(value) > 3:
            assert value not in diagnostics  # a value can be a patient's name: never echoed


def test_appointment_parameters_are_checked_too(fhir: TestClient[Litestar]) -> None:
    assert "family" in outcome(get(fhir, "Appointment", family="sha"), 400)
    assert "status" in outcome(get(fhir, "Appointment", status="done"), 400)
    assert "patient" in outcome(get(fhir, "Appointment", patient="Practitioner/DOC01"), 400)


def test_names_beyond_ascii(fhir: TestClient[Litestar], seeded: Engine) -> None:
    seed(seeded, [{"id": "PAT077", "first_name": "Émile", "last_name": "Öztürk"}], [])
    assert ids(search(fhir, "Patient", {"family:exact": "Öztürk"})) == ["PAT077"]
    assert ids(search(fhir, "Patient", {"given:exact": "Émile"})) == ["PAT077"]
    assert ids(search(fhir, "Patient", {"family": "Öz"})) == ["PAT077"]
    assert ids(search(fhir, "Patient", {"family": "ÖZT"})) == ["PAT077"]  # ASCII letters fold
    folded = ids(search(fhir, "Patient", {"family": "öz"}))
    # PostgreSQL's lower() folds every cased letter; SQLite's only ASCII ones (README says so).
    assert folded == (["PAT077"] if seeded.dialect.name == "postgresql" else [])
    # The character before the surrogates: the prefix's upper bound must skip them.
    assert ids(search(fhir, "Patient", {"family": "\ud7ff"})) == []


def test_appointment_times_are_whole_even_when_healthdock_left_some_out(
    fhir: TestClient[Litestar], seeded: Engine
) -> None:
    from fhir.resources.R4B.appointment import Appointment

    seed(seeded, [], [
        {"id": "APT090", "patient_id": "PAT001", "date_time": "2026-06-01T09:00:00+05:30",
         "duration": None, "status": "scheduled"},
        {"id": "APT091", "patient_id": "PAT001", "status": "scheduled"},
        {"id": "APT092", "patient_id": "PAT001", "date_time": "2026-06-01T10:00:00+05:30",
         "duration": 0, "status": "scheduled"},
    ])  # fmt: skip
    untimed_length = get(fhir, "Appointment/APT090").json()
    assert untimed_length["end"] == "2026-06-01T09:30:00+05:30"  # HealthDock's default, 30
    assert untimed_length["minutesDuration"] == 30
    untimed = get(fhir, "Appointment/APT091").json()
    assert "start" not in untimed
    assert untimed["_start"]["extension"][0]["valueCode"] == "unknown"
    assert untimed["_end"] == untimed["_start"]
    instant_one = get(fhir, "Appointment/APT092").json()
    assert instant_one["start"] == instant_one["end"]
    assert "minutesDuration" not in instant_one
    for body in (untimed_length, untimed, instant_one):
        Appointment.model_validate(body)


def test_count_is_capped_and_zero_asks_for_the_total(fhir: TestClient[Litestar]) -> None:
    capped = search(fhir, "Patient", {"_count": "100000"})
    assert len(ids(capped)) == 4
    assert "_count=100" in capped["link"][0]["url"]
    counted = search(fhir, "Patient", {"family": "sha", "_count": "0"})
    assert counted["total"] == 3
    assert "entry" not in counted


# --- paging ----------------------------------------------------------------------------------


def follow(client: TestClient[Litestar], bundle: dict[str, Any]) -> dict[str, Any] | None:
    link = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
    if link is None:
        return None
    parts = urlsplit(link)
    assert parts.path.startswith("/fhir/")
    return search(client, parts.path.removeprefix("/fhir/"), parse_qsl(parts.query))


def test_next_links_page_through_every_match_once(fhir: TestClient[Litestar]) -> None:
    first = search(fhir, "Patient", {"family": "sha", "_count": "2"})
    assert ids(first) == ["PAT001", "PAT002"]
    assert "total" not in first  # not free: one more page follows
    second = follow(fhir, first)
    assert second is not None
    assert ids(second) == ["PAT003"]
    assert follow(fhir, second) is None
    assert (
        search(fhir, "Patient", {"family": "sha", "_count": "2", "_total": "accurate"})["total"]
        == 3
    )


def test_paging_stays_right_while_the_mirror_changes(
    fhir: TestClient[Litestar], seeded: Engine
) -> None:
    first = search(fhir, "Patient", {"family": "sha", "_count": "2"})
    assert ids(first) == ["PAT001", "PAT002"]
    # Between pages: a match before the cursor, one after it, and a match that stops matching.
    changes = [{"id": "PAT000", "last_name": "Shastri"}, {"id": "PAT009", "last_name": "Shaw"},
               {"id": "PAT003", "first_name": "Meera", "last_name": "Rao"}]  # fmt: skip
    seed(seeded, changes, [], timestamp="2026-03-12T00:00:00Z")
    rest = []
    page = follow(fhir, first)
    while page is not None:
        rest += ids(page)
        page = follow(fhir, page)
    # Never PAT001/PAT002 again, nor one before the cursor; PAT003 is a Rao now.
    assert rest == ["PAT009"]


def test_every_emitted_resource_is_valid_r4b(fhir: TestClient[Litestar]) -> None:
    for kind in ("Patient", "Appointment"):
        bundle = search(fhir, kind)
        for entry in bundle["entry"]:
            assert entry["fullUrl"].endswith(f"/fhir/{kind}/{entry['resource']['id']}")
    capability = fhir.get("/fhir/metadata")
    CapabilityStatement.model_validate(capability.json())


def test_the_capability_statement_lists_exactly_what_is_supported(
    fhir: TestClient[Litestar],
) -> None:
    from fhir_r4.search_params import PARAMETERS  # the parser's own table

    statement = fhir.get("/fhir/metadata").json()  # no token: it holds no patient data
    resources = {item["type"]: item for item in statement["rest"][0]["resource"]}
    assert set(resources) == {"Patient", "Appointment"}
    for resource, kind in ((Resource.PATIENT, "Patient"), (Resource.APPOINTMENT, "Appointment")):
        listed = {param["name"] for param in resources[kind]["searchParam"]}
        assert listed == set(PARAMETERS[resource])
        assert [i["code"] for i in resources[kind]["interaction"]] == ["read", "search-type"]
    assert statement["fhirVersion"] == "4.0.1"


def test_mapping_functions_agree_with_the_api(fhir: TestClient[Litestar], seeded: Engine) -> None:
    from zoneinfo import ZoneInfo

    from mirror import read_transaction
    from mirror import search as mirror_search

    found = read_transaction(
        seeded, lambda c: mirror_search.find_record(c, Resource.APPOINTMENT, "APT002")
    )
    assert found is not None
    assert (
        appointment_resource(found, ZoneInfo("Asia/Kolkata"))
        == get(fhir, "Appointment/APT002").json()
    )
    patient = read_transaction(
        seeded, lambda c: mirror_search.find_record(c, Resource.PATIENT, "PAT002")
    )
    assert patient is not None
    assert patient_resource(patient)["meta"]["lastUpdated"] == "2026-02-01T00:00:00.250Z"


# --- who may, and the trail ------------------------------------------------------------------


def test_a_token_is_required_and_answers_are_outcomes(fhir: TestClient[Litestar]) -> None:
    response = fhir.get("/fhir/Patient/PAT001")
    assert "token" in outcome(response, 401)
    assert response.headers["www-authenticate"].startswith("Bearer")
    outcome(fhir.get("/fhir/Patient", headers={"Authorization": "Bearer nope"}), 401)


@pytest.mark.parametrize("role", ["feed", "viewer", "operator"])
def test_feed_and_viewer_tokens_read_and_are_audited(
    fhir: TestClient[Litestar], database_url: str, role: str
) -> None:
    token = create_token(database_url, f"his-{role}", role)
    headers = {"Authorization": f"Bearer {token}"}
    assert fhir.get("/fhir/Patient/PAT001", headers=headers).status_code == 200
    found = fhir.get("/fhir/Patient", params={"family": "Sharma"}, headers=headers)
    assert found.status_code == 200
    assert fhir.get("/fhir/Patient/PAT005", headers=headers).status_code == 410
    rows = [row for row in audit_rows(database_url) if row["actor"] == f"his-{role}"]
    by_action = {(row["action"], row["target"]) for row in rows}
    assert ("fhir.read", "Patient/PAT001") in by_action
    assert ("fhir.search", "Patient: PAT001 PAT002") in by_action
    assert ("fhir.read", "Patient/PAT005 (gone)") in by_action
    assert all(row["role"] == role and row["outcome"] == "ok" for row in rows)
    assert "Sharma" not in str(rows)  # the search's terms are not on the trail: ids only


def test_a_page_of_long_ids_is_audited_across_rows(
    fhir: TestClient[Litestar], seeded: Engine, database_url: str
) -> None:
    many = [{"id": f"PATLONG{i:03d}{'x' * 50}", "last_name": "Zed"} for i in range(100)]
    seed(seeded, many, [])
    bundle = search(fhir, "Patient", {"family": "zed", "_count": "100"})
    assert len(ids(bundle)) == 100
    targets = [row["target"] for row in audit_rows(database_url, "--action", "fhir.search")]
    audited = {part for target in targets for part in target.removeprefix("Patient:").split()}
    assert audited == {record["id"] for record in many}
