"""The OAuth 2.0 authorization server at /oauth/, driven as a client would drive it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit, urlunsplit

import httpx
import pytest

from fake_healthdock import FakeHealthDock, ManualClock, OAuthClient
from tests.fake_healthdock.harness import API_KEY, MakeFake, client

ROOT = Path(__file__).resolve().parents[2]
ISSUER = "http://healthdock.test"  # the harness's base URL
APP_CALLBACK = "http://127.0.0.1:8765/callback"
PUBLIC = OAuthClient("mirror-cli", (APP_CALLBACK,))
SERVER_CALLBACK = "https://mirror.example/oauth/callback?tenant=7"
OTHER_CALLBACK = "https://mirror.example/other"
CONFIDENTIAL = OAuthClient("mirror-server", (OTHER_CALLBACK, SERVER_CALLBACK), secret="s3cr3t")
# RFC 7636 Appendix B: a verifier and its S256 challenge, worked out by the RFC, not by us.
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
CHALLENGE = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}
T = TypeVar("T")


def run(scenario: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(scenario)


@pytest.fixture
def fake(make_fake: MakeFake) -> FakeHealthDock:
    return make_fake(oauth_clients=[PUBLIC, CONFIDENTIAL])


def pkce() -> tuple[str, str]:
    """A fresh (verifier, S256 challenge), as a client makes one."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


async def authorize(
    api: httpx.AsyncClient, oauth_client: OAuthClient = PUBLIC, **params: str | None
) -> httpx.Response:
    """An authorization request; a None parameter is left out."""
    query: dict[str, str | None] = {
        "response_type": "code",
        "client_id": oauth_client.client_id,
        "redirect_uri": oauth_client.redirect_uris[-1],
        "state": "st-1",
        "code_challenge": CHALLENGE,
        "code_challenge_method": "S256",
        **params,
    }
    sent = {name: value for name, value in query.items() if value is not None}
    return await api.get("/oauth/authorize", params=sent)


def redirected(response: httpx.Response) -> tuple[str, dict[str, str]]:
    """Where a 302 sends the browser: the URI without its query, and the query."""
    assert response.status_code == 302, response.text
    parts = urlsplit(response.headers["location"])
    query = parse_qs(parts.query, strict_parsing=True)
    assert all(len(values) == 1 for values in query.values())
    return urlunsplit(parts._replace(query="")), {name: v[0] for name, v in query.items()}


async def token_request(
    api: httpx.AsyncClient, oauth_client: OAuthClient, **form: str | None
) -> httpx.Response:
    """A token request as ``oauth_client`` makes it: Basic when it has a secret, else its id."""
    data = {name: value for name, value in form.items() if value is not None}
    if oauth_client.secret is None:
        return await api.post("/oauth/token", data={"client_id": oauth_client.client_id, **data})
    credentials = (oauth_client.client_id, oauth_client.secret)
    return await api.post("/oauth/token", data=data, auth=credentials)


async def exchange(
    api: httpx.AsyncClient, code: str, oauth_client: OAuthClient = PUBLIC, **form: str | None
) -> httpx.Response:
    fields: dict[str, str | None] = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": oauth_client.redirect_uris[-1],
        "code_verifier": VERIFIER,
        **form,
    }
    return await token_request(api, oauth_client, **fields)


async def refresh(
    api: httpx.AsyncClient,
    refresh_token: str,
    oauth_client: OAuthClient = PUBLIC,
    **form: str | None,
) -> httpx.Response:
    fields = {"grant_type": "refresh_token", "refresh_token": refresh_token, **form}
    return await token_request(api, oauth_client, **fields)


async def code_for(
    api: httpx.AsyncClient, oauth_client: OAuthClient = PUBLIC, **params: str | None
) -> str:
    _, query = redirected(await authorize(api, oauth_client, **params))
    return query["code"]


async def login(
    api: httpx.AsyncClient, oauth_client: OAuthClient = PUBLIC, **params: str | None
) -> dict[str, Any]:
    """The whole code flow; the token response."""
    response = await exchange(api, await code_for(api, oauth_client, **params), oauth_client)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def patients(api: httpx.AsyncClient, bearer: str) -> httpx.Response:
    return await api.get("/v1/patients", headers={"Authorization": f"Bearer {bearer}"})


def oauth_error(response: httpx.Response) -> str:
    """The RFC 6749 §5.2 error code of a refusal."""
    body = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error_description"]
    return body["error"]  # type: ignore[no-any-return]


def invalid_token(response: httpx.Response) -> bool:
    """A 401 for a dead access token: the reference's envelope and RFC 6750's challenge."""
    return (
        response.status_code == 401
        and response.json()["error"]["code"] == "UNAUTHORIZED"
        and response.headers.get("www-authenticate") == 'Bearer error="invalid_token"'
    )


def test_a_public_client_gets_tokens_with_pkce_and_reads_the_api(fake: FakeHealthDock) -> None:
    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with client(fake, api_key=None) as api:
            redirect = await authorize(api, state="xyz")
            _, query = redirected(redirect)
            tokens = await exchange(api, query["code"])
            listing = await patients(api, tokens.json()["access_token"])
            return redirect, tokens, listing

    redirect, tokens, listing = run(scenario())
    callback, query = redirected(redirect)
    assert callback == APP_CALLBACK
    assert set(query) == {"code", "state", "iss"}
    assert (query["state"], query["iss"]) == ("xyz", ISSUER)
    assert tokens.status_code == 200
    assert {name: tokens.headers[name] for name in NO_STORE} == NO_STORE
    body = tokens.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    assert (body["token_type"], body["expires_in"]) == ("Bearer", 3600)
    assert body["scope"] == "patients:read appointments:read"
    assert body["access_token"].startswith("hdat_")
    assert body["refresh_token"].startswith("hdrt_")
    assert min(len(body["access_token"]), len(body["refresh_token"])) > 40
    assert listing.status_code == 200
    assert listing.json()["data"]["patients"][0]["id"] == next(fake.patients()).id


def test_a_confidential_client_authenticates_with_basic_or_in_the_form(
    fake: FakeHealthDock,
) -> None:
    verifier, challenge = pkce()

    async def scenario() -> tuple[httpx.Response, list[httpx.Response]]:
        async with client(fake, api_key=None) as api:
            redirect = await authorize(api, CONFIDENTIAL, code_challenge=challenge)
            _, query = redirected(redirect)
            code = query["code"]
            grant = {"grant_type": "authorization_code", "code": code}
            refusals = [
                await exchange(api, code, PUBLIC, code_verifier=verifier),  # not its code
                await api.post("/oauth/token", data={**grant, "client_id": "mirror-server"}),
                await api.post("/oauth/token", data=grant, auth=("mirror-server", "wrong")),
            ]
            basic = await exchange(api, code, CONFIDENTIAL, code_verifier=verifier)
            posted = await api.post(
                "/oauth/token",
                data={
                    "grant_type": "authorization_code",
                    "code": await code_for(api, CONFIDENTIAL),
                    "redirect_uri": SERVER_CALLBACK,
                    "code_verifier": VERIFIER,
                    "client_id": CONFIDENTIAL.client_id,
                    "client_secret": "s3cr3t",
                },
            )
            assert (basic.status_code, posted.status_code) == (200, 200), posted.text
            return redirect, refusals

    redirect, (foreign, secretless, wrong) = run(scenario())
    callback, query = redirected(redirect)
    assert callback == "https://mirror.example/oauth/callback"
    assert query["tenant"] == "7"  # the registered URI's own query is kept
    assert "code" in query
    assert (foreign.status_code, oauth_error(foreign)) == (400, "invalid_grant")
    for refusal in (secretless, wrong):
        assert (refusal.status_code, oauth_error(refusal)) == (401, "invalid_client")
        assert refusal.headers["www-authenticate"].startswith("Basic")
        assert {name: refusal.headers[name] for name in NO_STORE} == NO_STORE


@pytest.mark.parametrize(
    "params",
    [
        {"client_id": "someone-else"},
        {"client_id": None},
        {"redirect_uri": None},
        {"redirect_uri": "http://attacker.example/callback"},
        {"redirect_uri": APP_CALLBACK + "/more"},  # a prefix match is no match
        {"redirect_uri": APP_CALLBACK.upper()},
        {"redirect_uri": SERVER_CALLBACK},  # another client's
    ],
)
def test_unknown_clients_and_redirect_uris_get_a_400_never_a_redirect(
    fake: FakeHealthDock, params: dict[str, str | None]
) -> None:
    async def scenario() -> httpx.Response:
        async with client(fake, api_key=None) as api:
            return await authorize(api, **params)

    response = run(scenario())
    assert response.status_code == 400
    assert "location" not in response.headers
    assert oauth_error(response) == "invalid_request"
    assert fake.oauth.stats.authorizations == 0


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"response_type": None}, "unsupported_response_type"),
        ({"code_challenge": None}, "invalid_request"),
        ({"code_challenge_method": None}, "invalid_request"),  # plain, by default
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": CHALLENGE + "="}, "invalid_request"),  # padded
        ({"scope": "patients:read patients:write"}, "invalid_scope"),
    ],
)
def test_other_authorization_errors_go_back_to_the_client_with_its_state(
    fake: FakeHealthDock, params: dict[str, str | None], error: str
) -> None:
    async def scenario() -> httpx.Response:
        async with client(fake, api_key=None) as api:
            return await authorize(api, **params)

    callback, query = redirected(run(scenario()))
    assert callback == APP_CALLBACK
    assert query["error"] == error
    assert query["error_description"]
    assert (query["state"], query["iss"]) == ("st-1", ISSUER)
    assert "code" not in query
    assert fake.oauth.stats.authorizations == 0


def test_the_deny_switch_answers_access_denied(fake: FakeHealthDock) -> None:
    async def scenario() -> list[httpx.Response]:
        async with client(fake, api_key=None) as api:
            switched = await api.put("/_fake/oauth", json={"deny": True})
            denied = await authorize(api, CONFIDENTIAL)
            await api.put("/_fake/oauth", json={"deny": False})
            return [switched, denied, await authorize(api, CONFIDENTIAL)]

    switched, denied, approved = run(scenario())
    assert switched.json()["data"]["switches"]["deny"] is True
    _, query = redirected(denied)
    assert (query["error"], query["state"], query["tenant"]) == ("access_denied", "st-1", "7")
    assert "code" in redirected(approved)[1]


def test_a_code_is_bound_to_its_verifier_redirect_uri_and_client(fake: FakeHealthDock) -> None:
    other_verifier, _ = pkce()

    async def scenario() -> tuple[list[httpx.Response], httpx.Response]:
        async with client(fake, api_key=None) as api:
            code = await code_for(api, CONFIDENTIAL)
            refusals = [
                await exchange(api, code, CONFIDENTIAL, code_verifier=other_verifier),
                await exchange(api, code, CONFIDENTIAL, code_verifier=None),
                await exchange(api, code, CONFIDENTIAL, redirect_uri=OTHER_CALLBACK),
                await exchange(api, code, CONFIDENTIAL, redirect_uri=None),
                await exchange(api, "not-a-code", CONFIDENTIAL),
            ]
            # Failed attempts do not use the code up: the rightful exchange still works.
            return refusals, await exchange(api, code, CONFIDENTIAL)

    refusals, rightful = run(scenario())
    assert [(r.status_code, oauth_error(r)) for r in refusals] == [(400, "invalid_grant")] * 5
    assert all(r.headers["cache-control"] == "no-store" for r in refusals)
    assert rightful.status_code == 200
    assert fake.oauth.stats.invalid_grants == 5


def test_a_code_expires_after_a_minute(make_fake: MakeFake, clock: ManualClock) -> None:
    fake = make_fake(oauth_clients=[PUBLIC])

    async def scenario() -> list[httpx.Response]:
        async with client(fake, api_key=None) as api:
            early = await code_for(api)
            clock.advance(59.9)
            answers = [await exchange(api, early)]
            late = await code_for(api)
            clock.advance(60.0)
            return [*answers, await exchange(api, late)]

    in_time, too_late = run(scenario())
    assert in_time.status_code == 200
    assert (too_late.status_code, oauth_error(too_late)) == (400, "invalid_grant")


def test_a_reused_code_is_refused_and_what_it_gave_is_revoked(fake: FakeHealthDock) -> None:
    async def scenario() -> list[httpx.Response]:
        async with client(fake, api_key=None) as api:
            code = await code_for(api)
            tokens = (await exchange(api, code)).json()
            return [
                await patients(api, tokens["access_token"]),
                await exchange(api, code),
                await patients(api, tokens["access_token"]),
                await refresh(api, tokens["refresh_token"]),
            ]

    before, reused, after, refreshed = run(scenario())
    assert before.status_code == 200
    assert (reused.status_code, oauth_error(reused)) == (400, "invalid_grant")
    assert invalid_token(after)
    assert (refreshed.status_code, oauth_error(refreshed)) == (400, "invalid_grant")
    assert fake.oauth.stats.reuse_detections == 1


def test_refresh_rotates_and_an_old_refresh_token_revokes_its_family(
    fake: FakeHealthDock,
) -> None:
    async def scenario() -> dict[str, Any]:
        async with client(fake, api_key=None) as api:
            first = await login(api)
            other = await login(api)  # another authorization: another family
            second = (await refresh(api, first["refresh_token"])).json()
            while_fresh = [
                await patients(api, first["access_token"]),
                await patients(api, second["access_token"]),
            ]
            reused = await refresh(api, first["refresh_token"])
            return {
                "first": first,
                "second": second,
                "while_fresh": while_fresh,
                "reused": reused,
                "after": [
                    await patients(api, first["access_token"]),
                    await patients(api, second["access_token"]),
                ],
                "newest_refresh": await refresh(api, second["refresh_token"]),
                "other": await patients(api, other["access_token"]),
            }

    seen = run(scenario())
    first, second = seen["first"], seen["second"]
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert second["refresh_token"].startswith("hdrt_")
    assert [r.status_code for r in seen["while_fresh"]] == [200, 200]
    assert (seen["reused"].status_code, oauth_error(seen["reused"])) == (400, "invalid_grant")
    assert all(invalid_token(r) for r in seen["after"])
    assert oauth_error(seen["newest_refresh"]) == "invalid_grant"
    assert seen["other"].status_code == 200
    assert (fake.oauth.stats.refreshes, fake.oauth.stats.reuse_detections) == (1, 1)


def test_without_rotation_the_refresh_token_is_kept(make_fake: MakeFake) -> None:
    fake = make_fake(oauth_clients=[PUBLIC], rotate_refresh_tokens=False)

    async def scenario() -> tuple[str, list[httpx.Response]]:
        async with client(fake, api_key=None) as api:
            tokens = await login(api)
            refreshes = [await refresh(api, tokens["refresh_token"]) for _ in range(2)]
            return tokens["refresh_token"], refreshes

    kept, refreshes = run(scenario())
    assert [r.status_code for r in refreshes] == [200, 200]
    assert [r.json()["refresh_token"] for r in refreshes] == [kept, kept]
    assert fake.oauth.stats.reuse_detections == 0


def test_a_refresh_may_narrow_the_scope_but_never_widen_it(fake: FakeHealthDock) -> None:
    async def scenario() -> list[httpx.Response]:
        async with client(fake, api_key=None) as api:
            full = await login(api)
            narrowed = await refresh(api, full["refresh_token"], scope="patients:read")
            narrow = await login(api, scope="appointments:read")
            return [
                narrowed,
                await refresh(api, narrowed.json()["refresh_token"]),
                await refresh(api, narrow["refresh_token"], scope="patients:read"),
                await refresh(api, narrow["refresh_token"], scope="patients:write"),
            ]

    narrowed, unnarrowed, widened, unknown = run(scenario())
    assert narrowed.json()["scope"] == "patients:read"
    # The new refresh token keeps the grant's scope: only that access token was narrowed.
    assert unnarrowed.json()["scope"] == "patients:read appointments:read"
    assert (widened.status_code, oauth_error(widened)) == (400, "invalid_scope")
    assert oauth_error(unknown) == "invalid_scope"


def test_a_refresh_token_belongs_to_its_client(fake: FakeHealthDock) -> None:
    async def scenario() -> list[httpx.Response]:
        async with client(fake, api_key=None) as api:
            tokens = await login(api)
            return [
                await refresh(api, tokens["refresh_token"], CONFIDENTIAL),
                await refresh(api, tokens["refresh_token"]),
            ]

    stolen, own = run(scenario())
    assert (stolen.status_code, oauth_error(stolen)) == (400, "invalid_grant")
    assert own.status_code == 200  # a foreign attempt does not revoke the rightful family


def test_an_expired_access_token_gets_401_while_the_api_key_works(
    make_fake: MakeFake, clock: ManualClock
) -> None:
    fake = make_fake(oauth_clients=[PUBLIC], access_token_seconds=30)

    async def scenario() -> dict[str, Any]:
        async with client(fake, api_key=None) as api:
            tokens = await login(api)
            clock.advance(29.9)
            live = await patients(api, tokens["access_token"])
            clock.advance(0.1)
            expired = await patients(api, tokens["access_token"])
            renewed = (await refresh(api, tokens["refresh_token"])).json()
            return {
                "tokens": tokens,
                "live": live,
                "expired": expired,
                "key": await patients(api, API_KEY),
                "bad_key": await patients(api, "not-the-key"),
                "renewed": await patients(api, renewed["access_token"]),
            }

    seen = run(scenario())
    assert seen["tokens"]["expires_in"] == 30
    assert seen["live"].status_code == 200
    assert invalid_token(seen["expired"])
    assert seen["key"].status_code == 200
    assert seen["bad_key"].status_code == 401
    assert "www-authenticate" not in seen["bad_key"].headers  # a bad key is no OAuth matter
    assert seen["renewed"].status_code == 200
    assert fake.oauth.stats.invalid_tokens == 1
    assert fake.stats.unauthorized == 2


def test_expiring_every_access_token_from_the_control_endpoint(fake: FakeHealthDock) -> None:
    async def scenario() -> dict[str, Any]:
        async with client(fake, api_key=None) as api:
            public, confidential = await login(api), await login(api, CONFIDENTIAL)
            expire = await api.post("/_fake/oauth/expire")
            renewed = await refresh(api, public["refresh_token"])
            return {
                "expire": expire,
                "dead": [
                    await patients(api, public["access_token"]),
                    await patients(api, confidential["access_token"]),
                ],
                "renewed": renewed,
                "works": await patients(api, renewed.json()["access_token"]),
            }

    seen = run(scenario())
    assert seen["expire"].json()["data"] == {"expired": 2}
    assert all(invalid_token(r) for r in seen["dead"])
    assert seen["renewed"].status_code == 200
    assert seen["works"].status_code == 200


def test_revocation(fake: FakeHealthDock) -> None:
    def form(token: str, **extra: str) -> dict[str, str]:
        return {"token": token, "client_id": PUBLIC.client_id, **extra}

    async def scenario() -> dict[str, Any]:
        async with client(fake, api_key=None) as api:
            first = await login(api)
            revoked_access = await api.post("/oauth/revoke", data=form(first["access_token"]))
            seen: dict[str, Any] = {
                "revoked_access": revoked_access,
                "access_after": await patients(api, first["access_token"]),
            }
            second = (await refresh(api, first["refresh_token"])).json()
            seen["refresh_survived"] = await patients(api, second["access_token"])
            hint = {"token_type_hint": "access_token"}  # wrong, and only a hint
            seen["revoked_family"] = await api.post(
                "/oauth/revoke", data=form(second["refresh_token"], **hint)
            )
            seen["family_access"] = await patients(api, second["access_token"])
            seen["family_refresh"] = await refresh(api, second["refresh_token"])
            seen["quiet"] = [
                await api.post("/oauth/revoke", data=form("hdrt_unknown")),
                await api.post("/oauth/revoke", data=form(second["refresh_token"])),
            ]
            third = await login(api)
            seen["foreign"] = await api.post(
                "/oauth/revoke",
                data={"token": third["access_token"]},
                auth=(CONFIDENTIAL.client_id, "s3cr3t"),
            )
            seen["third"] = await patients(api, third["access_token"])
            seen["unauthenticated"] = await api.post(
                "/oauth/revoke", data={"token": third["access_token"]}
            )
            seen["missing"] = await api.post("/oauth/revoke", data={"client_id": "mirror-cli"})
            return seen

    seen = run(scenario())
    assert seen["revoked_access"].status_code == 200
    assert seen["revoked_access"].content == b""
    assert invalid_token(seen["access_after"])
    assert seen["refresh_survived"].status_code == 200
    assert seen["revoked_family"].status_code == 200
    assert invalid_token(seen["family_access"])
    assert oauth_error(seen["family_refresh"]) == "invalid_grant"
    assert [r.status_code for r in seen["quiet"]] == [200, 200]
    assert seen["foreign"].status_code == 200
    assert seen["third"].status_code == 200  # another client cannot revoke it
    assert seen["unauthenticated"].status_code == 401
    assert oauth_error(seen["unauthenticated"]) == "invalid_client"
    assert (seen["missing"].status_code, oauth_error(seen["missing"])) == (400, "invalid_request")
    assert fake.oauth.stats.revocations == 2


def test_the_token_endpoint_refuses_malformed_requests(fake: FakeHealthDock) -> None:
    form = {"content-type": "application/x-www-form-urlencoded"}
    twice = b"grant_type=refresh_token&grant_type=refresh_token&client_id=mirror-cli"

    async def scenario() -> list[httpx.Response]:
        async with client(fake, api_key=None) as api:
            grant = {"grant_type": "refresh_token", "refresh_token": "hdrt_x"}
            public_secret = {"client_id": "mirror-cli", "client_secret": "a public has none"}
            no_colon = "Basic " + base64.b64encode(b"mirror-server").decode()
            return [
                await api.post("/oauth/token", json={**grant, "client_id": "mirror-cli"}),
                await api.post("/oauth/token", content=twice, headers=form),
                await api.post("/oauth/token", content=b"grant_type&client_id=x", headers=form),
                await token_request(api, PUBLIC),
                await api.post(
                    "/oauth/token",
                    data={**grant, "client_secret": "s3cr3t"},
                    auth=(CONFIDENTIAL.client_id, "s3cr3t"),
                ),
                await token_request(api, PUBLIC, grant_type="password"),
                await token_request(api, PUBLIC, grant_type="refresh_token"),
                await api.post("/oauth/token", data={**grant, "client_id": "nobody"}),
                await api.post("/oauth/token", data={**grant, **public_secret}),
                await api.post("/oauth/token", data=grant, headers={"Authorization": "Basic !"}),
                await api.post("/oauth/token", data=grant, headers={"Authorization": no_colon}),
                await api.post("/oauth/token", data=grant, headers={"Authorization": "Bearer x"}),
                await api.get("/oauth/token"),
            ]

    answers = run(scenario())
    assert [(r.status_code, oauth_error(r)) for r in answers] == [
        (400, "invalid_request"),  # JSON
        (400, "invalid_request"),  # a parameter twice
        (400, "invalid_request"),  # not a form
        (400, "invalid_request"),  # no grant_type
        (400, "invalid_request"),  # two ways of authenticating
        (400, "unsupported_grant_type"),
        (400, "invalid_request"),  # no refresh_token
        (401, "invalid_client"),  # unknown client
        (401, "invalid_client"),  # a public client with a secret
        (401, "invalid_client"),  # Basic, not base64
        (401, "invalid_client"),  # Basic, no colon
        (401, "invalid_client"),  # not Basic
        (405, "invalid_request"),
    ]
    assert all(r.headers["cache-control"] == "no-store" for r in answers[:-1])
    assert answers[-1].headers["allow"] == "POST"


def test_the_token_endpoint_status_switch_fails_it_for_retries(fake: FakeHealthDock) -> None:
    async def scenario() -> list[httpx.Response]:
        async with client(fake, api_key=None) as api:
            code = await code_for(api)
            await api.put("/_fake/oauth", json={"token_endpoint_status": 503})
            failing = [await exchange(api, code), await exchange(api, code)]
            await api.put("/_fake/oauth", json={"token_endpoint_status": None})
            return [*failing, await exchange(api, code)]

    *failing, recovered = run(scenario())
    for answer in failing:
        assert (answer.status_code, oauth_error(answer)) == (503, "temporarily_unavailable")
        assert {name: answer.headers[name] for name in NO_STORE} == NO_STORE
    assert recovered.status_code == 200  # the code was not used up by the failures
    assert fake.oauth.stats.token_requests == 3


def test_the_oauth_control_endpoint_shows_and_changes_switches(fake: FakeHealthDock) -> None:
    async def scenario() -> dict[str, Any]:
        async with client(fake, api_key=None) as api:
            tokens = await login(api, CONFIDENTIAL)
            shown = await api.get("/_fake/oauth")
            changed = await api.put(
                "/_fake/oauth", json={"access_token_seconds": 5, "rotate_refresh_tokens": False}
            )
            bad = [
                await api.put("/_fake/oauth", json=change)
                for change in (
                    {"access_token_seconds": 0},
                    {"deny": "yes"},
                    {"token_endpoint_status": 200},
                    {"token_endpoint_status": "503"},
                    {"typo": 1},
                )
            ]
            short = await login(api)
            kept = await refresh(api, short["refresh_token"])
            return {"tokens": tokens, "shown": shown, "changed": changed, "bad": bad,
                    "short": short, "kept": kept}  # fmt: skip

    seen = run(scenario())
    shown = seen["shown"].json()["data"]
    assert set(shown) == {"switches", "stats", "clients"}
    assert shown["switches"] == {
        "access_token_seconds": 3600.0,
        "deny": False,
        "token_endpoint_status": None,
        "rotate_refresh_tokens": True,
    }
    assert shown["clients"] == [
        {"client_id": "mirror-cli", "redirect_uris": [APP_CALLBACK], "confidential": False},
        {
            "client_id": "mirror-server",
            "redirect_uris": [OTHER_CALLBACK, SERVER_CALLBACK],
            "confidential": True,
        },
    ]
    text = seen["shown"].text
    for secret in (seen["tokens"]["access_token"], seen["tokens"]["refresh_token"], "s3cr3t"):
        assert secret not in text
    assert seen["changed"].json()["data"]["switches"]["access_token_seconds"] == 5
    assert [r.status_code for r in seen["bad"]] == [400] * 5
    assert (fake.oauth.switches.access_token_seconds, fake.oauth.switches.deny) == (5, False)
    assert seen["short"]["expires_in"] == 5
    assert seen["kept"].json()["refresh_token"] == seen["short"]["refresh_token"]


def test_the_oauth_control_endpoints_are_guarded(make_fake: MakeFake) -> None:
    fake = make_fake(oauth_clients=[PUBLIC], control_token="ops-token")

    async def scenario() -> list[int]:
        async with client(fake, api_key=None) as anonymous, client(fake, "ops-token") as ops:
            return [
                (await anonymous.get("/_fake/oauth")).status_code,
                (await anonymous.post("/_fake/oauth/expire")).status_code,
                (await ops.get("/_fake/oauth")).status_code,
            ]

    assert run(scenario()) == [401, 401, 200]


def test_the_stats_count_the_flow(fake: FakeHealthDock) -> None:
    async def scenario() -> dict[str, Any]:
        async with client(fake, api_key=None) as api:
            first = await login(api)
            other_verifier, _ = pkce()
            await exchange(api, await code_for(api), code_verifier=other_verifier)
            second = (await refresh(api, first["refresh_token"])).json()
            await api.post("/_fake/oauth/expire")
            await patients(api, second["access_token"])
            await refresh(api, first["refresh_token"])  # reuse: the family goes
            third = await login(api)
            await api.post(
                "/oauth/revoke", data={"token": third["refresh_token"], "client_id": "mirror-cli"}
            )
            return (await api.get("/_fake/stats")).json()["data"]  # type: ignore[no-any-return]

    stats = run(scenario())
    assert stats["oauth"] == {
        "authorizations": 3,
        "codes_exchanged": 2,
        "refreshes": 1,
        "invalid_grants": 2,
        "reuse_detections": 1,
        "revocations": 1,
        "invalid_tokens": 1,
        "token_requests": 5,
    }
    assert stats["api"]["requests"] == 1  # the OAuth endpoints are not API calls


def test_a_refresh_does_not_reset_the_clients_rate_limit(make_fake: MakeFake) -> None:
    fake = make_fake(oauth_clients=[PUBLIC, CONFIDENTIAL], rate_limit=2)

    async def scenario() -> list[httpx.Response]:
        async with client(fake, api_key=None) as api:
            tokens = await login(api)
            answers = [await patients(api, tokens["access_token"]) for _ in range(2)]
            renewed = (await refresh(api, tokens["refresh_token"])).json()
            other = await login(api, CONFIDENTIAL)
            return [
                *answers,
                await patients(api, renewed["access_token"]),
                await patients(api, other["access_token"]),
                await patients(api, API_KEY),
            ]

    answers = run(scenario())
    assert [r.status_code for r in answers] == [200, 200, 429, 200, 200]
    assert answers[2].headers["X-RateLimit-Remaining"] == "0"


def test_the_metadata_describes_the_server(fake: FakeHealthDock) -> None:
    async def scenario() -> httpx.Response:
        async with client(fake, api_key=None) as api:
            return await api.get("/.well-known/oauth-authorization-server")

    metadata = run(scenario()).json()
    assert metadata["issuer"] == ISSUER
    assert metadata["authorization_endpoint"] == f"{ISSUER}/oauth/authorize"
    assert metadata["token_endpoint"] == f"{ISSUER}/oauth/token"
    assert metadata["revocation_endpoint"] == f"{ISSUER}/oauth/revoke"
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["authorization_response_iss_parameter_supported"] is True


@pytest.mark.parametrize(
    "redirect_uris",
    [(), ("/callback",), ("http://app.example/cb#top",), ("app.example/cb",)],
)
def test_a_client_needs_absolute_redirect_uris_without_fragments(
    redirect_uris: tuple[str, ...],
) -> None:
    with pytest.raises(ValueError, match="redirect URI"):
        OAuthClient("app", redirect_uris)


def test_client_ids_are_unique(make_fake: MakeFake) -> None:
    with pytest.raises(ValueError, match="unique"):
        make_fake(oauth_clients=[PUBLIC, OAuthClient("mirror-cli", ("http://other.example/",))])


def test_the_command_line_registers_an_oauth_client() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    callback = "http://127.0.0.1:9/callback"
    command = [
        sys.executable, "-m", "fake_healthdock", "--port", str(port), "--patients", "20",
        "--oauth-client-id", "cli-app", "--oauth-client-secret", "cli-secret",
        "--oauth-redirect-uri", "http://127.0.0.1:9/other", "--oauth-redirect-uri", callback,
        "--oauth-access-seconds", "120", "--log-level", "warning",
    ]  # fmt: skip
    server = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(f"{base}/.well-known/oauth-authorization-server")
        query = {
            "response_type": "code",
            "client_id": "cli-app",
            "redirect_uri": callback,
            "code_challenge": CHALLENGE,
            "code_challenge_method": "S256",
        }
        redirect = httpx.get(f"{base}/oauth/authorize", params=query)
        _, params = redirected(redirect)
        assert params["iss"] == base
        form = {"grant_type": "authorization_code", "code": params["code"],
                "redirect_uri": callback, "code_verifier": VERIFIER}  # fmt: skip
        tokens = httpx.post(f"{base}/oauth/token", data=form, auth=("cli-app", "cli-secret"))
        assert tokens.status_code == 200, tokens.text
        assert tokens.json()["expires_in"] == 120
        bearer = {"Authorization": f"Bearer {tokens.json()['access_token']}"}
        assert httpx.get(f"{base}/v1/patients", headers=bearer).status_code == 200
    finally:
        server.terminate()
        _, errors = server.communicate(timeout=10)
    assert "OAuth client cli-app (confidential)" in errors


def test_an_oauth_client_id_needs_a_redirect_uri() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fake_healthdock", "--oauth-client-id", "cli-app"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--oauth-client-id needs at least one --oauth-redirect-uri" in result.stderr


def test_the_oauth_options_are_in_the_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fake_healthdock", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0
    for option in ("--oauth-client-id", "--oauth-client-secret", "--oauth-redirect-uri",
                   "--oauth-access-seconds"):  # fmt: skip
        assert option in result.stdout


def _wait_for(url: str) -> None:
    deadline = time.monotonic() + 15
    while True:
        try:
            httpx.get(url)
            return
        except httpx.TransportError:
            assert time.monotonic() < deadline, "the fake did not start"
            time.sleep(0.05)
