"""Debian's Chromium (``make browser``) driven by Playwright, which never downloads a browser.

``page`` is a fresh context's page (no cookie outlives its test); ``browser_session`` is the same
page with the URLs it tried to fetch from outside loopback. Every such request is aborted, so a
console page that needs a CDN, a web font or an analytics script fails its test instead of
reaching the internet.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 10_000
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
# What an outside request fails with: the page sees it blocked, not a DNS or network error.
BLOCKED = "blockedbyclient"


@dataclass
class BrowserSession:
    """A page that reaches only loopback, and the outside URLs it tried to fetch."""

    page: Page
    external_requests: list[str] = field(default_factory=list)


@pytest.fixture
def browser() -> Iterator[Browser]:
    """Headless Chromium for one test. Per test, not per session: Playwright's sync API marks
    its event loop as running on the main thread while it is started, and every other test's
    ``asyncio.run()`` would then refuse to start (a launch costs about half a second)."""
    if not CHROMIUM.exists():
        pytest.fail("Chromium is missing: run `make browser`", pytrace=False)
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def browser_session(browser: Browser) -> Iterator[BrowserSession]:
    """A page in a new context; requests to anything but loopback are aborted and recorded."""
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    external: list[str] = []

    def only_loopback(route: Route) -> None:
        url = route.request.url
        if urlsplit(url).hostname in LOOPBACK:
            route.continue_()
        else:
            external.append(url)
            route.abort(BLOCKED)

    context.route("**/*", only_loopback)
    try:
        yield BrowserSession(context.new_page(), external)
    finally:
        context.close()


@pytest.fixture
def page(browser_session: BrowserSession) -> Page:
    """A page in a new context that reaches only loopback."""
    return browser_session.page
