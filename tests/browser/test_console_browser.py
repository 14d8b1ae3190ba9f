"""The console in Debian's Chromium: what an operator clicks, and what must hold while they do.

Each test runs its own ``healthdock-mirror serve`` on a fresh database (SQLite and PostgreSQL),
and no page may fetch anything from outside loopback (``browser_session``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import expect
from sqlalchemy import Engine

from tests.browser.conftest import BrowserSession
from tests.browser.console import Console, running_console
from tests.factories import event, patient


@pytest.fixture
def console(database_url: str, engine: Engine, tmp_path: Path) -> Console:
    # ``engine``: a migrated database (serve migrates a new SQLite file only).
    with running_console(database_url, tmp_path) as running:
        yield running  # type: ignore[misc]


def test_sign_in_and_log_out(console: Console, browser_session: BrowserSession) -> None:
    page = browser_session.page
    page.goto(console.url)
    expect(page).to_have_url(f"{console.url}/login?next=%2Fconsole")
    page.get_by_label("Token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("unknown or revoked")
    console.sign_in(page)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    expect(page.locator(".account")).to_contain_text("signed in as admin (admin)")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    page.goto(f"{console.url}/events")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()
    assert [row["action"] for row in reversed(console.audit())] == [
        "console.login", "console.login", "console.logout",
    ]  # fmt: skip
    assert browser_session.external_requests == []


def test_the_overview_shows_what_status_json_says(
    console: Console, browser_session: BrowserSession
) -> None:
    for number in range(4):
        console.post(event("patient.created", patient(f"PATB{number}")))
    page = browser_session.page
    console.sign_in(page)
    status = console.status()
    cards = {
        "patients-live": status["counts"]["patients"]["live"],
        "appointments-live": status["counts"]["appointments"]["live"],
        "webhook-events": status["counts"]["webhook_events"],
        "failed": status["unapplied"]["failed"],
        "pending": status["unapplied"]["pending"],
        "sync-runs": status["counts"]["sync_runs"],
    }
    for figure, value in cards.items():
        expect(page.locator(f'[data-figure="{figure}"] .value')).to_have_text(str(value))
    assert cards["patients-live"] == 4
    # The hourly chart has this hour's four webhooks, as a bar with its number in its title.
    expect(page.locator("svg.chart rect.bar-webhook title")).to_contain_text([": 4 webhook"])
    assert browser_session.external_requests == []


def test_stored_markup_is_inert_and_showing_a_payload_is_audited(
    console: Console, browser_session: BrowserSession
) -> None:
    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    console.post(event("patient.created", patient("PATXSS", first_name=hostile)))
    page = browser_session.page
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    console.sign_in(page)
    page.goto(f"{console.url}/events")
    page.get_by_role("link", name="1", exact=True).click()
    expect(page.get_by_role("heading", name="Event 1")).to_be_visible()
    assert console.audit("--action", "event.payload") == []  # not shown yet: not audited
    page.get_by_role("link", name="Show payload").click()  # htmx swaps it in
    expect(page.locator("pre.payload")).to_contain_text(hostile)
    page.get_by_role("link", name="patient PATXSS").click()
    expect(page.get_by_role("cell", name=hostile, exact=True)).to_be_visible()
    expect(page.get_by_role("heading", name="Timeline")).to_be_visible()
    assert dialogs == []
    assert page.locator("img[src=x]").count() == 0
    actions = [(row["action"], row["target"]) for row in reversed(console.audit())]
    assert actions[1:] == [("event.payload", "event 1"), ("record.view", "patient PATXSS")]
    assert browser_session.external_requests == []


def test_a_revoked_tokens_session_stops_working(
    console: Console, browser_session: BrowserSession
) -> None:
    viewer = console.token("ward-7", "viewer")
    page = browser_session.page
    console.sign_in(page, viewer)
    expect(page.locator(".account")).to_contain_text("ward-7 (viewer)")
    console.cli("token", "revoke", "ward-7")
    page.goto(f"{console.url}/events")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()


def test_a_form_without_its_csrf_token_is_refused(
    console: Console, browser_session: BrowserSession
) -> None:
    page = browser_session.page
    console.sign_in(page)
    page.locator(".account input[name=csrf_token]").evaluate("input => input.remove()")
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    page.goto(console.url)  # still signed in: the forged logout did nothing
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()


def test_the_console_cannot_be_framed(console: Console, browser_session: BrowserSession) -> None:
    """Clickjacking: another page that frames the console gets nothing drawn in the frame."""
    page = browser_session.page
    console.sign_in(page)
    framing = f'<iframe id="f" src="{console.url}" width="800" height="600"></iframe>'
    page.goto(f"{console.service.base_url}/healthz")  # a loopback origin to host the frame
    page.set_content(framing)
    page.wait_for_timeout(500)
    frame = page.frame_locator("#f")
    expect(frame.get_by_role("heading", name="Overview")).to_have_count(0)
