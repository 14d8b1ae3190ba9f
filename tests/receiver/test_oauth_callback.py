"""``GET /oauth/callback`` under hostile input: never a 5xx, never a completed login without the
login's own state, and a page that is never cached and sends no referrer."""

from __future__ import annotations

import functools
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient
from sqlalchemy import Engine

from mirror import oauth, write_transaction
from receiver import CALLBACK_PATH, callback_app

STATE = "s" * 43
_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=80)
_names = st.sampled_from(["state", "code", "error", "error_description", "iss", "x"])


def _open_login(engine: Engine) -> None:
    write_transaction(engine, functools.partial(
        oauth.open_login, state=STATE, ttl=timedelta(minutes=5)))  # fmt: skip


def _taken(engine: Engine) -> oauth.LoginCallback | None:
    return write_transaction(engine, functools.partial(oauth.take_login, state=STATE))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(query=st.lists(st.tuples(_names, _text), max_size=6))
def test_any_query_is_answered_without_a_server_error(
    engine: Engine, query: list[tuple[str, str]]
) -> None:
    _open_login(engine)
    try:
        with TestClient(callback_app(engine)) as client:
            answer = client.get(CALLBACK_PATH, params=query)
        assert answer.status_code in (200, 400)
        assert answer.headers["cache-control"] == "no-store"
        assert answer.headers["referrer-policy"] == "no-referrer"
        assert "<script" not in answer.text
        completed = _taken(engine)
        # Only the login's own state, sent once, with a code or an error, completes it.
        states = [value for name, value in query if name == "state"]
        if completed is not None:
            assert states == [STATE]
            assert answer.status_code == 200
    finally:
        write_transaction(engine, functools.partial(oauth.drop_login, state=STATE))


def test_the_login_state_with_a_code_completes_it_once(engine: Engine) -> None:
    _open_login(engine)
    with TestClient(callback_app(engine)) as client:
        first = client.get(CALLBACK_PATH, params={"state": STATE, "code": "the-code"})
        again = client.get(CALLBACK_PATH, params={"state": STATE, "code": "another"})
        error = client.get(CALLBACK_PATH, params={"state": STATE, "error": "<b>x</b>"})
    assert first.status_code == 200
    assert again.status_code == 400
    assert error.status_code == 400
    assert "<b>" not in error.text
    assert _taken(engine) == oauth.LoginCallback("the-code", None, None)


def test_an_error_code_is_kept_only_if_it_is_one(engine: Engine) -> None:
    _open_login(engine)
    with TestClient(callback_app(engine)) as client:
        page = client.get(CALLBACK_PATH, params={"state": STATE, "error": "Deny <now>!"})
    assert page.status_code == 200
    assert "&lt;" not in page.text  # the odd value is replaced, not echoed
    taken = _taken(engine)
    assert taken is not None
    assert taken.error == "invalid_error_code"
