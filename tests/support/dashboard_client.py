"""Driving the dashboard over plain HTTP (no browser): sign in with the admin key, read the CSRF
token a page carries."""

from __future__ import annotations

import re

import httpx

from tests.support.servers import ADMIN_KEY

COOKIE = "llmlb_dashboard"


def sign_in(client: httpx.Client) -> str:
    """Sign ``client`` in with the admin key; the session cookie's value."""
    form = client.get("/dashboard/login").text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert token is not None
    answer = client.post("/dashboard/login", data={"csrf_token": token.group(1), "key": ADMIN_KEY})
    assert answer.status_code == 303, answer.text
    session = client.cookies.get(COOKIE)
    assert session
    return session


def csrf_of(page: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert found is not None
    return found.group(1)
