"""Hardened pages work in a real Chromium, and the hardening holds (issue 17, items 5, 7 and 8): a
router process (3 failed sign-ins a minute) and a FAKE images node (``tests.support.fake_node``)
on loopback.

- ``/docs``: Swagger UI loads every operation, tries a route and opens **Authorize** with no
  policy violation (any would be a console error, which fails the test); another site cannot
  frame it.
- A stored image opened on its own is shown as an image, in its sandbox, with no violation.
- The dashboard's sign-in, after too many wrong keys, says when to come back.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.support.fake_node import FakeNode, images_answer
from tests.support.servers import Proc, create_key, router_proc

if TYPE_CHECKING:
    from playwright.sync_api import Page

    from tests.browser.conftest import Errors

# Every Content-Security-Policy violation the page sees, kept where the test can read it.
WATCH_VIOLATIONS = (
    "window.__violations = [];"
    "document.addEventListener('securitypolicyviolation',"
    " e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI));"
)
MAX_FAILED_SIGN_INS = 3
IMAGE_MODEL = {"id": "img", "capabilities": ["image_generation"], "runtime": "stable_diffusion"}


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    tmp = tmp_path_factory.mktemp("hardened-pages")
    router = router_proc(tmp, env={"LLMLB_PLUGIN__DASHBOARD__MAX_FAILED_SIGN_INS": str(MAX_FAILED_SIGN_INS)})
    try:
        yield router.start().wait_healthy()
    finally:
        router.stop()


@pytest.fixture(scope="module")
def node(router: Proc) -> Iterator[FakeNode]:
    node = FakeNode(router.url, create_key(router.url, ["node"], name="fake"), "fake-1", [IMAGE_MODEL])
    node.answers["/v1/images/generations"] = images_answer()
    try:
        yield node.start()
    finally:
        node.stop()


def violations(page: Page) -> list[str]:
    return list(page.evaluate("window.__violations"))


def test_the_docs_work_under_their_policy(page: tuple[Page, Errors], router: Proc, tmp_path: Path) -> None:
    browser_page, _ = page
    browser_page.add_init_script(WATCH_VIOLATIONS)
    response = browser_page.goto(f"{router.url}/docs")
    assert response is not None and "script-src 'self'" in response.headers["content-security-policy"]
    browser_page.wait_for_selector("#operations-default-HealthHealth")
    assert browser_page.locator(".opblock").count() > 20
    health = "#operations-default-HealthHealth"
    browser_page.click(f"{health} .opblock-summary")
    browser_page.click(f"{health} button.try-out__btn")
    browser_page.click(f"{health} button.execute")
    status = browser_page.wait_for_selector(f"{health} .live-responses-table .response .response-col_status")
    assert status is not None and status.inner_text().strip() == "200"
    browser_page.click("button.authorize")
    browser_page.wait_for_selector(".modal-ux input")
    browser_page.screenshot(path=tmp_path / "docs.png")
    assert violations(browser_page) == []


def test_another_site_cannot_frame_the_docs(page: tuple[Page, Errors], router: Proc) -> None:
    browser_page, errors = page
    browser_page.set_content(f"<iframe id='docs' src='{router.url}/docs'></iframe>")
    browser_page.wait_for_timeout(1000)
    frame = browser_page.frame_locator("#docs")
    assert frame.locator("#swagger-container").count() == 0
    refused = errors.take()  # the browser says why it showed nothing: the claimed errors
    assert refused and all("frame-ancestors" in line for line in refused), refused


def test_a_stored_image_is_shown_as_an_image_in_its_sandbox(
    page: tuple[Page, Errors], router: Proc, node: FakeNode
) -> None:
    browser_page, _ = page
    api_key = create_key(router.url, ["api"], name="client")
    answer = httpx.post(
        f"{router.url}/v1/images/generations",
        json={"model": "img", "prompt": "a cat", "size": "256x256", "response_format": "url"},
        headers={"authorization": f"Bearer {api_key}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    # (No script runs in its sandbox: a violation shows as a console error, which fails the test.)
    response = browser_page.goto(answer.json()["data"][0]["url"])
    assert response is not None and response.headers["content-type"] == "image/png"
    shown = browser_page.evaluate(
        "[document.contentType, document.images.length, document.images[0].naturalWidth]"
    )
    assert shown == ["image/png", 1, 8]
    # Sandboxed: the document has an opaque origin, so nothing in it could reach the router's.
    assert browser_page.evaluate("window.origin") == "null"


def test_the_sign_in_page_says_when_to_come_back_after_too_many_wrong_keys(
    page: tuple[Page, Errors], router: Proc, tmp_path: Path
) -> None:
    browser_page, errors = page
    # This browser's own address (through the loopback proxy the router trusts), so the lock
    # stays its own.
    browser_page.set_extra_http_headers({"x-forwarded-for": "203.0.113.50"})
    browser_page.goto(f"{router.url}/dashboard/login")
    statuses = []
    for i in range(MAX_FAILED_SIGN_INS + 1):
        browser_page.fill("#login-key", f"sk-llmlb-wrong-guess-{i}-0123456789abcdef")
        with browser_page.expect_response(lambda r: r.request.method == "POST") as info:
            browser_page.click("#login-form button[type=submit]")
        browser_page.wait_for_load_state()
        statuses.append(info.value.status)
    assert statuses == [401] * MAX_FAILED_SIGN_INS + [429]
    notice = browser_page.inner_text("#login-error")
    assert re.fullmatch(r"Too many failed sign-ins from your address: try again in \d+ s\.", notice), notice
    assert info.value.headers["retry-after"].isdigit()
    browser_page.screenshot(path=tmp_path / "sign-in-throttled.png")
    claimed = errors.take()  # the browser reports each refused sign-in's status: those only
    assert len(claimed) == MAX_FAILED_SIGN_INS + 1 and all("status of 4" in line for line in claimed), claimed
