"""The OAuth grant and the logins waiting for their callback, on both databases."""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, select

from mirror import GrantState, Sealer, SealError, oauth, read_transaction, write_transaction
from mirror.schema import oauth_grants

KEY = "a-secret-key-of-at-least-32-chars!"
TOKENS = oauth.OAuthTokens(
    "hdat_access", "hdrt_refresh", "Bearer", datetime(2030, 1, 1, tzinfo=UTC), "patients:read"
)


def _store(engine: Engine, tokens: oauth.OAuthTokens = TOKENS) -> None:
    store = functools.partial(
        oauth.store_grant, sealer=Sealer(KEY), tokens=tokens, client_id="mirror-app",
        token_url="https://hd.test/oauth/token", actor="cli:nurse",
    )  # fmt: skip
    write_transaction(engine, store)


def test_the_tokens_are_stored_sealed_and_load_back(engine: Engine) -> None:
    _store(engine)
    with engine.connect() as connection:
        sealed = connection.execute(select(oauth_grants.c.sealed_tokens)).scalar_one()
    assert b"hdat_access" not in sealed
    assert b"hdrt_refresh" not in sealed
    loaded = read_transaction(engine, functools.partial(oauth.load_tokens, sealer=Sealer(KEY)))
    assert loaded is not None
    info, tokens = loaded
    assert (tokens.access_token, tokens.refresh_token) == ("hdat_access", "hdrt_refresh")
    assert tokens.expires_at == TOKENS.expires_at
    assert info.client_id == "mirror-app"
    assert info.state is GrantState.ACTIVE
    assert info.authorized_by == "cli:nurse"
    assert "hdat_access" not in repr(tokens)


def test_another_key_cannot_load_them(engine: Engine) -> None:
    _store(engine)
    other = Sealer("another-secret-key-of-32-chars-or-more")
    with pytest.raises(SealError):
        read_transaction(engine, functools.partial(oauth.load_tokens, sealer=other))
    # What status shows needs no key.
    info = read_transaction(engine, oauth.grant_info)
    assert info is not None
    assert info.scope == "patients:read"


def test_a_refresh_is_stored_only_over_the_grant_it_refreshed(engine: Engine) -> None:
    _store(engine)
    fresh = oauth.OAuthTokens("hdat_2", "hdrt_2", "Bearer", None, None)

    def refreshed(from_count: int) -> bool:
        return write_transaction(engine, functools.partial(
            oauth.store_refreshed, sealer=Sealer(KEY), tokens=fresh, client_id="mirror-app",
            refreshed_from=from_count,
        ))  # fmt: skip

    assert refreshed(0)
    assert not refreshed(0)  # a second refresh of the same generation: a stale writer
    info = read_transaction(engine, oauth.grant_info)
    assert info is not None
    assert (info.refresh_count, info.scope) == (1, "patients:read")  # the scope is kept
    assert info.refreshed_at is not None
    _store(engine)  # a new login replaces the grant
    assert not refreshed(1)


def test_a_refused_grant_stays_refused_until_a_new_login(engine: Engine) -> None:
    _store(engine)
    write_transaction(engine, functools.partial(oauth.mark_refused, refreshed_from=0))
    info = read_transaction(engine, oauth.grant_info)
    assert info is not None
    assert info.state is GrantState.REFUSED
    _store(engine)
    info = read_transaction(engine, oauth.grant_info)
    assert info is not None
    assert info.state is GrantState.ACTIVE
    assert write_transaction(engine, oauth.forget_grant)
    assert read_transaction(engine, oauth.grant_info) is None
    assert not write_transaction(engine, oauth.forget_grant)


def test_a_callback_completes_its_login_once(engine: Engine) -> None:
    write_transaction(engine, functools.partial(
        oauth.open_login, state="the-state", ttl=timedelta(minutes=5)))  # fmt: skip
    callback = oauth.LoginCallback("the-code", None, "https://hd.test")

    def complete(state: str) -> bool:
        return write_transaction(
            engine, functools.partial(oauth.complete_login, state=state, callback=callback)
        )

    def take(state: str) -> oauth.LoginCallback | None:
        return write_transaction(engine, functools.partial(oauth.take_login, state=state))

    assert take("the-state") is None  # nothing came yet
    assert not complete("another-state")
    assert complete("the-state")
    assert not complete("the-state")  # a replayed callback counts for nothing
    assert take("the-state") == callback
    assert take("the-state") is None


def test_an_expired_login_takes_no_callback(engine: Engine) -> None:
    past = datetime.now(UTC) - timedelta(minutes=10)
    write_transaction(engine, functools.partial(
        oauth.open_login, state="old", ttl=timedelta(minutes=5), now=past))  # fmt: skip
    callback = oauth.LoginCallback("c", None, None)
    complete = functools.partial(oauth.complete_login, state="old", callback=callback)
    assert not write_transaction(engine, complete)
