"""Node slots counted across routers (llmlb_core/shared/slots.py) and the router's link to Redis
(llmlb_core/shared/link.py), against a real, private redis-server (tests/support/redis.py).

Two links with different router ids stand for two routers: their claims on one node never pass
its capacity together, a dead router's slots come back once its liveness key is gone, a release
that frees a full node wakes the others (and only that one does), and a Redis that goes away
costs one warning line, then callers get SharedDown at once until it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bench._common import free_port
from llmlb_core.config.settings import SettingsError
from llmlb_core.shared.link import CHANNEL, RedisLink, SharedDown, check_redis_url
from llmlb_core.shared.slots import ROUTER_KEY, SLOTS_KEY, SharedSlots
from tests.support.redis import RedisServer, require_redis_bin

Pair = tuple[SharedSlots, SharedSlots]


async def until(predicate: Callable[[], bool]) -> None:
    """Poll another task's effect (up to 10 s; the assertion after it says what failed)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.02)


@pytest.fixture
async def routers(redis_url: str) -> AsyncIterator[tuple[SharedSlots, SharedSlots]]:
    links = [RedisLink(redis_url, router_id=name) for name in ("router-a", "router-b")]
    for link in links:
        await link.start()
    slots = (SharedSlots(links[0]), SharedSlots(links[1]))
    for side in slots:
        await side.alive()
    try:
        yield slots
    finally:
        for link in links:
            await link.stop()


async def test_two_routers_never_hold_more_than_a_nodes_slots(routers: Pair) -> None:
    a, b = routers
    assert await a.claim("gpu-1", 2) == (True, 0)
    assert await b.claim("gpu-1", 2) == (True, 1)
    assert await a.claim("gpu-1", 2) == (False, 1)  # b holds the other one
    assert await b.claim("gpu-1", 2) == (False, 1)
    await a.release({"gpu-1": (1, 2)})  # a's job ended
    assert await b.claim("gpu-1", 2) == (True, 0)
    assert await a.others("gpu-1") == 2
    assert await b.others("gpu-2") == 0  # another node: its own count
    await a.release({"gpu-1": (5, 2)})  # never below 0
    assert await a.others("gpu-1") == 2
    assert await b.others("gpu-1") == 0


async def test_releases_go_with_a_claim_in_one_round_trip(routers: Pair) -> None:
    a, b = routers
    assert await a.claim("gpu-1", 1) == (True, 0)
    assert await a.claim("gpu-2", 1) == (True, 0)
    assert await b.claim("gpu-1", 1) == (False, 1)
    # a gives both back and takes gpu-1 again, at once: b sees gpu-2 free, gpu-1 a's.
    assert await a.claim("gpu-1", 1, {"gpu-1": (1, 1), "gpu-2": (1, 1)}) == (True, 0)
    assert await b.claim("gpu-2", 1) == (True, 0)
    assert await b.claim("gpu-1", 1) == (False, 1)


async def test_a_count_written_whole_replaces_the_increments(routers: Pair) -> None:
    a, b = routers
    assert await a.claim("gpu-1", 4) == (True, 0)
    await a.set("gpu-1", 3)  # after Redis was away: what a really holds
    assert await b.others("gpu-1") == 3
    assert await b.claim("gpu-1", 4) == (True, 3)
    assert await b.claim("gpu-1", 4) == (False, 3)
    await a.set("gpu-1", 0)
    assert await b.others("gpu-1") == 0


async def test_a_dead_routers_slots_come_back(routers: Pair, redis_url: str) -> None:
    a, b = routers
    assert await b.claim("gpu-1", 1) == (True, 0)
    assert await a.claim("gpu-1", 1) == (False, 1)
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert 0 < await client.pttl(ROUTER_KEY + "router-b") <= 4000  # b must refresh it
        await client.delete(ROUTER_KEY + "router-b")  # b stopped refreshing: its key expired
        assert await a.claim("gpu-1", 1) == (True, 0)
        assert await client.hgetall(SLOTS_KEY + "gpu-1") == {b"router-a": b"1"}  # b's field dropped
    finally:
        await client.aclose()


async def test_a_clean_stop_frees_a_routers_slots_at_once(routers: Pair) -> None:
    a, b = routers
    assert await b.claim("gpu-1", 1) == (True, 0)
    await b.leave()
    assert await a.claim("gpu-1", 1) == (True, 0)


async def test_only_a_release_that_frees_a_full_node_wakes_the_others(routers: Pair, redis_url: str) -> None:
    a, b = routers
    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(CHANNEL)

    async def messages() -> list[bytes]:
        got = []
        while (message := await pubsub.get_message(timeout=0.3)) is not None:
            got.append(message["data"])
        return got

    try:
        assert await a.claim("gpu-1", 3) == (True, 0)
        assert await a.claim("gpu-1", 3) == (True, 0)
        await a.release({"gpu-1": (1, 3)})  # 2 of 3 -> 1 of 3: it was not full
        assert await messages() == []
        assert await a.claim("gpu-1", 3) == (True, 0)
        assert await b.claim("gpu-1", 3) == (True, 2)  # now 3 of 3
        await a.release({"gpu-1": (2, 3), "gpu-2": (0, 1)})  # full -> free slots: the others are told
        (woken,) = await messages()
        assert b'"k":"slots"' in woken and b'"n":"gpu-1"' in woken and b'"o":"router-a"' in woken
    finally:
        await pubsub.aclose()
        await client.aclose()


async def test_messages_reach_the_other_routers_not_the_sender(redis_url: str) -> None:
    a, b = RedisLink(redis_url, router_id="a"), RedisLink(redis_url, router_id="b")
    heard: dict[str, list[dict[str, object]]] = {"a": [], "b": []}
    a.on("keys", heard["a"].append)
    b.on("keys", heard["b"].append)
    resyncs: list[str] = []

    async def resynced() -> None:
        resyncs.append("b")

    b.on_back(resynced)
    await a.start()
    await b.start()
    try:
        await until(lambda: bool(resyncs))  # b subscribed, then resynced
        assert resyncs == ["b"]
        await a.publish("keys", why="revoked")
        await until(lambda: bool(heard["b"]))
        assert [m["why"] for m in heard["b"]] == ["revoked"]
        assert heard["a"] == []
    finally:
        await a.stop()
        await b.stop()


async def test_redis_down_is_one_warning_then_shared_down_at_once_then_back(
    redis_server: RedisServer, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    link = RedisLink(redis_url, router_id="solo")
    backs: list[float] = []

    async def back() -> None:
        backs.append(time.monotonic())

    link.on_back(back)
    await link.start()
    slots = SharedSlots(link)
    try:
        await until(lambda: len(backs) == 1)  # subscribed and resynced at start
        assert await slots.claim("gpu-1", 1) == (True, 0)
        redis_server.down()
        caplog.set_level(logging.INFO, logger="llmlb.shared")
        with pytest.raises(SharedDown):
            await slots.claim("gpu-1", 1)
        started = time.monotonic()
        for _ in range(20):  # while down: refused at once, no network wait
            with pytest.raises(SharedDown):
                await slots.release({"gpu-1": (1, 1)})
        assert time.monotonic() - started < 0.1
        assert not link.up
        redis_server.up()
        await until(lambda: len(backs) == 2)
        assert link.up and len(backs) == 2  # at start, and once back
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "unreachable" in warnings[0].getMessage() and "own accounting" in warnings[0].getMessage()
        assert await slots.claim("gpu-1", 1) == (True, 0)  # an empty Redis: counts start again
    finally:
        await link.stop()


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:6379", "redis://", "redis://:secret-pw@host:99999/0", "postgresql://h/db"]
)
def test_a_bad_redis_url_is_one_line_without_its_password(url: str) -> None:
    with pytest.raises(SettingsError) as caught:
        check_redis_url(url)
    assert "redis_url" in str(caught.value) and "secret-pw" not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_good_redis_urls_pass() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://:pw@cache.internal:6380/2", " redis://h "):
        assert check_redis_url(url) == url.strip()


def test_claims_under_uvloop_as_the_router_runs_them(redis_url: str) -> None:
    """The router serves on uvloop (uvicorn[standard]), whose transports are not asyncio's."""
    import uvloop

    async def claims() -> list[tuple[bool, int]]:
        link = RedisLink(redis_url, router_id="uv")
        await link.start()
        try:
            slots = SharedSlots(link)
            await slots.alive()
            got = [
                await slots.claim("gpu-1", 2),
                await slots.claim("gpu-1", 2),
                await slots.claim("gpu-1", 2),
            ]
            await slots.release({"gpu-1": (2, 2)})
            got.append(await slots.claim("gpu-1", 2))
            assert link.up
            return got
        finally:
            await link.stop()

    assert uvloop.run(claims()) == [(True, 0), (True, 0), (False, 0), (True, 0)]


def test_rediss_with_a_private_ca(tmp_path: Path) -> None:
    """``rediss://`` (TLS) on both connections a router opens (redis-py's and the slot pipe's),
    verified against the CA named by ``ssl_ca_certs``; a Redis whose certificate that CA did not
    sign is refused (the link stays down, one warning)."""
    import trustme

    ca, other_ca = trustme.CA(), trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    for name, blob in (
        ("ca.pem", ca.cert_pem),
        ("other.pem", other_ca.cert_pem),
        ("key.pem", cert.private_key_pem),
    ):
        blob.write_to_path(str(tmp_path / name))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    tls_port = free_port()
    tls = [
        "--tls-port", str(tls_port), "--tls-cert-file", str(tmp_path / "cert.pem"),
        "--tls-key-file", str(tmp_path / "key.pem"), "--tls-auth-clients", "no",
    ]  # fmt: skip
    server = RedisServer(require_redis_bin(), extra=tls).start()

    async def use(url: str) -> tuple[bool, list[tuple[bool, int]]]:
        link = RedisLink(url, router_id="tls")
        await link.start()
        try:
            slots = SharedSlots(link)
            got = []
            with contextlib.suppress(SharedDown):
                await slots.alive()
                got = [await slots.claim("gpu-1", 1) for _ in range(2)]
            return link.up, got
        finally:
            await link.stop()

    try:
        good = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={tmp_path / 'ca.pem'}"
        assert asyncio.run(use(good)) == (True, [(True, 0), (False, 0)])
        wrong = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={tmp_path / 'other.pem'}"
        assert asyncio.run(use(wrong)) == (False, [])
    finally:
        server.stop()


async def test_malformed_messages_are_one_line_each_and_the_listener_goes_on(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Whoever can write to Redis can send anything on the channel: raw bytes, a message of a
    known kind with missing or mistyped fields. Each is one warning line, no traceback, and
    the next good message is still handled."""
    link = RedisLink(redis_url, router_id="me")
    heard: list[str] = []

    def on_node(message: dict[str, object]) -> None:
        heard.append(str(message["id"]).upper())  # KeyError when "id" is missing

    link.on("node", on_node)
    backs: list[int] = []

    async def back() -> None:
        backs.append(1)

    link.on_back(back)
    await link.start()
    client = aioredis.Redis.from_url(redis_url)
    try:
        await until(lambda: bool(backs))
        caplog.set_level(logging.WARNING, logger="llmlb.shared")
        bad = (b"\xff\x00 not json", b'{"o": "x", "k": "node"}', b"[1, 2]")
        for raw in (*bad, b'{"o":"x","k":"node","id":"ok"}'):
            await client.publish(CHANNEL, raw)
        await until(lambda: heard == ["OK"])
        assert heard == ["OK"]
        warnings = [r for r in caplog.records if r.name == "llmlb.shared" and r.levelno == logging.WARNING]
        assert len(warnings) == len(bad), [r.getMessage() for r in warnings]
        assert all(r.exc_info is None for r in warnings)
    finally:
        await client.aclose()
        await link.stop()
