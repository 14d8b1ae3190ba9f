"""HealthDock's OAuth 2.0 authorization server, so a client's OAuth code can be tested end to end.

The authorization code grant with PKCE (RFC 6749 §4.1; RFC 7636, S256 only), refresh tokens
with rotation and reuse detection (RFC 9700 §4.14.2), revocation (RFC 7009), the issuer in
every authorization response (RFC 9207) and server metadata (RFC 8414).

Approval is immediate: there is no user and no login page, so ``/oauth/authorize`` redirects
straight back to the client with a code. Tokens are opaque random strings with a prefix
(``hdat_``, ``hdrt_``) so a test can spot one leaking into a log. Every expiry reads the
fake's clock: tests move a :class:`~fake_healthdock.clock.ManualClock` instead of waiting.

Each authorization is a *grant*: the family of every access and refresh token issued from its
code. Code reuse, refresh-token reuse and revoking a refresh token all revoke the whole grant.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

import msgspec

from fake_healthdock.clock import Clock
from fake_healthdock.overrides import apply_overrides

if TYPE_CHECKING:
    from fake_healthdock.api import Request

SCOPES = ("patients:read", "appointments:read")
"""Every scope there is, in the order a granted scope is written; also the default."""
ACCESS_TOKEN_PREFIX = "hdat_"  # noqa: S105 -- a prefix, not a secret
REFRESH_TOKEN_PREFIX = "hdrt_"  # noqa: S105 -- likewise
CODE_PREFIX = "hdac_"  # an authorization code: spotted in a log as easily
AUTHORIZE_PATH = "/oauth/authorize"
TOKEN_PATH = "/oauth/token"  # noqa: S105 -- a path
REVOKE_PATH = "/oauth/revoke"
METADATA_PATH = "/.well-known/oauth-authorization-server"
CODE_SECONDS = 60.0
"""How long an authorization code can be exchanged (RFC 6749 §4.1.2: short-lived)."""

_FORM = "application/x-www-form-urlencoded"
_NO_STORE = [("Cache-Control", "no-store"), ("Pragma", "no-cache")]
_BASIC_CHALLENGE = 'Basic realm="HealthDock OAuth"'
# RFC 7636 §4.1 (verifier) and §4.2 (an S256 challenge is 32 bytes, base64url, no padding).
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
_S256_CHALLENGE = re.compile(r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True)
class OAuthClient:
    """A registered client. ``secret=None``: a public client (a native or browser app), which
    authenticates with nothing but its ``client_id`` and so relies on PKCE alone."""

    client_id: str
    redirect_uris: tuple[str, ...]
    """Matched exactly, character for character (RFC 9700 §4.1.3): no prefixes, no patterns."""
    secret: str | None = None

    def __post_init__(self) -> None:
        if not self.client_id:
            raise ValueError("an OAuth client needs a client_id")
        if not self.redirect_uris:
            raise ValueError(f"OAuth client {self.client_id!r} needs at least one redirect URI")
        for uri in self.redirect_uris:
            parts = urlsplit(uri)
            if not parts.scheme or not parts.netloc or parts.fragment or "#" in uri:
                raise ValueError(
                    f"redirect URI {uri!r} must be absolute and have no fragment (RFC 6749 §3.1.2)"
                )


@dataclass
class OAuthSwitches:
    """How the authorization server behaves, changeable while the fake runs."""

    access_token_seconds: float = 3600.0
    """Lifetime of access tokens issued from now on (live ones keep theirs)."""
    deny: bool = False
    """Every authorization request is refused: the redirect carries ``error=access_denied``, as
    when the user clicks "Deny"."""
    token_endpoint_status: int | None = None
    """When set (say 503), the token endpoint answers every request with this status and a
    ``temporarily_unavailable`` error body, to test a client's retries."""
    rotate_refresh_tokens: bool = True
    """A refresh hands out a new refresh token and retires the one presented (RFC 9700
    §4.14.2); off, the same refresh token is returned and stays usable."""

    def __post_init__(self) -> None:
        if not math.isfinite(self.access_token_seconds) or self.access_token_seconds <= 0:
            raise ValueError("access_token_seconds must be more than 0")
        status = self.token_endpoint_status
        if status is not None and not 400 <= status <= 599:
            raise ValueError("token_endpoint_status must be None or an HTTP error status (4xx/5xx)")

    def updated(self, changes: Mapping[str, object]) -> OAuthSwitches:
        """A copy with ``changes`` applied (unknown names and bad values raise ValueError)."""
        return apply_overrides(self, changes)


@dataclass
class OAuthStats:
    authorizations: int = 0
    """Codes issued (authorization requests that redirected with a code)."""
    codes_exchanged: int = 0
    refreshes: int = 0
    """Successful refresh-token grants."""
    invalid_grants: int = 0
    """Token endpoint answers with ``invalid_grant``."""
    reuse_detections: int = 0
    """A used code or a rotated-out refresh token presented again: its grant was revoked."""
    revocations: int = 0
    """Tokens revoked at ``/oauth/revoke`` (a refresh token's family counts once); unknown or
    already revoked tokens are not counted."""
    invalid_tokens: int = 0
    """``/v1`` requests answered 401 for an expired or revoked access token."""
    token_requests: int = 0
    """Requests to the token endpoint, whatever their answer."""


@dataclass(frozen=True)
class AccessCheck:
    """What an access token presented to ``/v1`` is worth."""

    client_id: str
    refusal: str | None
    """None for a live token; otherwise why it is refused (expired, revoked)."""


@dataclass
class Answer:
    """An OAuth endpoint's HTTP answer (``app.py`` sends it; an empty body has no type)."""

    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


class OAuthError(Exception):
    """An error in RFC 6749's shape: ``error`` is one of its codes."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status

    def answer(self) -> Answer:
        body = {"error": self.error, "error_description": self.description}
        headers = [("WWW-Authenticate", _BASIC_CHALLENGE)] if self.status == 401 else []
        return Answer(self.status, msgspec.json.encode(body), headers)


@dataclass
class _Grant:
    """One authorization and everything issued from it: a token family."""

    client_id: str
    scope: tuple[str, ...]
    revoked: bool = False


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    scope: tuple[str, ...]
    expires_at: float
    grant: _Grant | None = None
    """Set when exchanged: a second exchange finds the grant to revoke."""


@dataclass
class _AccessToken:
    grant: _Grant
    scope: tuple[str, ...]
    expires_at: float
    revoked: bool = False


@dataclass
class _RefreshToken:
    grant: _Grant
    """Its scope is always the grant's: narrowing on refresh narrows only the access token."""
    used: bool = False
    """Rotated out: presenting it again is reuse."""


class OAuthServer:
    """The authorization server's state: clients, codes, token families, switches, stats."""

    def __init__(
        self,
        clients: Sequence[OAuthClient],
        clock: Clock,
        switches: OAuthSwitches | None = None,
    ) -> None:
        self.clients = {client.client_id: client for client in clients}
        if len(self.clients) != len(clients):
            raise ValueError("OAuth client ids must be unique")
        self.switches = switches or OAuthSwitches()
        self.stats = OAuthStats()
        self._clock = clock
        self._codes: dict[str, _Code] = {}
        self._access_tokens: dict[str, _AccessToken] = {}
        self._refresh_tokens: dict[str, _RefreshToken] = {}

    # What the /v1 API asks.

    def check(self, token: str) -> AccessCheck | None:
        """None when ``token`` is no access token of ours (an API key, say)."""
        access = self._access_tokens.get(token)
        if access is None:
            return None
        refusal = None
        if access.revoked or access.grant.revoked:
            refusal = "The access token has been revoked"
        elif self._clock() >= access.expires_at:
            refusal = "The access token has expired"
        return AccessCheck(access.grant.client_id, refusal)

    def expire_access_tokens(self) -> int:
        """Every live access token expires now (refresh tokens are untouched); how many."""
        now = self._clock()
        expired = 0
        for access in self._access_tokens.values():
            if access.expires_at > now and not access.revoked and not access.grant.revoked:
                access.expires_at = now
                expired += 1
        return expired

    # The endpoints' rules; errors raise OAuthError.

    def authorize(self, query: Mapping[str, str], issuer: str) -> str:
        """The ``Location`` to redirect to. Raises OAuthError (answered 400, never redirected)
        when the client or its redirect URI is unknown: redirecting then would make the server
        an open redirector (RFC 6749 §4.1.2.1)."""
        params = _present(query)
        client = self.clients.get(params.get("client_id", ""))
        if client is None:
            raise OAuthError("invalid_request", "Unknown client_id")
        redirect_uri = params.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            raise OAuthError(
                "invalid_request", "redirect_uri is missing or not registered for this client"
            )
        state = params.get("state")
        try:
            code = self._issue_code(client, redirect_uri, params)
        except OAuthError as error:
            reply = {"error": error.error, "error_description": error.description}
            return _location(redirect_uri, {**reply, "state": state, "iss": issuer})
        self.stats.authorizations += 1
        return _location(redirect_uri, {"code": code, "state": state, "iss": issuer})

    def authenticate(self, form: Mapping[str, str], authorization: str) -> OAuthClient:
        """The client making a token or revocation request (RFC 6749 §2.3.1): Basic or the
        form's ``client_secret`` for a confidential client, ``client_id`` for a public one."""
        client_id, secret = _credentials(form, authorization)
        client = self.clients.get(client_id)
        if client is None:
            raise _invalid_client("Unknown client")
        if client.secret is None:
            if secret:
                raise _invalid_client("A public client has no secret")
        elif secret is None or not hmac.compare_digest(secret.encode(), client.secret.encode()):
            raise _invalid_client("Client authentication failed")
        return client

    def grant(self, client: OAuthClient, form: Mapping[str, str]) -> dict[str, object]:
        """The token response for a token request (RFC 6749 §5.1)."""
        grant_type = _required(form, "grant_type")
        if grant_type == "authorization_code":
            return self._exchange(client, form)
        if grant_type == "refresh_token":
            return self._refresh(client, form)
        raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")

    def revoke(self, client: OAuthClient, token: str) -> None:
        """RFC 7009: a refresh token takes its family with it, an access token goes alone.
        Unknown tokens and other clients' tokens are left be, silently (§2.2)."""
        refresh = self._refresh_tokens.get(token)
        if refresh is not None and refresh.grant.client_id == client.client_id:
            if not refresh.grant.revoked:
                refresh.grant.revoked = True
                self.stats.revocations += 1
            return
        access = self._access_tokens.get(token)
        if access is None or access.grant.client_id != client.client_id:
            return
        if not access.revoked and not access.grant.revoked:
            access.revoked = True
            self.stats.revocations += 1

    def metadata(self, issuer: str) -> dict[str, object]:
        """RFC 8414 server metadata, so a client can be configured from the issuer alone."""
        auth_methods = ["client_secret_basic", "client_secret_post", "none"]
        return {
            "issuer": issuer,
            "authorization_endpoint": issuer + AUTHORIZE_PATH,
            "token_endpoint": issuer + TOKEN_PATH,
            "revocation_endpoint": issuer + REVOKE_PATH,
            "scopes_supported": list(SCOPES),
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": auth_methods,
            "revocation_endpoint_auth_methods_supported": auth_methods,
            "authorization_response_iss_parameter_supported": True,
        }

    def _issue_code(self, client: OAuthClient, redirect_uri: str, params: Mapping[str, str]) -> str:
        if params.get("response_type") != "code":
            raise OAuthError("unsupported_response_type", "Only response_type=code is supported")
        challenge = params.get("code_challenge")
        if challenge is None or params.get("code_challenge_method") != "S256":
            raise OAuthError("invalid_request", "PKCE is required: a code_challenge, method S256")
        if not _S256_CHALLENGE.fullmatch(challenge):
            raise OAuthError(
                "invalid_request", "code_challenge must be 43 base64url characters, no padding"
            )
        scope = _scope(params.get("scope"))
        if self.switches.deny:
            raise OAuthError("access_denied", "The resource owner denied the request")
        code = _new_token(CODE_PREFIX)
        self._codes[code] = _Code(
            client_id=client.client_id,
            redirect_uri=redirect_uri,
            challenge=challenge,
            scope=scope,
            expires_at=self._clock() + CODE_SECONDS,
        )
        return code

    def _exchange(self, client: OAuthClient, form: Mapping[str, str]) -> dict[str, object]:
        code = self._codes.get(_required(form, "code"))
        if code is None or code.client_id != client.client_id:
            raise _invalid_grant("Unknown authorization code")
        if code.grant is not None:
            # RFC 6749 §4.1.2: a code presented twice may have been stolen; what it gave goes.
            code.grant.revoked = True
            self.stats.reuse_detections += 1
            raise _invalid_grant("The authorization code was already used; its tokens are revoked")
        if self._clock() >= code.expires_at:
            raise _invalid_grant("The authorization code has expired")
        if form.get("redirect_uri") != code.redirect_uri:
            raise _invalid_grant("redirect_uri differs from the authorization request's")
        if not _verifies(form.get("code_verifier"), code.challenge):
            raise _invalid_grant("code_verifier does not match the code_challenge")
        code.grant = _Grant(client.client_id, code.scope)
        self.stats.codes_exchanged += 1
        return self._issue_tokens(code.grant, code.scope, presented=None)

    def _refresh(self, client: OAuthClient, form: Mapping[str, str]) -> dict[str, object]:
        presented = _required(form, "refresh_token")
        refresh = self._refresh_tokens.get(presented)
        if refresh is None or refresh.grant.client_id != client.client_id:
            raise _invalid_grant("Unknown refresh token")
        if refresh.grant.revoked:
            raise _invalid_grant("The refresh token has been revoked")
        if refresh.used:
            # RFC 9700 §4.14.2: the legitimate client or an attacker holds a newer one; which
            # is which cannot be told, so the whole family goes.
            refresh.grant.revoked = True
            self.stats.reuse_detections += 1
            raise _invalid_grant("The refresh token was already used; its family is revoked")
        scope = refresh.grant.scope
        if "scope" in form:
            scope = _scope(form["scope"])
            if not set(scope) <= set(refresh.grant.scope):
                raise OAuthError("invalid_scope", "A refresh may only narrow the granted scope")
        self.stats.refreshes += 1
        return self._issue_tokens(refresh.grant, scope, presented=presented)

    def _issue_tokens(
        self, grant: _Grant, scope: tuple[str, ...], *, presented: str | None
    ) -> dict[str, object]:
        seconds = self.switches.access_token_seconds
        access = _new_token(ACCESS_TOKEN_PREFIX)
        self._access_tokens[access] = _AccessToken(grant, scope, self._clock() + seconds)
        refresh = presented
        if refresh is None or self.switches.rotate_refresh_tokens:
            if refresh is not None:
                self._refresh_tokens[refresh].used = True
            refresh = _new_token(REFRESH_TOKEN_PREFIX)
            self._refresh_tokens[refresh] = _RefreshToken(grant)
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": math.ceil(seconds),
            "refresh_token": refresh,
            "scope": " ".join(scope),
        }


# The HTTP face of the endpoints.


def handle(server: OAuthServer, request: Request, issuer: str) -> Answer:
    """Answer a request for one of :data:`PATHS`; ``issuer`` is the origin it was sent to."""
    method, endpoint = _ENDPOINTS[request.path]
    if request.method != method:
        answer = OAuthError("invalid_request", f"Use {method} here", status=405).answer()
        answer.headers.append(("Allow", method))
        return answer
    return endpoint(server, request, issuer)


def _authorize_endpoint(server: OAuthServer, request: Request, issuer: str) -> Answer:
    try:
        location = server.authorize(request.query, issuer)
    except OAuthError as error:
        return error.answer()
    return Answer(302, headers=[("Location", location), *_NO_STORE])


def _token_endpoint(server: OAuthServer, request: Request, issuer: str) -> Answer:
    server.stats.token_requests += 1
    status = server.switches.token_endpoint_status
    try:
        if status is not None:
            raise OAuthError("temporarily_unavailable", "Please retry later", status=status)
        form = _form(request)
        client = server.authenticate(form, request.headers.get("authorization", ""))
        answer = Answer(200, msgspec.json.encode(server.grant(client, form)))
    except OAuthError as error:
        if error.error == "invalid_grant":
            server.stats.invalid_grants += 1
        answer = error.answer()
    answer.headers.extend(_NO_STORE)
    return answer


def _revoke_endpoint(server: OAuthServer, request: Request, issuer: str) -> Answer:
    try:
        form = _form(request)
        client = server.authenticate(form, request.headers.get("authorization", ""))
        # token_type_hint is only a hint (RFC 7009 §2.1): both kinds are searched anyway.
        server.revoke(client, _required(form, "token"))
        answer = Answer(200)
    except OAuthError as error:
        answer = error.answer()
    answer.headers.extend(_NO_STORE)
    return answer


def _metadata_endpoint(server: OAuthServer, request: Request, issuer: str) -> Answer:
    return Answer(200, msgspec.json.encode(server.metadata(issuer)))


_Endpoint = Callable[[OAuthServer, "Request", str], Answer]
_ENDPOINTS: dict[str, tuple[str, _Endpoint]] = {
    AUTHORIZE_PATH: ("GET", _authorize_endpoint),
    TOKEN_PATH: ("POST", _token_endpoint),
    REVOKE_PATH: ("POST", _revoke_endpoint),
    METADATA_PATH: ("GET", _metadata_endpoint),
}
PATHS = frozenset(_ENDPOINTS)
"""The paths :func:`handle` answers."""


def _form(request: Request) -> dict[str, str]:
    """The body's parameters; blank ones count as absent, repeated ones are refused (RFC 6749
    §3.1, §3.2)."""
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != _FORM:
        raise OAuthError("invalid_request", f"The body must be {_FORM}")
    try:
        pairs = parse_qsl(request.body.decode("ascii"), strict_parsing=True, errors="strict")
    except ValueError:  # non-ASCII bytes, a field with no "=", bad UTF-8 once unquoted
        raise OAuthError("invalid_request", "The body is not a valid form") from None
    form = dict(pairs)
    if len(form) != len(pairs):
        raise OAuthError("invalid_request", "A parameter is repeated")
    return form


def _credentials(form: Mapping[str, str], authorization: str) -> tuple[str, str | None]:
    """(client_id, secret or None), from the Authorization header or else the form."""
    if not authorization:
        if "client_id" not in form:
            raise _invalid_client("Client authentication is required")
        return form["client_id"], form.get("client_secret")
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        raise _invalid_client("Only HTTP Basic client authentication is supported")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except ValueError:  # bad base64 (binascii.Error) or bad UTF-8
        raise _invalid_client("Malformed Basic credentials") from None
    encoded_id, colon, encoded_secret = decoded.partition(":")
    if not colon:
        raise _invalid_client("Malformed Basic credentials")
    if "client_secret" in form:
        raise OAuthError("invalid_request", "Use one client authentication method, not two")
    # RFC 6749 §2.3.1: both halves are form-encoded before they are joined.
    client_id, secret = unquote_plus(encoded_id), unquote_plus(encoded_secret)
    if form.get("client_id", client_id) != client_id:
        raise OAuthError("invalid_request", "client_id differs from the Basic credentials'")
    return client_id, secret


def _present(query: Mapping[str, str]) -> dict[str, str]:
    """The parameters with a value: blank ones count as absent (RFC 6749 §3.1)."""
    return {name: value for name, value in query.items() if value}


def _required(form: Mapping[str, str], name: str) -> str:
    value = form.get(name)
    if value is None:
        raise OAuthError("invalid_request", f"Missing parameter: {name}")
    return value


def _scope(text: str | None) -> tuple[str, ...]:
    """The scopes asked for, in :data:`SCOPES` order; all of them when none are."""
    asked = set((text or "").split())
    unknown = asked - set(SCOPES)
    if unknown:
        raise OAuthError("invalid_scope", f"Unknown scope: {' '.join(sorted(unknown))}")
    return tuple(scope for scope in SCOPES if scope in asked) if asked else SCOPES


def _verifies(verifier: str | None, challenge: str) -> bool:
    """RFC 7636 §4.6: BASE64URL(SHA256(verifier)) equals the challenge, compared in constant
    time."""
    if verifier is None or not _VERIFIER.fullmatch(verifier):
        return False
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    computed = base64.urlsafe_b64encode(digest).rstrip(b"=")
    return hmac.compare_digest(computed, challenge.encode("ascii"))


def _location(redirect_uri: str, params: Mapping[str, str | None]) -> str:
    """``redirect_uri`` with ``params`` (the None ones left out) added to any query it has."""
    parts = urlsplit(redirect_uri)
    added = urlencode({name: value for name, value in params.items() if value is not None})
    query = f"{parts.query}&{added}" if parts.query else added
    return urlunsplit(parts._replace(query=query))


def _new_token(prefix: str) -> str:
    return prefix + secrets.token_urlsafe(32)  # 256 random bits: opaque, unguessable


def _invalid_client(description: str) -> OAuthError:
    return OAuthError("invalid_client", description, status=401)


def _invalid_grant(description: str) -> OAuthError:
    return OAuthError("invalid_grant", description)
