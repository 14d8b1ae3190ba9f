"""``/fhir``: a read-only FHIR R4 API over the mirror, for the hospital's other systems.

Reads and searches take a token with the ``feed`` or ``viewer`` role (or the bootstrap token)
and are audited, ids only, before the answer is sent. ``/fhir/metadata`` holds no patient data
and is open, as FHIR clients expect to discover a server before they authenticate. Errors here
are OperationOutcomes (receiver/errors.py shapes every error under /fhir so).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, Router, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import QueryParameter
from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from config import Settings
from fhir_r4 import (
    FHIR_JSON,
    SearchContext,
    SearchError,
    TotalMode,
    appointment_resource,
    capability_statement,
    check_format,
    check_read_parameters,
    is_fhir_id,
    operation_outcome,
    parse_search,
    patient_resource,
    resource_name,
    searchset,
)
from mirror import AuditAction, Resource, Role, read_transaction, search
from receiver.access import TOKEN_SECURITY, audited, require_role

FHIR_PATH = "/fhir"


@dataclass(frozen=True, slots=True)
class OutcomeIssue:
    severity: str
    code: str
    diagnostics: str


@dataclass(frozen=True, slots=True)
class OutcomeDocument:
    """An OperationOutcome, as the OpenAPI document describes error answers under /fhir."""

    resourceType: str  # FHIR's name
    issue: list[OutcomeIssue]


_MEANINGS = {
    400: "A bad or unsupported search parameter, or an id that is not a FHIR id",
    401: "No token, or an unknown or revoked one",
    403: "The token's role may not read FHIR (it needs feed or viewer)",
    404: "No such record in the mirror",
    406: "_format asked for something other than JSON",
    410: "The record was deleted upstream (a tombstone)",
    503: "The mirror database (or its audit trail) is unavailable; retry later",
}


def _outcomes(*statuses: int) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(data_container=OutcomeDocument, media_type=FHIR_JSON,
                             generate_examples=False, description=_MEANINGS[status])
        for status in statuses
    }  # fmt: skip


_READ_ERRORS = _outcomes(400, 401, 403, 404, 406, 410, 503)
# What every read and search shares: who may, how it is described, the thread it runs in.
_PROTECTED: dict[str, Any] = {
    "tags": ["fhir"],
    "media_type": FHIR_JSON,
    "guards": [require_role(Role.FEED, Role.VIEWER)],
    "security": TOKEN_SECURITY,
    "description": (
        "Requires a token with the `feed` or `viewer` role (or `$HEALTHDOCK_ADMIN_TOKEN`); the "
        "answer's record ids are written to the audit trail first."
    ),
    "sync_to_thread": True,
}
_SEARCH_ERRORS = _outcomes(400, 401, 403, 406, 503)
# One audit row names at most this many characters of ids; a page's ids fill several rows.
_TARGET_CHARACTERS = 1800


def _answer(body: dict[str, Any], status: int = 200) -> Response[Any]:
    return Response(
        msgspec.json.encode(body),
        status_code=status,
        media_type=FHIR_JSON,
        headers={"Cache-Control": "no-store"},
    )


def _base(request: Request[Any, Any, Any]) -> str:
    # The configured URL, never the request's Host: a client-chosen host in a next link would
    # send the next request, token and all, wherever that client said.
    settings: Settings = request.app.state.settings
    return f"{settings.base_url}{FHIR_PATH}"


def _targets(kind: str, ids: list[str]) -> list[str]:
    """The audit targets naming ``ids``, each short enough for one row."""
    if not ids:
        return [f"{kind} search: no matches"]
    targets, current = [], f"{kind}:"
    for record_id in ids:
        if len(current) + len(record_id) + 1 > _TARGET_CHARACTERS:
            targets.append(current)
            current = f"{kind}:"
        current += f" {record_id}"
    return [*targets, current]


@get(
    "/metadata",
    summary="The CapabilityStatement: what this FHIR server supports",
    tags=["fhir"],
    media_type=FHIR_JSON,
    responses=_outcomes(406),
)
async def capability(request: Request[Any, Any, Any]) -> Response[Any]:
    check_format(list(request.query_params.multi_items()))
    return _answer(capability_statement(_base(request)))


_Mapper = Callable[[search.FoundRecord], dict[str, Any]]


def _mapper(request: Request[Any, Any, Any], resource: Resource) -> _Mapper:
    if resource is Resource.PATIENT:
        return patient_resource
    settings: Settings = request.app.state.settings
    return functools.partial(appointment_resource, zone=settings.local_timezone)


def _read(request: Request[Any, Any, Any], resource: Resource, record_id: str) -> Response[Any]:
    check_read_parameters(list(request.query_params.multi_items()))
    kind = resource_name(resource)
    if not is_fhir_id(record_id):
        raise SearchError("the id is not a FHIR id (1-64 letters, digits, - or .)")
    engine: Engine = request.app.state.engine
    found = read_transaction(
        engine, functools.partial(search.find_record, resource=resource, record_id=record_id)
    )
    if found is None:
        outcome = operation_outcome("not-found", f"no {kind} with this id")
        return _answer(outcome, 404)
    if found.deleted_at is not None:
        # That it existed is itself something a reader learns: on the trail too.
        audited(request, AuditAction.FHIR_READ, f"{kind}/{record_id} (gone)")
        outcome = operation_outcome("deleted", f"this {kind} was deleted upstream")
        return _answer(outcome, 410)
    body = _mapper(request, resource)(found)
    audited(request, AuditAction.FHIR_READ, f"{kind}/{record_id}")
    return _answer(body)


def _search(request: Request[Any, Any, Any], resource: Resource) -> Response[Any]:
    settings: Settings = request.app.state.settings
    context = SearchContext(settings.local_timezone, _base(request))
    asked = parse_search(resource, list(request.query_params.multi_items()), context)

    def run(connection: Connection) -> tuple[list[search.FoundRecord], int | None]:
        found: list[search.FoundRecord] = []
        if asked.count:
            # One more than the page: whether a next page exists, without counting.
            found = search.search_records(
                connection, resource, asked.criteria, after=asked.after, limit=asked.count + 1
            )
        counted = None
        if asked.total is TotalMode.ACCURATE or (
            asked.count == 0 and asked.total is not TotalMode.NONE
        ):
            counted = search.count_records(connection, resource, asked.criteria)
        return found, counted

    engine: Engine = request.app.state.engine
    found, total = read_transaction(engine, run)
    more = len(found) > asked.count
    page = found[: asked.count]
    everything = not more and asked.after is None and asked.count > 0
    if total is None and everything and asked.total is not TotalMode.NONE:
        total = len(page)  # the first page holds every match: the count is free
    # Only FHIR ids come back (the search's criteria say so: see fhir_r4.mapping).
    to_resource = _mapper(request, resource)
    resources = [to_resource(record) for record in page]
    kind = resource_name(resource)
    audited(request, AuditAction.FHIR_SEARCH, *_targets(kind, [record.id for record in page]))
    bundle = searchset(
        _base(request), asked, resources, next_after=page[-1].id if more else None, total=total
    )
    return _answer(bundle)


# What a search's query string may hold, for the OpenAPI document (and the fuzzing of it).
# The handlers read the query themselves: repeated parameters, modifiers and prefixes are
# FHIR's to interpret (search_params), and anything not listed is refused.
def _query(name: str, description: str) -> Any:
    return QueryParameter(name=name, required=False, description=description)


_COUNT = "page size (default 20, capped at 100)"
_CURSOR = "opaque: taken from a Bundle's next link"
_DATE = "a FHIR date with a prefix (eq, ne, gt, ge, lt, le), e.g. ge1990-01-01"

_QIdentifier = Annotated[list[str] | None, _query("identifier", "system|value, |value or value")]
_QFamily = Annotated[list[str] | None, _query("family", "family name starts with (ignoring case)")]
_QFamilyExact = Annotated[list[str] | None, _query("family:exact", "family name equals")]
_QGiven = Annotated[list[str] | None, _query("given", "given name starts with (ignoring case)")]
_QName = Annotated[list[str] | None, _query("name", "family or given name starts with")]
_QBirthdate = Annotated[list[str] | None, _query("birthdate", _DATE)]
_QGender = Annotated[list[str] | None, _query("gender", "male, female, other or unknown")]
_QLastupdated = Annotated[list[str] | None, _query("_lastUpdated", _DATE)]
_QId = Annotated[list[str] | None, _query("_id", "HealthDock ids, comma-separated")]
_QCount = Annotated[list[str] | None, _query("_count", _COUNT)]
_QTotal = Annotated[list[str] | None, _query("_total", "none, estimate or accurate")]
_QCursor = Annotated[list[str] | None, _query("_cursor", _CURSOR)]
_QDate = Annotated[list[str] | None, _query("date", f"the start; a day is the local day. {_DATE}")]
_QPatient = Annotated[list[str] | None, _query("patient", "Patient/<id> or <id>")]
_QPractitioner = Annotated[list[str] | None, _query("practitioner", "Practitioner/<id> or <id>")]
_QStatus = Annotated[
    list[str] | None, _query("status", "booked, fulfilled, cancelled (FHIR codes)")
]
_QAppointmentIdentifier = Annotated[list[str] | None, _query("identifier", "system|value or value")]


@get(
    "/Patient/{record_id:str}",
    summary="Read a Patient",
    responses=_READ_ERRORS,
    **_PROTECTED,
)
def read_patient(request: Request[Any, Any, Any], record_id: str) -> Response[Any]:
    return _read(request, Resource.PATIENT, record_id)


@get(
    "/Appointment/{record_id:str}",
    summary="Read an Appointment",
    responses=_READ_ERRORS,
    **_PROTECTED,
)
def read_appointment(request: Request[Any, Any, Any], record_id: str) -> Response[Any]:
    return _read(request, Resource.APPOINTMENT, record_id)


@get(
    "/Patient",
    summary="Search Patients",
    responses=_SEARCH_ERRORS,
    **_PROTECTED,
)
def search_patients(
    request: Request[Any, Any, Any],
    identifier: _QIdentifier = None,
    family: _QFamily = None,
    family_exact: _QFamilyExact = None,
    given: _QGiven = None,
    name: _QName = None,
    birthdate: _QBirthdate = None,
    gender: _QGender = None,
    last_updated: _QLastupdated = None,
    record_id: _QId = None,
    count: _QCount = None,
    total: _QTotal = None,
    cursor: _QCursor = None,
) -> Response[Any]:
    return _search(request, Resource.PATIENT)


@get(
    "/Appointment",
    summary="Search Appointments",
    responses=_SEARCH_ERRORS,
    **_PROTECTED,
)
def search_appointments(
    request: Request[Any, Any, Any],
    date: _QDate = None,
    patient: _QPatient = None,
    practitioner: _QPractitioner = None,
    status: _QStatus = None,
    identifier: _QAppointmentIdentifier = None,
    last_updated: _QLastupdated = None,
    record_id: _QId = None,
    count: _QCount = None,
    total: _QTotal = None,
    cursor: _QCursor = None,
) -> Response[Any]:
    return _search(request, Resource.APPOINTMENT)


def fhir_router() -> Router:
    return Router(
        path=FHIR_PATH,
        route_handlers=[
            capability,
            read_patient,
            read_appointment,
            search_patients,
            search_appointments,
        ],
    )
