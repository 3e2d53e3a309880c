"""Guessing the admin key at the dashboard's sign-in (issue 17, item 7), as the attack run did it:
a real router process, 60 wrong keys posted as fast as one client can, each with a valid sign-in
form token. Other client addresses come through ``X-Forwarded-For``, which the router takes from
a proxy on loopback (uvicorn's default trusted proxy), as behind nginx on the same host."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.servers import ADMIN_KEY, Proc, router_proc

ATTACKER = "203.0.113.7"
ADMIN_ADDRESS = "198.51.100.2"


@pytest.fixture
def router(tmp_path: Path) -> Iterator[Proc]:
    proc = router_proc(tmp_path)
    try:
        yield proc.start().wait_healthy()
    finally:
        proc.stop()


def sign_in(client: httpx.Client, key: str) -> httpx.Response:
    """A sign-in as the form sends it: its token from the page (and its cookie), then the key."""
    page = client.get("/dashboard/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None, page.text
    return client.post("/dashboard/login", data={"csrf_token": token.group(1), "key": key})


def client_from(router: Proc, address: str) -> httpx.Client:
    return httpx.Client(base_url=router.url, headers={"x-forwarded-for": address}, timeout=10)


def test_sixty_wrong_keys_in_a_burst_are_cut_off_after_ten(router: Proc) -> None:
    statuses = []
    started = time.monotonic()
    with client_from(router, ATTACKER) as attacker:
        for i in range(60):
            statuses.append(sign_in(attacker, f"sk-llmlb-guess-{i:04d}-0123456789abcdef").status_code)
        took = time.monotonic() - started
        assert statuses == [401] * 10 + [429] * 50, statuses
        refused = sign_in(attacker, "sk-llmlb-one-more-guess-0123456789")
        assert refused.status_code == 429 and "text/html" in refused.headers["content-type"]
        wait_s = int(refused.headers["retry-after"])
        assert 50 <= wait_s <= 60 and took < 10
        assert f"Too many failed sign-ins from your address: try again in {wait_s} s." in refused.text
        assert "default-src 'none'" in refused.headers["content-security-policy"]  # still the page's
        # While it waits, even the right key is refused: the lock would tell a guesser nothing.
        assert sign_in(attacker, ADMIN_KEY).status_code == 429

        # The admin, from another address, signs in; the attacker's lock goes on.
        with client_from(router, ADMIN_ADDRESS) as admin:
            assert sign_in(admin, ADMIN_KEY).status_code == 303
        assert sign_in(attacker, "sk-llmlb-after-the-admin-0123456789").status_code == 429
    assert router.log().count(f"dashboard: 10 failed sign-ins from '{ATTACKER}'") == 1


def test_refused_forms_and_keys_of_another_scope_count_and_a_broken_form_does_not(router: Proc) -> None:
    with client_from(router, ATTACKER) as attacker:
        for _ in range(20):  # forged forms (no token) are refused before any key is looked at
            forged = attacker.post("/dashboard/login", data={"csrf_token": "x", "key": ADMIN_KEY})
            assert forged.status_code == 403
        shapes = [sign_in(attacker, "not a key with spaces").status_code for _ in range(5)]
        shapes += [sign_in(attacker, f"sk-llmlb-guess-{i}-0123456789abcdef").status_code for i in range(5)]
        assert shapes == [400] * 5 + [401] * 5
        assert sign_in(attacker, ADMIN_KEY).status_code == 429
