"""Hostile input on every console endpoint: random query values, path segments and form fields,
signed in as an operator (who may reach every page) and signed out. Never a 5xx, and the
security headers on every answer."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import Engine

from receiver import create_app
from tests.conftest import make_settings

BOOTSTRAP = "hostile-console-bootstrap-0123"
_FIXTURE = [HealthCheck.function_scoped_fixture]
_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=80)
_values = st.one_of(_text, st.sampled_from([
    "", "0", "-1", "9" * 30, "failed", "patient", "'", "2024-01-12T10:30", "<script>", "..", "%00",
]))  # fmt: skip


@pytest.fixture(scope="module")
def signed_in(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient[Litestar]]:
    from mirror import create_mirror_engine, upgrade

    url = f"sqlite:///{tmp_path_factory.mktemp('console') / 'mirror.db'}"
    engine: Engine = create_mirror_engine(url)
    upgrade(engine)
    with TestClient(
        create_app(make_settings(url, admin_token=BOOTSTRAP, console_secure_cookies=False))
    ) as client:
        page = client.get("/console/login").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page)
        assert csrf is not None
        client.post("/console/login", data={"token": BOOTSTRAP, "csrf_token": csrf.group(1)})
        yield client
    engine.dispose()


def _check(response: Any) -> None:
    assert response.status_code < 500, (response.status_code, response.text[:300])
    # A dot segment ("..") is resolved by the client, as a browser would: such a request may
    # leave /console, where the console's headers do not apply.
    if response.request.url.path.startswith("/console"):
        csp = response.headers.get("content-security-policy", "")
        assert csp.startswith("default-src 'self'"), response.request.url


_PAGES = {
    "/console/events": ["status", "source", "type", "since", "until", "before"],
    "/console/audit": ["actor", "action", "before"],
    "/console/replay": ["status", "source", "type", "since", "until", "seq"],
    "/console/runs": ["requested"],
    "/console/login": ["next"],
}


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(path=st.sampled_from(sorted(_PAGES)), data=st.data())
def test_query_values(signed_in: TestClient[Litestar], path: str, data: st.DataObject) -> None:
    names = data.draw(st.lists(st.sampled_from(_PAGES[path]), unique=True))
    params = {name: data.draw(_values) for name in names}
    _check(signed_in.get(path, params=params))


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(resource=_values, record_id=_values, seq=_values)
def test_path_segments(
    signed_in: TestClient[Litestar], resource: str, record_id: str, seq: str
) -> None:
    for path in (f"/console/records/{quote(resource, safe='')}/{quote(record_id, safe='')}",
                 f"/console/events/{quote(seq, safe='')}",
                 f"/console/events/{quote(seq, safe='')}/payload",
                 f"/console/runs/{quote(seq, safe='')}/release"):  # fmt: skip
        _check(signed_in.get(path))


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(["/console/login", "/console/logout", "/console/replay", "/console/sync",
                          "/console/runs/1/release"]),
    form=st.dictionaries(st.sampled_from(["token", "csrf_token", "next", "status", "seq",
                                          "resource", "since"]), _values, max_size=5),
)  # fmt: skip
def test_form_fields(signed_in: TestClient[Litestar], path: str, form: dict[str, str]) -> None:
    _check(signed_in.post(path, data=form, follow_redirects=False))


def test_a_body_that_is_not_a_form_is_refused_not_crashed(signed_in: TestClient[Litestar]) -> None:
    form = "application/x-www-form-urlencoded"
    bodies = [(b"\xff\xfe\x00", form), (b"{}", "application/json"), (b"a=" + b"x" * 100_000, form)]
    for body, kind in bodies:
        _check(signed_in.post("/console/replay", content=body, headers={"content-type": kind}))
