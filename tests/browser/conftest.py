"""A real headless Chromium (Debian's ``/usr/bin/chromium``) driven by Playwright, one per test
session; each test gets a fresh browser context and page that fail the test on any JS console
error or uncaught page error.

``playwright install`` is never run: Playwright's own driver drives the system's chromium.
Without chromium (or the ``playwright`` package) the tests are skipped with the reason, except
under CI (``CI`` set), where they fail: ``make test`` installs chromium with apt-get.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, ConsoleMessage, Page

CHROMIUM = Path(os.environ.get("LLMLB_TEST_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing(reason: str) -> None:
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason} (CI must run the browser tests: `make test` installs chromium)")
    pytest.skip(reason)


# Package scope, not session: Playwright's sync API keeps an asyncio loop marked running on the
# main thread while it is started, which breaks every pytest-asyncio test that runs after it
# ("Runner.run() cannot be called from a running event loop"). It stops after this folder.
@pytest.fixture(scope="package")
def browser() -> Iterator[Browser]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed: pip install -e '.[test]'")
    if not os.access(CHROMIUM, os.X_OK):
        _missing(f"no chromium at {CHROMIUM}: apt-get install -y chromium (make test does)")
    with sync_playwright() as playwright:
        # A fresh temporary profile (user-data dir), removed when the browser closes.
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Errors:
    """JS console errors and uncaught page errors seen by a page."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.seen.append(f"console: {message.text} ({message.location.get('url', '')})")

    def page_error(self, error: Any) -> None:
        self.seen.append(f"page error: {error}")

    def take(self) -> list[str]:
        seen, self.seen = self.seen, []
        return seen


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, Errors]]:
    """A fresh context (no cookies) and page; fails the test on JS errors left unclaimed."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(20_000)
    errors = Errors()
    page = context.new_page()
    page.on("console", errors.console)
    page.on("pageerror", errors.page_error)
    try:
        yield page, errors
    finally:
        context.close()
    assert errors.take() == [], "JS errors in the page"
