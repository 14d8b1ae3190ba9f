"""The /v1 endpoints, spoken to over HTTP as a client would."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.fake_healthdock.harness import MakeFake, client

PATIENT = {
    "first_name": "Kavya",
    "last_name": "Menon",
    "date_of_birth": "1992-08-14",
    "gender": "F",
    "phone": "+919845012345",
    "abha_number": "91-2345-6789-0123",
}


def run(scenario: Any) -> Any:
    return asyncio.run(scenario)


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert body["success"] is False
    assert set(body["error"]) == {"code", "message", "details"}
    return body["error"]  # type: ignore[no-any-return]


def test_paging_sees_every_record_exactly_once(make_fake: MakeFake) -> None:
    fake = make_fake(patients=250)

    async def scenario() -> dict[str, list[str]]:
        seen: dict[str, list[str]] = {"patients": [], "appointments": []}
        async with client(fake) as api:
            for resource in seen:
                page, total_pages = 1, 1
                while page <= total_pages:
                    response = await api.get(f"/v1/{resource}", params={"page": page, "limit": 100})
                    data = response.json()["data"]
                    assert data["pagination"]["current_page"] == page
                    total_pages = data["pagination"]["total_pages"]
                    seen[resource] += [record["id"] for record in data[resource]]
                    page += 1
        return seen

    seen = run(scenario())
    assert seen["patients"] == [p.id for p in fake.patients()]
    assert seen["appointments"] == [a.id for a in fake.appointments()]
    assert len(set(seen["appointments"])) == len(seen["appointments"]) == 500


def test_list_defaults_and_a_page_past_the_end(make_fake: MakeFake) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with client(make_fake(patients=25)) as api:
            first = (await api.get("/v1/patients")).json()
            beyond = (await api.get("/v1/patients", params={"page": 9})).json()
            return first, beyond

    first, beyond = run(scenario())
    assert len(first["data"]["patients"]) == 10
    assert first["data"]["pagination"] == {"current_page": 1, "total_pages": 3, "total_count": 25}
    assert beyond == {
        "success": True,
        "data": {
            "patients": [],
            "pagination": {"current_page": 9, "total_pages": 3, "total_count": 25},
        },
    }


def test_bad_paging_parameters_are_400(make_fake: MakeFake) -> None:
    async def scenario() -> list[tuple[int, dict[str, Any]]]:
        async with client(make_fake()) as api:
            results = []
            for params in (
                {"limit": 101},
                {"limit": 0},
                {"page": 0},
                {"page": "two"},
                {"limit": "1.5"},
            ):
                response = await api.get("/v1/patients", params=params)
                results.append((response.status_code, _error(response)))
            return results

    results = run(scenario())
    assert [status for status, _ in results] == [400] * 5
    assert results[0][1] == {
        "code": "INVALID_REQUEST",
        "message": "The request parameters are invalid",
        "details": {"field": "limit", "issue": "Must be at most 100"},
    }
    assert [error["details"]["field"] for _, error in results] == [
        "limit",
        "limit",
        "page",
        "page",
        "limit",
    ]


def test_a_wrong_or_missing_api_key_is_401(make_fake: MakeFake) -> None:
    fake = make_fake()

    async def scenario() -> list[httpx.Response]:
        async with client(fake, api_key="wrong") as wrong, client(fake, api_key=None) as none:
            return [await wrong.get("/v1/patients"), await none.get("/v1/appointments")]

    for response in run(scenario()):
        assert response.status_code == 401
        assert _error(response)["code"] == "UNAUTHORIZED"
        assert "X-RateLimit-Remaining" in response.headers


def test_search_by_id_and_by_name(make_fake: MakeFake) -> None:
    fake = make_fake(patients=300)
    someone = fake.patient("PAT000123")
    assert someone is not None
    *_, last_appointment = fake.appointments()

    async def scenario() -> list[dict[str, Any]]:
        async with client(fake) as api:
            return [
                (await api.get("/v1/patients", params={"search": query, "limit": 100})).json()
                for query in ("PAT000123", "PAT999999", someone.last_name.upper())
            ] + [
                (await api.get("/v1/appointments", params=params)).json()
                for params in ({"search": last_appointment.id}, {})
            ]

    by_id, unknown, by_name, searched, unsearched = (result["data"] for result in run(scenario()))
    assert [p["id"] for p in by_id["patients"]] == ["PAT000123"]
    assert by_id["patients"][0]["last_name"] == someone.last_name
    assert unknown["patients"] == []
    assert unknown["pagination"]["total_count"] == 0
    assert "PAT000123" in [p["id"] for p in by_name["patients"]]
    assert all(
        someone.last_name.lower() in (p["first_name"] + p["last_name"]).lower()
        for p in by_name["patients"]
    )
    # The reference documents no search on appointments: like a lenient API, the fake
    # ignores it and answers the unfiltered listing.
    assert searched == unsearched
    assert searched["pagination"]["total_count"] == sum(1 for _ in fake.appointments()) > 1
    assert last_appointment.id not in [a["id"] for a in searched["appointments"]]


def test_appointment_filters_combine(make_fake: MakeFake) -> None:
    fake = make_fake(patients=300)
    sample = next(a for a in fake.appointments() if a.status == "confirmed")
    day, doctor = sample.date_time[:10], sample.doctor_id

    async def scenario(params: dict[str, str]) -> list[dict[str, Any]]:
        async with client(fake) as api:
            response = await api.get("/v1/appointments", params={"limit": 100, **params})
            return response.json()["data"]["appointments"]  # type: ignore[no-any-return]

    everything = list(fake.appointments())
    for params in (
        {"date": day},
        {"doctor_id": doctor},
        {"status": "confirmed"},
        {"date": day, "doctor_id": doctor, "status": "confirmed"},
    ):
        got = run(scenario(params))
        wanted = [
            a.id
            for a in everything
            if a.date_time[:10] == params.get("date", a.date_time[:10])
            and a.doctor_id == params.get("doctor_id", a.doctor_id)
            and a.status == params.get("status", a.status)
        ]
        assert got, params
        assert [a["id"] for a in got] == wanted[:100], params
    assert sample.id in [a["id"] for a in run(scenario({"date": day, "doctor_id": doctor}))]


def test_bad_filters_are_400(make_fake: MakeFake) -> None:
    async def scenario() -> list[httpx.Response]:
        async with client(make_fake()) as api:
            return [
                await api.get("/v1/appointments", params={"date": "2026-13-01"}),
                await api.get("/v1/appointments", params={"date": "01/02/2026"}),
                await api.get("/v1/appointments", params={"status": "done"}),
            ]

    fields = [_error(response)["details"]["field"] for response in run(scenario())]
    assert fields == ["date", "date", "status"]


def test_post_creates_a_record_and_validates_the_body(make_fake: MakeFake) -> None:
    fake = make_fake()

    async def scenario() -> list[httpx.Response]:
        async with client(fake) as api:
            created = await api.post("/v1/patients", json=PATIENT)
            appointment = await api.post(
                "/v1/appointments",
                json={
                    "patient_id": created.json()["data"]["id"],
                    "doctor_id": "DOC001",
                    "date_time": "2026-01-05T04:30:00Z",
                },
            )
            bad = [
                await api.post("/v1/patients", json={**PATIENT, "date_of_birth": "14/08/1992"}),
                await api.post(
                    "/v1/patients", json={k: v for k, v in PATIENT.items() if k != "phone"}
                ),
                await api.post("/v1/patients", json={**PATIENT, "gender": "male"}),
                await api.post("/v1/patients", json={**PATIENT, "abha_number": "123"}),
                await api.post("/v1/patients", json={**PATIENT, "nickname": "K"}),
                await api.post("/v1/patients", content=b"{not json"),
                await api.post(
                    "/v1/appointments",
                    json={
                        "patient_id": "PAT999999",
                        "doctor_id": "DOC001",
                        "date_time": "2026-01-05T10:00:00+05:30",
                    },
                ),
                await api.post(
                    "/v1/appointments",
                    json={
                        "patient_id": "PAT000001",
                        "doctor_id": "DOC001",
                        "date_time": "tomorrow",
                    },
                ),
            ]
            return [created, appointment, *bad]

    created, appointment, *bad = run(scenario())
    assert created.status_code == 201
    patient = created.json()["data"]
    assert patient == {
        "id": "PAT000301",
        **PATIENT,
        "abha_number": "91234567890123",
        "created_at": "2026-01-01T00:00:00.000Z",
        "updated_at": "2026-01-01T00:00:00.000Z",
    }
    assert fake.patient("PAT000301") is not None
    assert appointment.status_code == 201
    assert appointment.json()["data"] | {"created_at": None, "updated_at": None} == {
        "id": "APT000601",
        "patient_id": "PAT000301",
        "doctor_id": "DOC001",
        "date_time": "2026-01-05T10:00:00+05:30",
        "duration": 30,
        "type": "consultation",
        "status": "scheduled",
        "created_at": None,
        "updated_at": None,
    }
    assert [r.status_code for r in bad] == [400] * 8
    assert [(_error(r)["details"]["field"]) for r in bad] == [
        "date_of_birth",
        "phone",
        "gender",
        "abha_number",
        "nickname",
        "body",
        "patient_id",
        "date_time",
    ]
    assert fake.counts() == {"patients": 301, "appointments": 601}


def test_put_and_delete_by_id(make_fake: MakeFake) -> None:
    fake = make_fake()

    async def scenario() -> list[httpx.Response]:
        async with client(fake) as api:
            return [
                await api.put("/v1/patients/PAT000005", json={"phone": "+919900112233"}),
                await api.get("/v1/patients/PAT000005"),
                await api.delete("/v1/appointments/APT000005"),
                await api.get("/v1/appointments/APT000005"),
                await api.delete("/v1/appointments/APT000005"),
                await api.put("/v1/patients/PAT999999", json={"phone": "+919900112233"}),
                await api.patch("/v1/patients/PAT000005", json={}),
                await api.get("/v1/doctors"),
            ]

    put, get, delete, gone, again, missing, patch, unknown = run(scenario())
    assert put.status_code == 200
    assert put.json()["data"]["phone"] == "+919900112233"
    assert get.json()["data"] == put.json()["data"]
    assert delete.status_code == 200
    assert delete.json()["data"] == {"id": "APT000005", "deleted": True}
    assert [r.status_code for r in (gone, again, missing, patch, unknown)] == [
        404,
        404,
        404,
        405,
        404,
    ]
    assert _error(again)["code"] == "NOT_FOUND"
    assert _error(patch)["code"] == "METHOD_NOT_ALLOWED"
