"""The operator console over HTTP: sign-in, sessions, CSRF, headers, roles, what is audited.

The same pages in a real browser: tests/browser/test_console_browser.py.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from click.testing import CliRunner
from litestar import Litestar
from litestar.testing import TestClient
from sqlalchemy import Engine, select

from healthdock_mirror.cli import main
from mirror.schema import audit_log, console_sessions, sync_requests, webhook_events
from receiver import create_app
from tests.conftest import make_settings
from tests.factories import encode, event, patient, signed
from tests.support.access import create_token as token
from tests.support.stored_events import fix_the_cause, refuse_patient

BOOTSTRAP = "console-bootstrap-0123456789"


def post_event(client: TestClient[Litestar], document: dict[str, Any]) -> None:
    body = encode(document)
    assert (
        client.post("/webhooks/healthdock", content=body, headers=signed(body)).status_code == 200
    )


def login_csrf(client: TestClient[Litestar]) -> str:
    page = client.get("/console/login")
    assert page.status_code == 200
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


def sign_in(client: TestClient[Litestar], secret: str, next_page: str = "") -> Any:
    return client.post(
        "/console/login",
        data={"token": secret, "csrf_token": login_csrf(client), "next": next_page},
        follow_redirects=False,
    )


def page_csrf(client: TestClient[Litestar]) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', client.get("/console").text)
    assert found is not None
    return found.group(1)


def audit_actions(engine: Engine) -> list[tuple[str, str, str | None, str]]:
    with engine.connect() as connection:
        rows = connection.execute(
            select(audit_log.c.actor, audit_log.c.action, audit_log.c.target, audit_log.c.outcome)
            .order_by(audit_log.c.id)
        )  # fmt: skip
        return [tuple(row) for row in rows]  # type: ignore[misc]


@pytest.fixture
def console(database_url: str, engine: Engine) -> Any:
    with TestClient(
        create_app(make_settings(database_url, admin_token=BOOTSTRAP, console_secure_cookies=False))
    ) as client:
        yield client


def test_sign_in_sets_a_strict_http_only_session_and_every_page_has_the_headers(
    console: TestClient[Litestar], engine: Engine
) -> None:
    assert console.get("/console", follow_redirects=False).headers["location"] == (
        "/console/login?next=%2Fconsole"
    )
    signed_in = sign_in(console, BOOTSTRAP, "/console/audit")
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/console/audit"
    cookie = signed_in.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "samesite=strict" in cookie.lower()
    assert "Path=/console" in cookie
    pages = ["/console", "/console/events", "/console/runs", "/console/audit", "/console/login",
             "/console/events/12345", "/console/static/console.css"]  # fmt: skip
    for path in pages:
        response = console.get(path)
        assert response.status_code in (200, 404), path
        assert response.headers["content-security-policy"].startswith("default-src 'self'")
        assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
    assert [a[1] for a in audit_actions(engine)] == ["console.login"]


def test_a_wrong_or_feed_token_is_refused_and_audited_and_brute_force_is_throttled(
    database_url: str, console: TestClient[Litestar], engine: Engine
) -> None:
    feed = token(database_url, "machine", "feed")
    refused = sign_in(console, feed)
    assert refused.status_code == 401
    assert "no console" in refused.text
    for attempt in range(4):
        assert sign_in(console, f"guess-{attempt}").status_code == 401
    throttled = sign_in(console, BOOTSTRAP)  # even the right token waits now
    assert throttled.status_code == 429
    assert throttled.headers["retry-after"]
    outcomes = [(a[0], a[1], a[3]) for a in audit_actions(engine)]
    assert (
        outcomes[-6:]
        == [("machine", "console.login", "denied")] + [("unknown", "console.login", "denied")] * 5
    )
    assert BOOTSTRAP not in json.dumps(audit_actions(engine))


def test_the_sign_in_form_needs_its_csrf_token_and_never_redirects_off_the_console(
    console: TestClient[Litestar],
) -> None:
    forged = console.post("/console/login", data={"token": BOOTSTRAP, "csrf_token": "x"},
                          follow_redirects=False)  # fmt: skip
    assert forged.status_code == 403
    for evil in ("//evil.example/x", "https://evil.example", "/consolex/../../evil",
                 "/console//evil.example", "/console\\evil", "javascript:alert(1)"):  # fmt: skip
        console.cookies.clear()
        response = sign_in(console, BOOTSTRAP, evil)
        assert response.status_code == 303
        assert response.headers["location"] in (
            "/console",
            evil if evil.startswith("/console/") else "/console",
        )
        assert "evil" not in response.headers["location"] or response.headers[
            "location"
        ].startswith("/console/")


def test_a_planted_session_id_is_worthless_and_each_sign_in_gets_a_new_one(
    console: TestClient[Litestar], engine: Engine
) -> None:
    console.cookies.set("hdm_session", "planted-by-an-attacker", path="/console")
    assert console.get("/console", follow_redirects=False).status_code == 303
    first = sign_in(console, BOOTSTRAP).cookies.get("hdm_session")
    second = sign_in(console, BOOTSTRAP).cookies.get("hdm_session")
    assert first
    assert second
    assert first != second
    with engine.connect() as connection:
        stored = [row[0] for row in connection.execute(select(console_sessions.c.id_hash))]
    assert first not in stored  # only hashes are kept
    assert second not in stored


def test_log_out_needs_the_csrf_token_and_ends_the_session(
    console: TestClient[Litestar], engine: Engine
) -> None:
    sign_in(console, BOOTSTRAP)
    assert console.post("/console/logout", data={}, follow_redirects=False).status_code == 403
    csrf = page_csrf(console)
    out = console.post("/console/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert out.status_code == 303
    assert console.get("/console", follow_redirects=False).status_code == 303
    assert [a[1] for a in audit_actions(engine)] == [
        "console.login", "access.denied", "console.logout",
    ]  # fmt: skip
    assert audit_actions(engine)[1][2] == "POST /console/logout: CSRF token missing or wrong"


def test_a_revoked_tokens_session_stops_at_its_next_request(
    database_url: str, console: TestClient[Litestar]
) -> None:
    viewer = token(database_url, "ward", "viewer")
    sign_in(console, viewer)
    assert console.get("/console/events").status_code == 200
    CliRunner().invoke(
        main, ["token", "revoke", "ward"], env={"HEALTHDOCK_DATABASE_URL": database_url}
    )
    assert console.get("/console/events", follow_redirects=False).status_code == 303


def test_an_idle_session_ends(database_url: str, engine: Engine) -> None:
    settings = make_settings(
        database_url,
        admin_token=BOOTSTRAP,
        console_session_minutes=0.02,
        console_secure_cookies=False,
    )
    with TestClient(create_app(settings)) as client:
        sign_in(client, BOOTSTRAP)
        assert client.get("/console").status_code == 200
        time.sleep(1.5)
        assert client.get("/console", follow_redirects=False).status_code == 303


def test_patient_data_pages_are_audited_and_stored_markup_is_inert(
    console: TestClient[Litestar], engine: Engine
) -> None:
    post_event(
        console, event("patient.created", patient("PATX1", first_name="<script>alert(1)</script>"))
    )
    sign_in(console, BOOTSTRAP)
    listing = console.get("/console/events")
    assert "PATX1" in listing.text
    detail = console.get("/console/events/1")
    assert "<script>alert" not in detail.text  # the payload is not on the page until shown
    payload = console.get("/console/events/1/payload")
    assert payload.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in payload.text
    assert "<script>alert" not in payload.text
    record = console.get("/console/records/patient/PATX1")
    assert "&lt;script&gt;" in record.text
    assert "<script>alert" not in record.text
    assert [(a[1], a[2]) for a in audit_actions(engine)][1:] == [
        ("event.payload", "event 1"), ("record.view", "patient PATX1"),
    ]  # fmt: skip


def test_the_overview_shows_the_counts_status_json_gives(
    database_url: str, console: TestClient[Litestar]
) -> None:
    for number in range(3):
        post_event(console, event("patient.created", patient(f"PATO{number}")))
    sign_in(console, BOOTSTRAP)
    page = console.get("/console").text
    status = json.loads(
        CliRunner()
        .invoke(main, ["status", "--json"], env={"HEALTHDOCK_DATABASE_URL": database_url})
        .stdout
    )

    def figure(name: str) -> str:
        found = re.search(rf'data-figure="{name}"><span class="value">(?:<a [^>]*>)?([^<]+)<', page)
        assert found is not None, name
        return found.group(1)

    assert figure("patients-live") == str(status["counts"]["patients"]["live"]) == "3"
    assert figure("webhook-events") == str(status["counts"]["webhook_events"])
    assert figure("failed") == str(status["unapplied"]["failed"])
    assert figure("sync-runs") == str(status["counts"]["sync_runs"])


@pytest.mark.parametrize(
    "path",
    ["/console/events?status=nope", "/console/events?since=yesterday",
     "/console/events?before=-1", "/console/events?type=%00", "/console/records/doctor/1",
     "/console/records/patient/" + "x" * 300, "/console/audit?action=drop",
     "/console/events/99999999999999999999", "/console/nothing"],
)  # fmt: skip
def test_bad_input_is_a_4xx_page_never_a_5xx(console: TestClient[Litestar], path: str) -> None:
    sign_in(console, BOOTSTRAP)
    response = console.get(path)
    assert 400 <= response.status_code < 500, (path, response.status_code)
    assert response.headers["content-security-policy"].startswith("default-src 'self'")


def test_an_operator_replays_a_failed_event_after_a_dry_run_and_a_viewer_cannot(
    database_url: str, console: TestClient[Litestar], engine: Engine
) -> None:
    refuse_patient(engine, "PATR1")
    post_event(console, event("patient.created", patient("PATR1")))
    fix_the_cause(engine)
    viewer = token(database_url, "ward-viewer", "viewer")
    operator = token(database_url, "night-operator", "operator")

    sign_in(console, viewer)
    listing = console.get("/console/events?status=failed")
    assert "PATR1" in listing.text
    assert "Replay these" not in listing.text  # a viewer sees no action it may not take
    assert console.get("/console/replay?status=failed").status_code == 403
    refused = console.post("/console/replay", data={"csrf_token": page_csrf(console),
                                                    "status": "failed"})  # fmt: skip
    assert refused.status_code == 403

    console.cookies.clear()
    sign_in(console, operator)
    assert "Replay these" in console.get("/console/events?status=failed").text
    preview = console.get("/console/replay?status=failed")
    assert preview.status_code == 200
    assert "would become" in preview.text
    assert "created" in preview.text
    assert event_status(engine, 1) == "failed"  # the dry run wrote nothing
    without_csrf = console.post("/console/replay", data={"status": "failed"})
    assert without_csrf.status_code == 403
    assert event_status(engine, 1) == "failed"
    done = console.post(
        "/console/replay", data={"csrf_token": page_csrf(console), "status": "failed"}
    )
    assert done.status_code == 200
    assert "Replayed 1 events" in done.text
    assert event_status(engine, 1) == "applied"
    replays = [a for a in audit_actions(engine) if a[1] == "replay"]
    assert replays == [("night-operator", "replay", "status failed (1 events)", "ok")]
    bad = console.get("/console/replay")  # nothing selected
    assert bad.status_code == 400


def event_status(engine: Engine, seq: int) -> str:
    with engine.connect() as connection:
        return str(connection.execute(
            select(webhook_events.c.status).where(webhook_events.c.seq == seq)
        ).scalar_one())  # fmt: skip


def test_sync_now_and_release_are_operators_and_leave_an_audited_request(
    database_url: str, console: TestClient[Litestar], engine: Engine
) -> None:
    viewer = token(database_url, "ward-viewer", "viewer")
    operator = token(database_url, "night-operator", "operator")
    sign_in(console, viewer)
    runs_page = console.get("/console/runs").text
    assert "Sync now" not in runs_page
    refused = console.post("/console/sync", data={"csrf_token": page_csrf(console)})
    assert refused.status_code == 403
    console.cookies.clear()
    sign_in(console, operator)
    assert console.post("/console/sync", data={"resource": "patient"}).status_code == 403  # CSRF
    form = {"csrf_token": page_csrf(console), "resource": "patient"}
    asked = console.post("/console/sync", data=form, follow_redirects=False)
    assert asked.status_code == 303
    assert asked.headers["location"] == "/console/runs?requested=1"
    page = console.get("/console/runs?requested=1").text
    assert "Reconcile requested (#1)" in page
    assert "waiting for the scheduler" in page
    bad = console.post("/console/sync", data={"csrf_token": page_csrf(console), "resource": "x"})
    assert bad.status_code == 400
    not_held = console.post("/console/runs/1/release", data={"csrf_token": page_csrf(console)})
    assert not_held.status_code == 400
    with engine.connect() as connection:
        requests = connection.execute(select(sync_requests)).all()
    assert [(r.resource, r.allow_mass_delete, r.requested_by) for r in requests] == [
        ("patient", False, "night-operator")
    ]
    assert [a for a in audit_actions(engine) if a[1].startswith("sync.")] == [
        ("night-operator", "sync.request", "patient", "ok")
    ]


def test_cookies_are_secure_by_default_and_a_refused_operator_action_is_audited(
    database_url: str, engine: Engine
) -> None:
    viewer = token(database_url, "ward-viewer", "viewer")
    with TestClient(create_app(make_settings(database_url))) as client:
        signed_in = sign_in(client, viewer)
        assert "secure" in signed_in.headers["set-cookie"].lower()
    settings = make_settings(database_url, console_secure_cookies=False)
    with TestClient(create_app(settings)) as client:
        sign_in(client, viewer)
        assert client.get("/console/replay?status=failed").status_code == 403
    denied = [a for a in audit_actions(engine) if a[1] == "access.denied"]
    assert denied == [("ward-viewer", "access.denied", "GET /console/replay: needs operator",
                       "denied")]  # fmt: skip


def test_a_record_id_with_a_slash_or_dots_is_one_record(
    console: TestClient[Litestar], engine: Engine
) -> None:
    post_event(console, event("patient.created", patient("A/../B")))
    sign_in(console, BOOTSTRAP)
    listing = console.get("/console/events").text
    assert 'href="/console/records/patient/A%2F..%2FB"' in listing
    record = console.get("/console/records/patient/A%2F..%2FB")
    assert record.status_code == 200
    assert "Patient A/../B" in record.text
    assert [(a[1], a[2]) for a in audit_actions(engine)][-1] == ("record.view", "patient A/../B")
