"""The dashboard's server-side sessions and the paths its relay accepts (pure functions)."""

from __future__ import annotations

import asyncio

import pytest

from llmlb_plugins.dashboard.public_api import allowed_path
from llmlb_plugins.dashboard.sessions import (
    MemorySessions,
    SessionStore,
    SharedSessions,
    new_token,
    same_token,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store(clock: Clock, max_sessions: int = 10) -> SessionStore:
    return SessionStore(idle_s=60, max_age_s=3600, max_sessions=max_sessions, clock=clock)


def test_a_session_ends_when_idle_and_when_too_old() -> None:
    clock = Clock()
    sessions = store(clock)

    async def run() -> None:
        idle = await sessions.create("sk-a")
        assert await sessions.get(idle.id) is idle and idle.id != idle.csrf
        clock.now += 61
        assert await sessions.get(idle.id) is None  # unused for over a minute
        busy = await sessions.create("sk-b")
        for _ in range(70):  # used every 55 s: kept until it is an hour old
            clock.now += 55
            if await sessions.get(busy.id) is None:
                break
        assert clock.now - busy.created > 3600 >= clock.now - 55 - busy.created
        assert isinstance(sessions.backend, MemorySessions) and len(sessions.backend) == 0

    asyncio.run(run())


def test_sign_out_and_the_least_recently_used_session_past_the_limit_end() -> None:
    clock = Clock()
    sessions = store(clock, max_sessions=2)

    async def run() -> None:
        first, second = await sessions.create("sk-1"), await sessions.create("sk-2")
        await sessions.get(first.id)  # first is now the most recently used
        third = await sessions.create("sk-3")
        assert await sessions.get(second.id) is None
        assert await sessions.get(first.id) is first and await sessions.get(third.id) is third
        await sessions.end(first.id)
        assert await sessions.get(first.id) is None
        assert await sessions.get(None) is None and await sessions.get("") is None

    asyncio.run(run())


class FakeShared:
    """The routers' shared table as a dict (lifetimes by the test's clock)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.rows: dict[tuple[str, str], tuple[bytes, float]] = {}

    async def put(self, namespace: str, key: str, data: bytes, ttl_s: float) -> None:
        self.rows[namespace, key] = (data, self.clock() + ttl_s)

    async def get(self, namespace: str, key: str) -> bytes | None:
        row = self.rows.get((namespace, key))
        return row[0] if row is not None and row[1] > self.clock() else None

    async def touch(self, namespace: str, key: str, ttl_s: float) -> bool:
        data = await self.get(namespace, key)
        if data is not None:
            self.rows[namespace, key] = (data, self.clock() + ttl_s)
        return data is not None

    async def delete(self, namespace: str, key: str) -> bool:
        return self.rows.pop((namespace, key), None) is not None


def test_shared_sessions_keep_neither_the_key_nor_the_id_in_clear_and_keep_the_rules() -> None:
    clock = Clock()
    shared = FakeShared(clock)
    one, other = (
        SessionStore(idle_s=60, max_age_s=3600, max_sessions=1, clock=clock, shared=shared) for _ in range(2)
    )

    async def run() -> None:
        session = await one.create("sk-admin-secret")
        (((namespace, row_key), (value, _)),) = shared.rows.items()
        assert namespace == "dashboard.sessions"
        for secret in (b"sk-admin-secret", session.id.encode(), session.csrf.encode()):
            assert secret not in row_key.encode() and secret not in value
        seen = await other.get(session.id)  # another router: the same session
        assert seen is not None and (seen.admin_key, seen.csrf) == ("sk-admin-secret", session.csrf)
        assert await other.get(new_token()) is None
        # A row moved under another id's hash cannot be opened with that id.
        forged = new_token()
        shared.rows["dashboard.sessions", SharedSessions._row(forged)] = shared.rows[namespace, row_key]
        assert await other.get(forged) is None
        clock.now += 50
        assert await one.get(session.id) is not None  # used: 60 s more
        clock.now += 50
        assert await other.get(session.id) is not None
        clock.now += 61
        assert await other.get(session.id) is None  # idle
        again = await one.create("sk-admin-secret")
        for _ in range(70):
            clock.now += 55
            if await other.get(again.id) is None:
                break
        assert clock.now - again.created > 3600 >= clock.now - 55 - again.created  # max age
        third = await one.create("sk-3")
        await other.end(third.id)  # sign-out through another router
        assert await one.get(third.id) is None

    asyncio.run(run())


def test_tokens_compare_in_constant_time_and_empty_never_matches() -> None:
    assert same_token("abc", "abc")
    assert not same_token("abc", "abd")
    assert not same_token("", "")
    assert not same_token(None, "abc")


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/v0/status", True),
        ("/v0/keys/abc", True),
        ("/v1/images/generations", True),
        ("/metrics", True),
        ("/health", False),
        ("/dashboard/api/v0/status", False),
        ("/v0/../health", False),
        ("/v1/./models", False),
        ("/v0\\..\\health", False),
        ("/v2/x", False),
    ],
)
def test_the_relay_reaches_the_public_api_only(path: str, allowed: bool) -> None:
    assert allowed_path(path) is allowed
