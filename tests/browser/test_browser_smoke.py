"""The browser fixtures themselves: a page under a strict CSP runs its script file, and a
request to the outside is recorded and aborted before it leaves the machine."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import BrowserSession

# No inline script or handler anywhere: the page must work under script-src 'self', as the
# console's pages will.
STRICT_CSP = "default-src 'self'"
FILES: dict[str, tuple[str, bytes]] = {
    "/": (
        "text/html; charset=utf-8",
        b"<!doctype html><title>smoke</title>"
        b'<p id="status">waiting</p><button id="go" type="button">Go</button>'
        b'<script src="/smoke.js"></script>',
    ),
    "/smoke.js": (
        "text/javascript",
        b'document.getElementById("go").addEventListener("click", () => {'
        b'  document.getElementById("status").textContent = "clicked";'
        b"});",
    ),
    "/outside.html": (
        "text/html; charset=utf-8",
        b'<!doctype html><title>outside</title><script src="https://example.invalid/x.js"></script>',
    ),
}


class _Files(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path not in FILES:
            self.send_error(404)
            return
        content_type, body = FILES[self.path]
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.path == "/":
            self.send_header("Content-Security-Policy", STRICT_CSP)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def site() -> Iterator[str]:
    """The pages above on a free loopback port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Files)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_a_click_runs_the_script_file_under_a_strict_csp(page: Page, site: str) -> None:
    page.goto(f"{site}/")
    status = page.locator("#status")
    expect(status).to_have_text("waiting")

    page.get_by_role("button", name="Go").click()

    expect(status).to_have_text("clicked")


def test_a_request_outside_loopback_is_recorded_and_aborted(
    browser_session: BrowserSession, site: str
) -> None:
    page = browser_session.page
    with page.expect_event("requestfailed") as failed:
        page.goto(f"{site}/outside.html")

    assert failed.value.url == "https://example.invalid/x.js"
    # Blocked by our route, not by DNS (which would be net::ERR_NAME_NOT_RESOLVED).
    # (Chromium names who blocked it: net::ERR_BLOCKED_BY_CLIENT.Inspector, the driver.)
    assert (failed.value.failure or "").startswith("net::ERR_BLOCKED_BY_CLIENT")
    assert browser_session.external_requests == ["https://example.invalid/x.js"]


def test_loopback_requests_are_not_recorded(browser_session: BrowserSession, site: str) -> None:
    browser_session.page.goto(f"{site}/")

    expect(browser_session.page.locator("#status")).to_have_text("waiting")
    assert browser_session.external_requests == []


def test_asyncio_run_works_in_later_tests_elsewhere(pytester: pytest.Pytester) -> None:
    """A browser test leaves no event loop marked as running: the suite's other tests still
    start their own."""
    pytester.mkpydir("browser").joinpath("conftest.py").write_text(
        Path(__file__).with_name("conftest.py").read_text()
    )
    pytester.path.joinpath("browser", "test_page.py").write_text(
        "def test_page(page):\n"
        "    page.set_content('<p>hi</p>')\n"
        "    assert page.text_content('p') == 'hi'\n"
    )
    pytester.mkpydir("other").joinpath("test_loop.py").write_text(
        "import asyncio\n\n"
        "async def answer():\n"
        "    return 42\n\n"
        "def test_loop():\n"
        "    assert asyncio.run(answer()) == 42\n"
    )

    result = pytester.runpytest_subprocess("-p", "no:randomly", "browser", "other")

    result.assert_outcomes(passed=2)
