"""``GET /oauth/callback``: where HealthDock sends the browser back after an authorization.

It carries the callback to the waiting ``healthdock-mirror oauth login`` through the database
(``mirror.oauth``): the login with this ``state`` is completed once, and the login exchanges
the code. Without a login waiting for this state (forged, replayed, expired) the callback is
refused and changes nothing: that is the CSRF check of RFC 6749 10.12. The code alone is
worthless: the PKCE verifier never left the login's process.

The receiver serves it, and so does a login's own one-shot listener when no receiver runs
(``callback_app``). Its page loads nothing, is never cached and sends no referrer (the URL
holds the code).
"""

from __future__ import annotations

import functools
import html
from typing import Annotated, Any

from litestar import Litestar, MediaType, Request, Response, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import QueryParameter
from sqlalchemy import Engine

from config import OAUTH_CALLBACK_PATH
from mirror import DatabaseUnavailable, oauth, write_transaction
from receiver.errors import EXCEPTION_HANDLERS

CALLBACK_PATH = OAUTH_CALLBACK_PATH
_MAX_PARAMETER = 2048
_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def _page(status: int, title: str, message: str) -> Response[str]:
    body = (
        "<!doctype html><html lang=en><meta charset=utf-8>"
        f"<title>healthdock-mirror: {html.escape(title)}</title>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p></html>"
    )
    return Response(body, status_code=status, media_type="text/html", headers=_HEADERS)


def _parameter(request: Request[Any, Any, Any], name: str) -> str | None:
    values = request.query_params.getall(name, [])
    if len(values) != 1:
        return None  # absent, or repeated: a well-formed callback sends each once
    value = str(values[0])
    if not value or len(value) > _MAX_PARAMETER or not value.isascii() or not value.isprintable():
        return None
    return value


_State = Annotated[
    str | None, QueryParameter(name="state", description="the login's state, as it sent it")
]
_Code = Annotated[
    str | None, QueryParameter(name="code", description="the code, when HealthDock authorized")
]
_Error = Annotated[
    str | None, QueryParameter(name="error", description="HealthDock's error code, if it did not")
]
_Issuer = Annotated[
    str | None, QueryParameter(name="iss", description="the authorization server (RFC 9207)")
]


@get(
    CALLBACK_PATH,
    summary="Where HealthDock returns after `healthdock-mirror oauth login`",
    description=(
        "The OAuth 2.0 redirect URI (RFC 6749 4.1.2): completes the waiting login whose "
        "`state` this is, once. No login waiting for it (forged, replayed, expired): `400`."
    ),
    tags=["operations"],
    media_type=MediaType.HTML,
    responses={
        400: ResponseSpec(
            data_container=str,
            media_type=MediaType.HTML,
            description="not a callback, or no login is waiting for this state",
        ),
        503: ResponseSpec(
            data_container=str,
            media_type=MediaType.HTML,
            description="the database is not answering: reload the page soon",
        ),
    },
    sync_to_thread=True,
)
def oauth_callback(
    request: Request[Any, Any, Any],
    state_: _State = None,
    code_: _Code = None,
    error_: _Error = None,
    iss_: _Issuer = None,
) -> Response[str]:
    # Declared above for the OpenAPI document; read here from the query itself, so that every
    # refusal is this page (a repeated, oversized or unprintable value included).
    del state_, code_, error_, iss_
    state = _parameter(request, "state")
    code = _parameter(request, "code")
    error = _parameter(request, "error")
    if error is not None and oauth.error_code(error) is None:
        error = "invalid_error_code"
    if state is None or (code is None) == (error is None):
        return _page(400, "Not a callback", "This address takes HealthDock's redirect only.")
    callback = oauth.LoginCallback(code, error, _parameter(request, "iss"))
    engine: Engine = request.app.state.engine
    complete = functools.partial(oauth.complete_login, state=state, callback=callback)
    try:
        completed = write_transaction(engine, complete)
    except DatabaseUnavailable:
        return _page(503, "Try again", "The mirror's database is not answering: reload soon.")
    if not completed:
        return _page(
            400, "No login is waiting",
            "This sign-in is unknown, expired or already done: run healthdock-mirror oauth "
            "login again.",
        )  # fmt: skip
    if error is not None:
        return _page(200, "Not authorized", f"HealthDock answered {error}. You can close this.")
    return _page(200, "Authorized", "healthdock-mirror has the authorization: close this window.")


def callback_app(engine: Engine) -> Litestar:
    """The callback alone: a login's one-shot listener when the receiver is not running."""
    app = Litestar(
        route_handlers=[oauth_callback],
        exception_handlers=dict(EXCEPTION_HANDLERS),
        openapi_config=None,
        debug=False,
        logging_config=None,
    )
    app.state.engine = engine
    return app
