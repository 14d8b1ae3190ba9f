"""One mapping from our errors to HTTP statuses and their bodies: the vendor's error envelope,
or, under ``/fhir``, a FHIR OperationOutcome (a FHIR client reads nothing else)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec

from fhir_r4 import (
    FHIR_JSON,
    FormatNotAcceptable,
    SearchError,
    operation_outcome,
)
from mirror import DatabaseUnavailable, FeedError, PayloadError
from receiver.intake import IntakeClosed
from receiver.signature import SignatureError

log = logging.getLogger(__name__)

_CODES = {
    400: "INVALID_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    429: "RATE_LIMITED",
    503: "SERVICE_UNAVAILABLE",
}


# What each error answer means to a client, for the OpenAPI document.
_MEANINGS = {
    400: "The request (or the signed body) is malformed",
    401: "Unsigned or wrongly signed (webhooks); missing or wrong admin token (admin endpoints)",
    403: "Admin endpoints are disabled: no HEALTHDOCK_ADMIN_TOKEN is configured",
    413: "The body is over HEALTHDOCK_MAX_BODY_BYTES",
    503: "The mirror database is unavailable; retry after Retry-After seconds",
}


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    code: str
    message: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ErrorEnvelope:
    """The body of every error answer."""

    success: bool
    error: ErrorDetail


def error_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """The OpenAPI description of these error answers of a route (all in the envelope)."""
    return {
        status: ResponseSpec(
            data_container=ErrorEnvelope, generate_examples=False, description=_MEANINGS[status]
        )
        for status in statuses
    }


def envelope(
    status: int,
    code: str,
    message: str,
    details: Mapping[str, object] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response[dict[str, Any]]:
    body = {"success": False, "error": {"code": code, "message": message, "details": details or {}}}
    return Response(body, status_code=status, headers=dict(headers or {}))


# FHIR's IssueType for each status we answer.
_ISSUE_TYPES = {400: "invalid", 401: "login", 403: "forbidden", 404: "not-found",
                405: "not-supported", 406: "not-supported", 413: "too-long", 429: "throttled",
                503: "transient"}  # fmt: skip
_FHIR_PATH = "/fhir"


def _is_fhir(request: Request[Any, Any, Any]) -> bool:
    path = request.scope.get("path", "")
    return path == _FHIR_PATH or path.startswith(f"{_FHIR_PATH}/")


def answer(
    request: Request[Any, Any, Any],
    status: int,
    code: str,
    message: str,
    details: Mapping[str, object] | None = None,
    headers: Mapping[str, str] | None = None,
    issue_type: str | None = None,
) -> Response[Any]:
    """The error answer in the shape the path's clients read."""
    if not _is_fhir(request):
        return envelope(status, code, message, details, headers)
    issue = issue_type or _ISSUE_TYPES.get(status, "invalid" if status < 500 else "exception")
    outcome = operation_outcome(issue, message)
    return Response(
        msgspec.json.encode(outcome),
        status_code=status,
        media_type=FHIR_JSON,
        headers=dict(headers or {}),
    )


def _search(request: Request[Any, Any, Any], error: SearchError) -> Response[Any]:
    status = 406 if isinstance(error, FormatNotAcceptable) else 400
    return answer(request, status, "INVALID_REQUEST", str(error), issue_type=error.code)


def _signature(_: Request[Any, Any, Any], error: SignatureError) -> Response[dict[str, Any]]:
    return envelope(401, "INVALID_SIGNATURE", str(error))


def _payload(_: Request[Any, Any, Any], error: PayloadError) -> Response[dict[str, Any]]:
    return envelope(400, "INVALID_REQUEST", str(error))


def _feed(request: Request[Any, Any, Any], error: FeedError) -> Response[Any]:
    return answer(request, 400, "INVALID_REQUEST", str(error))


# Quoted values in a validation message are what the client sent ("Invalid enum value 'x'").
_QUOTED = re.compile(r"'[^']*'")


def _validation(request: Request[Any, Any, Any], error: ValidationException) -> Response[Any]:
    """Litestar's message quotes the request's URL, query string and all, and a query value can
    be anything a client typed (a patient's name): name each bad parameter and its rule only."""
    problems = [
        {
            "parameter": str(item["key"]),
            # Litestar's ParamType, or "body": say "query", not "ParamType.QUERY".
            "in": str(getattr(item.get("source"), "value", item.get("source", "request"))),
            "rule": _QUOTED.sub("(value not shown)", str(item.get("message", "invalid"))),
        }
        for item in (error.extra if isinstance(error.extra, list) else [])
        if isinstance(item, dict) and "key" in item
    ]
    if problems:
        message = "; ".join(f"{p['in']} parameter {p['parameter']}: {p['rule']}" for p in problems)
        return answer(request, 400, "INVALID_REQUEST", message, {"parameters": problems})
    detail = str(error.detail)
    # "Missing required query parameter 'x' for path /...?...": the name is ours, the path not.
    if detail.startswith("Missing required "):
        return answer(request, 400, "INVALID_REQUEST", detail.partition(" for path ")[0])
    return answer(request, 400, "INVALID_REQUEST", "the request's parameters are invalid")


def _unavailable(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    return answer(
        request,
        503,
        "SERVICE_UNAVAILABLE",
        "the mirror database is unavailable; retry later",
        headers={"Retry-After": "5"},
    )


def _http(request: Request[Any, Any, Any], error: HTTPException) -> Response[Any]:
    status = error.status_code
    code = _CODES.get(status, "INVALID_REQUEST" if status < 500 else "INTERNAL_ERROR")
    message = "request body is too large" if status == 413 else str(error.detail)
    return answer(request, status, code, message, headers=error.headers)


def _internal(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    # Only the type is logged: exception text can carry request data.
    log.error("unhandled %s", type(error).__name__)
    return answer(request, 500, "INTERNAL_ERROR", "internal error")


EXCEPTION_HANDLERS: Mapping[Any, Callable[..., Response[Any]]] = {
    SignatureError: _signature,
    PayloadError: _payload,
    FeedError: _feed,
    SearchError: _search,
    ValidationException: _validation,
    DatabaseUnavailable: _unavailable,
    IntakeClosed: _unavailable,
    TimeoutError: _unavailable,
    HTTPException: _http,
    500: _internal,
}
