"""The ``/v1`` endpoints of the HealthDock reference: what each request does and returns.

Handlers take a parsed :class:`Request` and return a :class:`Response`; the ASGI layer
(``app.py``) adds authentication, rate limits and faults around them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from fake_healthdock.fake import FakeHealthDock
from fake_healthdock.records import APPOINTMENT_STATUSES
from fake_healthdock.store import Listing, NotFound, R
from fake_healthdock.validation import InvalidField, list_date

MAX_LIMIT = 100
_DEFAULT_LIMIT = 10


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    """Lower-case names."""
    body: bytes


@dataclass
class Response:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


class ApiError(Exception):
    """An error answered with the reference's envelope."""

    def __init__(
        self, status: int, code: str, message: str, details: Mapping[str, object] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})

    def response(self) -> Response:
        envelope = {"code": self.code, "message": self.message, "details": self.details}
        return Response(self.status, msgspec.json.encode({"success": False, "error": envelope}))


def success(data: object, status: int = 200) -> Response:
    return Response(status, msgspec.json.encode({"success": True, "data": data}))


def invalid(field: str, issue: str) -> ApiError:
    details = {"field": field, "issue": issue}
    return ApiError(400, "INVALID_REQUEST", "The request parameters are invalid", details)


def handle(fake: FakeHealthDock, request: Request, *, drift: bool) -> Response:
    """Answer one authenticated ``/v1`` request; ``drift`` makes a list request insert or
    delete a random record first."""
    route = _route(request)
    try:
        return route(fake, request, drift)
    except InvalidField as error:
        raise invalid(error.field, error.issue) from None
    except NotFound as error:
        raise ApiError(404, "NOT_FOUND", "Resource not found", {"id": str(error)}) from None


_Handler = Callable[[FakeHealthDock, Request, bool], Response]


def _route(request: Request) -> _Handler:
    parts = request.path.rstrip("/").split("/")
    if len(parts) in (3, 4) and parts[:2] == ["", "v1"] and parts[2] in _HANDLERS:
        handlers = _HANDLERS[parts[2]][len(parts) == 4]
        if request.method in handlers:
            return handlers[request.method]
        raise ApiError(405, "METHOD_NOT_ALLOWED", f"{request.method} is not allowed here")
    raise ApiError(404, "NOT_FOUND", "Resource not found")


def _record_id(request: Request) -> str:
    return request.path.rstrip("/").rsplit("/", 1)[1]


def _list_patients(fake: FakeHealthDock, request: Request, drift: bool) -> Response:
    page, limit = _paging(request.query)
    if drift:
        fake.drift("patients")
    listing = fake.store.list_patients(
        page=page, limit=limit, search=request.query.get("search") or None
    )
    return success({"patients": listing.records, "pagination": _pagination(listing)})


def _list_appointments(fake: FakeHealthDock, request: Request, drift: bool) -> Response:
    query = request.query
    page, limit = _paging(query)
    day = list_date(query["date"]) if query.get("date") else None
    status = query.get("status") or None
    if status is not None and status not in APPOINTMENT_STATUSES:
        raise invalid("status", f"Must be one of {', '.join(APPOINTMENT_STATUSES)}")
    if drift:
        fake.drift("appointments")
    listing = fake.store.list_appointments(
        page=page,
        limit=limit,
        day=day,
        doctor_id=query.get("doctor_id") or None,
        status=status,
    )  # a ``search`` is ignored, as a lenient API ignores what it does not document
    return success({"appointments": listing.records, "pagination": _pagination(listing)})


def _get_patient(fake: FakeHealthDock, request: Request, drift: bool) -> Response:
    patient = fake.patient(_record_id(request))
    if patient is None:
        raise NotFound(_record_id(request))
    return success(patient)


def _get_appointment(fake: FakeHealthDock, request: Request, drift: bool) -> Response:
    appointment = fake.appointment(_record_id(request))
    if appointment is None:
        raise NotFound(_record_id(request))
    return success(appointment)


def _create_patient(fake: FakeHealthDock, request: Request, drift: bool) -> Response:
    return success(fake.create_patient(_body(request)), status=201)


def _create_appointment(fake: FakeHealthDock, request: Request, drift: bool) -> Response:
    return success(fake.create_appointment(_body(request)), status=201)


def _update_patient(fake: FakeHealthDock, request: Request, drift: bool) -> Response:
    return success(fake.update_patient(_record_id(request), _body(request)))


def _update_appointment(fake: FakeHealthDock, request: Request, drift: bool) -> Response:
    return success(fake.update_appointment(_record_id(request), _body(request)))


def _delete_patient(fake: FakeHealthDock, request: Request, drift: bool) -> Response:
    fake.delete_patient(_record_id(request))
    return success({"id": _record_id(request), "deleted": True})


def _delete_appointment(fake: FakeHealthDock, request: Request, drift: bool) -> Response:
    fake.delete_appointment(_record_id(request))
    return success({"id": _record_id(request), "deleted": True})


# resource -> (collection handlers, single-record handlers), by method
_HANDLERS: dict[str, tuple[dict[str, _Handler], dict[str, _Handler]]] = {
    "patients": (
        {"GET": _list_patients, "POST": _create_patient},
        {"GET": _get_patient, "PUT": _update_patient, "DELETE": _delete_patient},
    ),
    "appointments": (
        {"GET": _list_appointments, "POST": _create_appointment},
        {"GET": _get_appointment, "PUT": _update_appointment, "DELETE": _delete_appointment},
    ),
}


def _paging(query: Mapping[str, str]) -> tuple[int, int]:
    page = _positive_int(query, "page", 1)
    limit = _positive_int(query, "limit", _DEFAULT_LIMIT)
    if limit > MAX_LIMIT:
        raise invalid("limit", f"Must be at most {MAX_LIMIT}")
    return page, limit


def _positive_int(query: Mapping[str, str], name: str, default: int) -> int:
    text = query.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit() or len(text) > 9 or int(text) < 1:
        raise invalid(name, "Must be a positive integer (at most 9 digits)")
    return int(text)


def _pagination(listing: Listing[R]) -> dict[str, int]:
    return {
        "current_page": listing.page,
        "total_pages": listing.total_pages,
        "total_count": listing.total_count,
    }


def _body(request: Request) -> dict[str, Any]:
    try:
        body = msgspec.json.decode(request.body)
    except msgspec.DecodeError:
        raise invalid("body", "Invalid JSON") from None
    if not isinstance(body, dict):
        raise invalid("body", "Must be a JSON object")
    return body
