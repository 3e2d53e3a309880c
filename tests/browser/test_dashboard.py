"""The web dashboard in a real headless Chromium, against a real router process and a real
StableDiffusion node on the demo model (``image_system``): sign-in, the live views, the image
playground (generate, paint a mask and edit, variations), keys (create, shown once, revoke),
sign-out, and the refusals (wrong key, non-admin key, forged sign-in, POST without the CSRF
token). Screenshots go to the test's tmp dir. Any JS console error fails a test (``page``)."""

from __future__ import annotations

import base64
import io
import math
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from PIL import Image, ImageChops

from tests.support.models import ImageSystem
from tests.support.servers import ADMIN_KEY

if TYPE_CHECKING:
    from playwright.sync_api import Page

    from tests.browser.conftest import Errors

GENERATION_TIMEOUT_MS = 120_000
SESSION_COOKIE = "llmlb_dashboard"


def sign_in(page: Page, url: str, key: str) -> int:
    """Fill the sign-in form with ``key``; the status of the page the form's POST answered."""
    page.fill("#login-key", key)
    posted = f"{url}/dashboard/login"
    with page.expect_response(lambda r: r.url == posted and r.request.method == "POST") as info:
        page.click("#login-form button[type=submit]")
    page.wait_for_load_state()
    return info.value.status


def relay(url: str, cookie: str, method: str, path: str, **kwargs: object) -> httpx.Response:
    """A call to the dashboard's relay as a browser with the session cookie would make it."""
    return httpx.request(
        method,
        f"{url}/dashboard/api{path}",
        cookies={SESSION_COOKIE: cookie},
        timeout=30,
        **kwargs,  # type: ignore[arg-type]
    )


def data_url_image(src: str) -> Image.Image:
    assert src.startswith("data:image/png;base64,"), src[:40]
    return Image.open(io.BytesIO(base64.b64decode(src.partition(",")[2]))).convert("RGB")


def segment_distance(p: tuple[int, int], a: tuple[float, float], b: tuple[float, float]) -> float:
    """Distance of pixel ``p`` from the segment ``a``-``b`` (a brush stroke)."""
    (x, y), (x0, y0), (x1, y1) = p, a, b
    t = ((x - x0) * (x1 - x0) + (y - y0) * (y1 - y0)) / ((x1 - x0) ** 2 + (y1 - y0) ** 2)
    t = max(0.0, min(1.0, t))
    return math.hypot(x - (x0 + t * (x1 - x0)), y - (y0 + t * (y1 - y0)))


def mean_difference(a: Image.Image, b: Image.Image, inside: list[tuple[int, int]]) -> float:
    diff = ImageChops.difference(a, b).convert("L")
    return sum(diff.getpixel(xy) for xy in inside) / max(1, len(inside))  # type: ignore[misc]


def test_sign_in_refuses_wrong_keys_and_forged_forms(
    page: tuple[Page, Errors], image_system: ImageSystem, tmp_path: Path
) -> None:
    browser_page, errors = page
    url = image_system.router.url
    response = browser_page.goto(f"{url}/dashboard")
    assert response is not None and browser_page.url == f"{url}/dashboard/login"
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp

    assert sign_in(browser_page, url, "sk-llmlb-not-a-real-key") == 401
    assert "Incorrect API key" in browser_page.inner_text("#login-error")
    assert sign_in(browser_page, url, image_system.api_key) == 403  # a valid key, but not admin
    assert "'admin' scope" in browser_page.inner_text("#login-error")
    browser_page.screenshot(path=tmp_path / "sign-in-refused.png")
    # The browser reports the two refused sign-ins' statuses as console errors: those only.
    claimed = errors.take()
    assert len(claimed) == 2 and all("status of 40" in line for line in claimed), claimed
    assert SESSION_COOKIE not in {c["name"] for c in browser_page.context.cookies()}

    # A sign-in form posted from elsewhere (no double-submit token cookie) is refused.
    forged = httpx.post(f"{url}/dashboard/login", data={"key": ADMIN_KEY, "csrf_token": "x"}, timeout=10)
    assert forged.status_code == 403 and SESSION_COOKIE not in forged.cookies
    # The relay without a session: an OpenAI-shaped 401.
    answer = httpx.get(f"{url}/dashboard/api/v0/status", timeout=10)
    assert answer.status_code == 401
    assert answer.json()["error"]["code"] == "dashboard_session_required"


def test_dashboard_live_views_playground_and_keys(
    page: tuple[Page, Errors], image_system: ImageSystem, tmp_path: Path
) -> None:
    browser_page, errors = page
    url = image_system.router.url
    urls: list[str] = []
    browser_page.on("request", lambda request: urls.append(request.url))
    browser_page.goto(f"{url}/dashboard")
    assert sign_in(browser_page, url, ADMIN_KEY) == 303
    assert browser_page.url == f"{url}/dashboard"

    # The session cookie: HttpOnly, SameSite=Strict, scoped to /dashboard; the key is nowhere.
    (cookie,) = [c for c in browser_page.context.cookies() if c["name"] == SESSION_COOKIE]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/dashboard"
    assert SESSION_COOKIE not in browser_page.evaluate("document.cookie")

    # Overview: the node, online, and the chart's samples.
    browser_page.wait_for_selector('#nodes-table tr[data-node="sd-shared"] .status.online')
    assert "demo" in browser_page.inner_text('#nodes-table tr[data-node="sd-shared"]')
    browser_page.wait_for_function("() => document.getElementById('stat-rate').textContent !== '-'")
    browser_page.screenshot(path=tmp_path / "overview.png", full_page=True)

    browser_page.click("nav a[data-tab=models]")
    row = browser_page.wait_for_selector('#models-table tr[data-model="demo"]')
    assert row is not None and "image_generation" in row.inner_text()
    browser_page.screenshot(path=tmp_path / "models.png", full_page=True)

    # Playground: a generation at the model's native size.
    browser_page.click("nav a[data-tab=playground]")
    browser_page.wait_for_selector('#pg-model option[value="demo"]', state="attached")
    browser_page.select_option("#pg-size", "auto")
    browser_page.fill("#pg-prompt", "a lighthouse at dusk")
    browser_page.fill("#pg-steps", "2")
    browser_page.fill("#pg-seed", "11")
    browser_page.click("#pg-submit")
    generated = browser_page.wait_for_selector(
        '.result[data-mode="generate"] img', timeout=GENERATION_TIMEOUT_MS
    )
    assert generated is not None
    assert "total" in browser_page.inner_text('.result[data-mode="generate"] .timing')
    source = data_url_image(str(generated.get_attribute("src")))
    assert source.size == (64, 64)

    # Edit it with a mask painted on the canvas: one stroke across the upper left.
    browser_page.click('.result[data-mode="generate"] .use-edit')
    browser_page.wait_for_function("() => document.getElementById('pg-canvas').width === 64")
    browser_page.wait_for_selector('#pg-submit:text-is("Edit")')
    box = browser_page.locator("#pg-canvas").bounding_box()
    assert box is not None
    scale = 64 / box["width"]
    start, end = (40.0, 40.0), (130.0, 120.0)  # screen pixels from the canvas' corner
    browser_page.mouse.move(box["x"] + start[0], box["y"] + start[1])
    browser_page.mouse.down()
    browser_page.mouse.move(box["x"] + end[0], box["y"] + end[1], steps=10)
    browser_page.mouse.up()
    browser_page.fill("#pg-prompt", "a lighthouse with a red door")
    browser_page.screenshot(path=tmp_path / "mask-painted.png", full_page=True)
    browser_page.click("#pg-submit")
    edited_el = browser_page.wait_for_selector('.result[data-mode="edit"] img', timeout=GENERATION_TIMEOUT_MS)
    assert edited_el is not None
    edited = data_url_image(str(edited_el.get_attribute("src")))
    assert edited.size == (64, 64)
    # The painted stroke was redrawn; far from it, the image is what it was.
    brush = 12 * scale  # the brush's default radius (12 screen pixels), in image pixels
    (x0, y0), (x1, y1) = ((c * scale for c in p) for p in (start, end))

    pixels = [(x, y) for x in range(64) for y in range(64)]
    inside = [p for p in pixels if segment_distance(p, (x0, y0), (x1, y1)) < brush - 1]
    outside = [p for p in pixels if segment_distance(p, (x0, y0), (x1, y1)) > brush + 8]
    changed, kept = mean_difference(source, edited, inside), mean_difference(source, edited, outside)
    assert changed > 3 * kept + 2, (changed, kept)

    # Variations of the edit.
    browser_page.click('.result[data-mode="edit"] .use-variation')
    browser_page.wait_for_selector('#pg-submit:text-is("Make variations")')
    browser_page.click("#pg-submit")
    browser_page.wait_for_selector('.result[data-mode="variation"] img', timeout=GENERATION_TIMEOUT_MS)
    browser_page.screenshot(path=tmp_path / "playground.png", full_page=True)

    # Keys: create one (shown once), use it, revoke it.
    browser_page.click("nav a[data-tab=keys]")
    browser_page.fill("#key-name", "browser-made")
    browser_page.click("#key-form button[type=submit]")
    browser_page.wait_for_selector("#new-key:not([hidden])")
    new_key = browser_page.inner_text("#new-key-value").strip()
    assert new_key.startswith("sk-llmlb-")
    models = httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {new_key}"}, timeout=10)
    assert models.status_code == 200
    browser_page.screenshot(path=tmp_path / "keys-created.png", full_page=True)
    row = browser_page.locator("#keys-table tr", has_text="browser-made")
    row.locator("button[data-revoke]").click()  # arms the button
    row.locator("button[data-revoke]").click()  # revokes
    browser_page.wait_for_selector('#keys-table tr:has-text("browser-made") .status.revoked')
    refused = httpx.get(f"{url}/v1/models", headers={"authorization": f"Bearer {new_key}"}, timeout=10)
    assert refused.status_code == 401
    browser_page.click("nav a[data-tab=overview]")
    # Shown once: gone when the tab is left (on the hashchange event, a task after the click).
    browser_page.wait_for_selector("#new-key", state="hidden", timeout=5000)

    # CSRF: the session cookie alone cannot change anything; with the page's token it can.
    token = browser_page.get_attribute('meta[name="csrf-token"]', "content")
    assert token
    for headers in ({}, {"x-csrf-token": "not-the-token"}):
        forged = relay(url, cookie["value"], "POST", "/v0/keys", json={"name": "forged"}, headers=headers)
        assert forged.status_code == 403 and forged.json()["error"]["code"] == "csrf_failed"
    names = [k["name"] for k in relay(url, cookie["value"], "GET", "/v0/keys").json()["data"]]
    assert "forged" not in names
    with_token = {"x-csrf-token": token}
    made = relay(url, cookie["value"], "POST", "/v0/keys", json={"name": "csrf-ok"}, headers=with_token)
    assert made.status_code == 201
    assert relay(url, cookie["value"], "GET", "/health").status_code == 404  # the public API only

    # No key in any URL the page loaded; sign-out ends the session.
    assert urls and not [u for u in urls if ADMIN_KEY in u or new_key in u]
    browser_page.click("form.logout button")
    browser_page.wait_for_url(f"{url}/dashboard/login")
    assert relay(url, cookie["value"], "GET", "/v0/status").status_code == 401
    assert errors.take() == []
