"""The dashboard's server-side sessions and the paths its relay accepts (pure functions)."""

from __future__ import annotations

import pytest

from llmlb_plugins.dashboard.public_api import allowed_path
from llmlb_plugins.dashboard.sessions import SessionStore, same_token


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
    idle = sessions.create("sk-a")
    assert sessions.get(idle.id) is idle and idle.id != idle.csrf
    clock.now += 61
    assert sessions.get(idle.id) is None  # unused for over a minute
    busy = sessions.create("sk-b")
    for _ in range(70):  # used every 55 s: kept until it is an hour old
        clock.now += 55
        if sessions.get(busy.id) is None:
            break
    assert clock.now - busy.created > 3600 >= clock.now - 55 - busy.created
    assert len(sessions) == 0


def test_sign_out_and_the_least_recently_used_session_past_the_limit_end() -> None:
    clock = Clock()
    sessions = store(clock, max_sessions=2)
    first, second = sessions.create("sk-1"), sessions.create("sk-2")
    sessions.get(first.id)  # first is now the most recently used
    third = sessions.create("sk-3")
    assert sessions.get(second.id) is None
    assert sessions.get(first.id) is first and sessions.get(third.id) is third
    sessions.end(first.id)
    assert sessions.get(first.id) is None and sessions.get(None) is None and sessions.get("") is None


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
