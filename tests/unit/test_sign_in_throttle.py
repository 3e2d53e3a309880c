"""Failed dashboard sign-ins per client address (issue 17, item 7), on a clock the test moves:
the lock, its end, one address never touching another's count, and bounded memory however many
addresses an attacker has."""

from __future__ import annotations

from llmlb_plugins.dashboard.throttle import MAX_ADDRESS_CHARS, SignInThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttle(clock: Clock, max_addresses: int = 100) -> SignInThrottle:
    return SignInThrottle(max_failures=10, window_s=60.0, max_addresses=max_addresses, clock=clock)


def test_ten_failures_a_minute_then_a_wait_until_the_window_ends() -> None:
    clock = Clock()
    limit = throttle(clock)
    locked = [limit.failed("203.0.113.7") for _ in range(10)]
    assert locked == [False] * 9 + [True]  # the tenth failure locks the address (logged once)
    clock.now += 0.2
    assert limit.retry_after_s("203.0.113.7") == 60  # 59.8 s left, whole seconds up
    clock.now += 45
    assert limit.retry_after_s("203.0.113.7") == 15
    clock.now += 15
    assert limit.retry_after_s("203.0.113.7") is None  # the window ended: a fresh start
    assert [limit.failed("203.0.113.7") for _ in range(10)][-1] is True


def test_failures_spread_over_more_than_the_window_never_lock() -> None:
    clock = Clock()
    limit = throttle(clock)
    for _ in range(30):
        assert limit.retry_after_s("198.51.100.2") is None
        limit.failed("198.51.100.2")
        clock.now += 7  # 9 failures per 60-second window at most
    assert limit.retry_after_s("198.51.100.2") is None


def test_one_address_neither_counts_against_nor_clears_another() -> None:
    clock = Clock()
    limit = throttle(clock)
    for _ in range(10):
        limit.failed("203.0.113.7")
    assert limit.retry_after_s("198.51.100.2") is None  # the admin elsewhere may sign in
    for _ in range(9):
        limit.failed("198.51.100.2")
    assert limit.retry_after_s("198.51.100.2") is None
    assert limit.retry_after_s("203.0.113.7") == 60  # still locked, whatever the other did


def test_memory_is_bounded_whatever_the_number_of_addresses() -> None:
    clock = Clock()
    limit = throttle(clock, max_addresses=1000)
    for i in range(100_000):
        limit.failed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(limit) == 1000
    limit.failed("x" * 10_000)  # an address a trusted proxy forwarded, cut to its first characters
    assert len(limit) == 1000 and limit.retry_after_s("x" * MAX_ADDRESS_CHARS) is None
    clock.now += 61
    limit.failed("203.0.113.7")  # windows that ended make room first
    assert len(limit) == 1


def test_the_newest_windows_survive_a_flood() -> None:
    clock = Clock()
    limit = throttle(clock, max_addresses=1000)
    for _ in range(10):
        limit.failed("203.0.113.7")
    for i in range(999):
        clock.now += 0.001
        limit.failed(f"10.0.{i >> 8}.{i & 255}")
    assert limit.retry_after_s("203.0.113.7") is not None  # full, nothing evicted yet
    limit.failed("10.9.9.9")
    assert limit.retry_after_s("203.0.113.7") is None  # the oldest window went first
