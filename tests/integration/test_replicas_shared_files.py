"""Two routers (in-process apps on real loopback HTTP) on one real PostgreSQL database: what
crosses routers through the shared table (docs/scaling.md). An image made with
``response_format=url`` through router A is served by router B, with the same headers, until
its lifetime ends on both; a dashboard sign-in through A works through B, and a sign-out
through B ends it on A. The node is a FAKE (``tests.support.fake_node``) registered with A:
what is tested is the routers, and the cheapest well-formed image answer does."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.dashboard_client import csrf_of, sign_in
from tests.support.fake_node import FakeNode, images_answer
from tests.support.inproc import start_router
from tests.support.servers import ADMIN_KEY, ThreadServer, create_key, wait_until

GENERATIONS = "/v1/images/generations"
TTL_MINUTES = 0.05  # 3 s
ADVERT = {
    "id": "img",
    "capabilities": ["image_generation", "image_edit"],
    "runtime": "stable_diffusion",
    "details": {"family": "sd1", "label": "SD", "native_size": "64x64", "supports": {}},
}
AUTH = {"authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture
def routers(postgres_url: str, tmp_path: Path) -> Iterator[tuple[ThreadServer, ThreadServer]]:
    started: list[ThreadServer] = []
    try:
        for name in ("a", "b"):
            started.append(
                start_router(
                    tmp_path / name,
                    database_url=postgres_url,
                    plugin={"images": {"url_ttl_minutes": TTL_MINUTES}},
                )
            )
        yield started[0], started[1]
    finally:
        for server in reversed(started):
            server.stop()


def test_an_image_url_from_one_router_is_served_by_the_other_until_it_expires(
    routers: tuple[ThreadServer, ThreadServer], tmp_path: Path
) -> None:
    a, b = routers
    node = FakeNode(a.url, create_key(a.url, ["node"], name="n1"), "n1", [ADVERT]).start()
    try:
        wait_until(lambda: httpx.get(f"{a.url}/v1/models", headers=AUTH).json()["data"] != [], 10, "model")
        planned = images_answer(2)
        node.answers[GENERATIONS] = planned
        made = time.monotonic()
        answer = httpx.post(
            f"{a.url}{GENERATIONS}",
            json={"model": "img", "prompt": "p", "n": 2, "response_format": "url"},
            headers=AUTH,
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        sent = [base64.b64decode(d["b64_json"]) for d in json.loads(planned.body)["data"]]
        names = [d["url"].rpartition("/")[2] for d in answer.json()["data"]]
        for router in (b, a):
            for name, data in zip(names, sent, strict=True):
                image = httpx.get(f"{router.url}/v1/images/files/{name}", timeout=10)
                assert image.status_code == 200 and image.content == data
                assert image.headers["content-type"] == "image/png"
                assert image.headers["content-disposition"] == f'inline; filename="{name}"'
                policy = image.headers["content-security-policy"]
                assert policy == "default-src 'none'; style-src 'unsafe-inline'; sandbox"
                assert image.headers.get_list("x-content-type-options") == ["nosniff"]
        assert not any((tmp_path / "a" / "images").iterdir())  # in the database, not on A's disk
        time.sleep(max(0.0, made + TTL_MINUTES * 60 + 0.5 - time.monotonic()))
        for router in (a, b):
            gone = httpx.get(f"{router.url}/v1/images/files/{names[0]}", timeout=10)
            assert gone.status_code == 404 and gone.json()["error"]["code"] == "image_expired"
    finally:
        node.stop()


def test_a_dashboard_session_from_one_router_works_through_the_other(
    routers: tuple[ThreadServer, ThreadServer],
) -> None:
    a, b = routers
    with httpx.Client(base_url=a.url, timeout=10) as on_a, httpx.Client(base_url=b.url, timeout=10) as on_b:
        session = sign_in(on_a)
        on_b.cookies.set("llmlb_dashboard", session)
        page = on_b.get("/dashboard")  # signed in through A, the page through B
        assert page.status_code == 200, page.text
        assert csrf_of(page.text) == csrf_of(on_a.get("/dashboard").text)
        status = on_b.get("/dashboard/api/v0/status")  # relayed with the admin key
        assert status.status_code == 200, status.text
        made = on_b.post(
            "/dashboard/api/v0/keys",
            json={"name": "through-b", "scopes": ["api"]},
            headers={"x-csrf-token": csrf_of(page.text)},
        )
        assert made.status_code == 201, made.text
        out = on_b.post("/dashboard/logout", data={"csrf_token": csrf_of(page.text)})
        assert out.status_code == 303
        on_a_again = on_a.get("/dashboard")  # signed out through B: ended on A too
        assert on_a_again.status_code == 303 and on_a_again.headers["location"].endswith("/dashboard/login")
        assert on_a.get("/dashboard/api/v0/status").status_code == 401
