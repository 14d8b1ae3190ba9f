"""The console in Debian's Chromium: what an operator clicks, and what must hold while they do.

Each test runs its own ``healthdock-mirror serve`` on a fresh database (SQLite and PostgreSQL),
and no page may fetch anything from outside loopback (``browser_session``).
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from playwright.sync_api import expect
from sqlalchemy import Engine

from fake_healthdock import FakeHealthDock, serve_in_thread
from tests.browser.conftest import BrowserSession
from tests.browser.console import Console, running_console
from tests.factories import event, patient
from tests.support.services import worker
from tests.support.stored_events import fix_the_cause, refuse_patient
from tests.support.waiting import wait_for


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


def test_filter_to_failed_events_fix_the_cause_replay_one_and_see_it_applied(
    console: Console, browser_session: BrowserSession, engine: Engine
) -> None:
    refuse_patient(engine, "PATFIX")
    console.post(event("patient.created", patient("PATFIX")))
    fix_the_cause(engine)
    operator = console.token("night-operator", "operator")
    page = browser_session.page
    console.sign_in(page, operator)
    page.get_by_role("link", name="Events").click()
    page.get_by_label("Status").select_option("failed")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.locator("tbody tr .badge")).to_have_text("failed")
    page.get_by_role("link", name="Replay these").click()
    expect(page.get_by_role("heading", name="Replay: what it would do")).to_be_visible()
    expect(page.locator("tbody tr").last).to_contain_text("created")
    page.get_by_role("button", name="Confirm: replay 1 events").click()
    expect(page.get_by_role("heading", name="Replayed")).to_be_visible()
    page.goto(f"{console.url}/events/1")
    expect(page.locator("dl.meta .badge")).to_have_text("applied")
    assert [row["action"] for row in console.audit("--action", "replay")] == ["replay"]
    assert browser_session.external_requests == []


def test_a_viewer_sees_no_replay_button_and_the_server_refuses_the_post_anyway(
    console: Console, browser_session: BrowserSession, engine: Engine
) -> None:
    refuse_patient(engine, "PATVIEW")
    console.post(event("patient.created", patient("PATVIEW")))
    viewer = console.token("ward-viewer", "viewer")
    page = browser_session.page
    console.sign_in(page, viewer)
    page.goto(f"{console.url}/events?status=failed")
    expect(page.locator("tbody tr")).to_have_count(1)
    expect(page.get_by_role("link", name="Replay these")).to_have_count(0)
    page.goto(f"{console.url}/events/1")
    expect(page.get_by_role("link", name="Replay this event")).to_have_count(0)
    # The form an operator would get, posted from this viewer's session: refused.
    csrf = page.locator(".account input[name=csrf_token]").get_attribute("value")
    answer = page.request.post(f"{console.url}/replay", form={"csrf_token": csrf or "",
                                                               "status": "failed"})  # fmt: skip
    assert answer.status == 403
    page.goto(f"{console.url}/events/1")
    expect(page.locator("dl.meta .badge")).to_have_text("failed")


def test_release_a_held_pass_and_see_the_tombstones(
    database_url: str, engine: Engine, tmp_path: Path, browser_session: BrowserSession
) -> None:
    """The console asks, a worker (the scheduler only, another process) reconciles: a pass
    that would tombstone a quarter of the patients is held, and released from the console."""
    fake = FakeHealthDock(seed=5, patients=60, appointments_per_patient=0.5, rate_limit=None)
    api = {"api_key": fake.api_key, "sync_request_poll_seconds": 0.5}
    with (
        serve_in_thread(fake) as api_url,
        running_console(database_url, tmp_path) as console,
        worker(database_url, tmp_path / "worker.log", api_url=f"{api_url}/v1", **api),
    ):
        wait_for(lambda: console.status()["counts"]["patients"]["live"] == 60 or None,
                 "the worker's backfill")  # fmt: skip
        # 15 gone: past the brake (more than its floor of 10, and than 5% of 60).
        gone = [p.id for p in itertools.islice(fake.patients(), 15)]
        for patient_id in gone:
            fake.delete_patient(patient_id)
        operator = console.token("night-operator", "operator")
        page = browser_session.page
        console.sign_in(page, operator)
        page.get_by_role("link", name="Sync runs").click()
        page.get_by_label("Resource").select_option("patient")
        page.get_by_role("button", name="Sync now").click()
        expect(page.locator(".flash")).to_contain_text("Reconcile requested")
        wait_for(lambda: _latest_patient_run(console) == "held" or None, "a held pass")
        page.reload()
        expect(
            page.get_by_role("heading", name=re.compile("is held by the mass-delete brake"))
        ).to_be_visible()
        page.get_by_role("button", name=re.compile("^Release")).click()
        wait_for(lambda: _latest_patient_run(console) == "success" or None, "the release")
        page.goto(f"{console.url}/records/patient/{gone[0]}")
        expect(page.locator(".page-head .badge")).to_have_text("tombstoned")
        assert console.status()["counts"]["patients"] == {"live": 45, "deleted": 15}
        actions = [row["action"] for row in reversed(console.audit())]
        assert actions[-3:] == ["sync.request", "sync.release", "record.view"]
        assert browser_session.external_requests == []


def _latest_patient_run(console: Console) -> str | None:
    runs = [r for r in console.status()["runs"] if r["resource"] == "patient"]
    return str(runs[0]["outcome"]) if runs else None
