"""The operator console at ``/console``: server-rendered pages (Jinja2), htmx from our own
origin, charts as SVG drawn on the server. Served by the receiver (``receiver.app``); it reads
and acts through the mirror core alone.

What is named here is its public surface: the router and its template configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

from litestar import Request, Response, Router
from litestar.exceptions import HTTPException
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from mirror import DatabaseUnavailable
from receiver.console.actions import ROUTES as ACTION_ROUTES
from receiver.console.auth import (
    ConsoleForbidden,
    LoginRequired,
    LoginThrottle,
    TooManyAttempts,
    add_security_headers,
)
from receiver.console.pages import ROUTES, BadParameter, page
from receiver.console.replay import ROUTES as REPLAY_ROUTES

__all__ = ["LoginThrottle", "add_security_headers", "console_router", "template_config"]

_HERE = Path(__file__).parent


def _when(moment: Any) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M:%S}"


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0.0, float(seconds))
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def _segment(value: object) -> str:
    """One URL path segment: a record id with a '/' or '..' in it stays one segment."""
    return quote(str(value), safe="")


def _filters(engine: JinjaTemplateEngine) -> None:
    engine.engine.filters["when"] = _when
    engine.engine.filters["age"] = _age
    engine.engine.filters["segment"] = _segment


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    """The console's templates (autoescaped: stored event bodies are shown as text)."""
    return TemplateConfig(
        directory=_HERE / "templates", engine=JinjaTemplateEngine, engine_callback=_filters
    )


def _error_page(
    request: Request[Any, Any, Any], status: int, heading: str, message: str
) -> Response[Any]:
    answer = page(request, "error.html", "", heading=heading, message=message)
    answer.status_code = status
    return cast("Response[Any]", answer)  # a Template is the response


def _login_required(request: Request[Any, Any, Any], _: LoginRequired) -> Response[Any]:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    where = "/console/login?next=" + quote(target, safe="")
    if request.headers.get("hx-request") == "true":
        return Response(content=b"", status_code=200, headers={"HX-Redirect": where})
    return Redirect(where, status_code=303)


def _forbidden(request: Request[Any, Any, Any], error: ConsoleForbidden) -> Response[Any]:
    return _error_page(request, 403, "Not allowed", str(error.detail))


def _throttled(request: Request[Any, Any, Any], error: TooManyAttempts) -> Response[Any]:
    page = _error_page(request, 429, "Too many attempts", str(error.detail))
    page.headers["Retry-After"] = "300"
    return page


def _bad_parameter(request: Request[Any, Any, Any], error: BadParameter) -> Response[Any]:
    return _error_page(request, 400, "Bad request", str(error))


def _unavailable(request: Request[Any, Any, Any], _: DatabaseUnavailable) -> Response[Any]:
    page = _error_page(request, 503, "Unavailable",
                       "The database did not answer (or the audit trail could not be written): "
                       "try again in a moment.")  # fmt: skip
    page.headers["Retry-After"] = "5"
    return page


def _http_error(request: Request[Any, Any, Any], error: HTTPException) -> Response[Any]:
    status = error.status_code if 400 <= error.status_code < 500 else 500
    if status >= 500:
        return _error_page(request, status, "Error", "The request could not be served.")
    return _error_page(request, status, "Bad request", str(error.detail))


def console_router() -> Router:
    static = create_static_files_router(path="/static", directories=[_HERE / "static"],
                                        include_in_schema=False)  # fmt: skip
    return Router(
        path="/console",
        route_handlers=[*ROUTES, *REPLAY_ROUTES, *ACTION_ROUTES, static],
        exception_handlers={
            LoginRequired: _login_required,
            ConsoleForbidden: _forbidden,
            TooManyAttempts: _throttled,
            BadParameter: _bad_parameter,
            DatabaseUnavailable: _unavailable,
            HTTPException: _http_error,
        },
        include_in_schema=False,
    )
