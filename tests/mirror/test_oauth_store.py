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


def _info(engine: Engine) -> oauth.GrantInfo:
    info = read_transaction(engine, oauth.grant_info)
    assert info is not None
    return info


def _refreshed(engine: Engine, refreshed: oauth.GrantInfo, access: str = "hdat_2") -> bool:
    fresh = oauth.OAuthTokens(access, "hdrt_2", "Bearer", None, None)
    store = functools.partial(
        oauth.store_refreshed, sealer=Sealer(KEY), tokens=fresh, refreshed=refreshed
    )
    return write_transaction(engine, store)


def test_a_refresh_is_stored_only_over_the_grant_it_refreshed(engine: Engine) -> None:
    _store(engine)
    first = _info(engine)
    assert _refreshed(engine, first)
    assert not _refreshed(engine, first)  # a second refresh of the same generation: stale
    info = _info(engine)
    assert (info.refresh_count, info.scope) == (1, "patients:read")  # the scope is kept
    assert info.refreshed_at is not None
    assert _refreshed(engine, info)


def test_a_new_login_is_never_overwritten_by_the_old_grants_refresh(engine: Engine) -> None:
    _store(engine)
    old = _info(engine)
    _store(engine, oauth.OAuthTokens("hdat_new", "hdrt_new", "Bearer", None, None))
    assert _info(engine).refresh_count == old.refresh_count == 0  # same count, another login
    assert not _refreshed(engine, old, access="hdat_from_the_old_family")
    write_transaction(engine, functools.partial(oauth.mark_refused, refused=old))
    assert _info(engine).state is GrantState.ACTIVE
    loaded = read_transaction(engine, functools.partial(oauth.load_tokens, sealer=Sealer(KEY)))
    assert loaded is not None
    assert loaded[1].access_token == "hdat_new"


def test_a_refused_grant_stays_refused_until_a_new_login(engine: Engine) -> None:
    _store(engine)
    write_transaction(engine, functools.partial(oauth.mark_refused, refused=_info(engine)))
    assert _info(engine).state is GrantState.REFUSED
    _store(engine)
    assert _info(engine).state is GrantState.ACTIVE
    assert write_transaction(engine, oauth.forget_grant)
    assert read_transaction(engine, oauth.grant_info) is None
    assert not write_transaction(engine, oauth.forget_grant)


@pytest.mark.parametrize(
    ("value", "code"),
    [("invalid_grant", "invalid_grant"), ("access_denied", "access_denied"),
     ("Invalid grant!", None), ("<b>", None), ("", None), ("x" * 65, None), (7, None)],
)  # fmt: skip
def test_only_an_oauth_error_code_is_kept(value: object, code: str | None) -> None:
    assert oauth.error_code(value) == code


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
