"""The idle timeout of relays (``llmlb_core.upstream.idle_watch``): only one wait that lasts too long is a
stall; many short waits, the time between waits, and a cancellation from elsewhere are not."""

from __future__ import annotations

import asyncio
import time

import pytest

from llmlb_core.upstream.idle_watch import IdleWatch


async def wait(watch: IdleWatch, seconds: float) -> str:
    """One wait of ``seconds``: "ok", or "stalled" when the watch ended it."""
    watch.waiting()
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        if watch.stalled():
            return "stalled"
        raise
    finally:
        watch.done()
    return "ok"


async def test_a_wait_longer_than_the_bound_is_ended_at_the_bound() -> None:
    watch = IdleWatch(0.2)
    started = time.monotonic()
    assert await wait(watch, 5) == "stalled"
    assert 0.15 < time.monotonic() - started < 1
    current = asyncio.current_task()
    assert current is not None and current.cancelling() == 0  # the cancellation was taken back
    watch.close()


async def test_many_short_waits_and_the_time_between_them_do_not_add_up() -> None:
    watch = IdleWatch(0.2)
    assert [await wait(watch, 0.02) for _ in range(20)] == ["ok"] * 20  # 0.4 s in all
    await asyncio.sleep(0.5)  # not waiting (e.g. a slow client): does not count
    assert await wait(watch, 0.05) == "ok"
    assert await wait(watch, 1) == "stalled"
    watch.close()


async def test_a_cancellation_from_elsewhere_is_not_a_stall() -> None:
    watch = IdleWatch(5)
    task = asyncio.create_task(wait(watch, 5))
    await asyncio.sleep(0.05)
    task.cancel()  # e.g. the client left
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not watch.stalled()
    watch.close()
