"""Two balancers (two routers' worth: each its own node registry on its own SQLite file, its own
link to one real Redis) sharing nodes' slots (llmlb_core/router/balancer.py with
llmlb_core/shared/slots.py): a node's one slot goes to one router at a time, a request that a
peer's slot holds up waits and is woken when the peer releases, a claim a peer beat moves on to
another node, a client that leaves mid-claim leaves nothing held, and the slots a router gave up
on come back when the node reports those jobs ended."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from llmlb_core.protocol import Heartbeat
from llmlb_core.router.balancer import Balancer
from llmlb_core.router.nodes import NodeRegistry
from llmlb_core.shared.link import RedisLink
from llmlb_core.shared.slots import SharedSlots
from tests.unit.test_balancer import FLAGS, registry


@dataclass
class Router:
    nodes: NodeRegistry
    balancer: Balancer
    slots: SharedSlots
    link: RedisLink


@pytest.fixture
async def pair(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[Router, Router]]:
    routers = []
    tasks: set[asyncio.Task[Any]] = set()
    for name in ("a", "b"):
        link = RedisLink(redis_url, router_id=f"router-{name}")
        (tmp_path / name).mkdir()
        nodes = registry(tmp_path / name, n1=["m"], n2=["m"])  # one slot each
        slots = SharedSlots(link)
        balancer = Balancer(nodes, queue_max=10, queue_timeout_s=5, shared=slots)

        def woken(message: dict[str, Any], balancer: Balancer = balancer) -> None:
            task = asyncio.get_running_loop().create_task(balancer.refresh([str(message["n"])]))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        link.on("slots", woken)  # as llmlb_core.router.replicas wires it
        await link.start()
        await slots.alive()
        routers.append(Router(nodes, balancer, slots, link))
    try:
        yield routers[0], routers[1]
    finally:
        for router in routers:
            await router.balancer.flush()
            await router.link.stop()


async def test_a_peers_slot_holds_a_request_until_the_peer_releases_it(pair: tuple[Router, Router]) -> None:
    a, b = pair
    for router in pair:
        router.nodes.set_draining("n2")  # one node, one slot
    held = await a.balancer.acquire("m", FLAGS)
    assert held.node.id == "n1"
    waiting = asyncio.create_task(b.balancer.acquire("m", FLAGS))
    await asyncio.sleep(0.3)
    assert not waiting.done() and b.balancer.queue_depth == 1
    assert b.nodes.get("n1").others_busy == 1  # type: ignore[union-attr]
    a.balancer.release(held)  # the release wakes b through a "slots" message
    lease = await asyncio.wait_for(waiting, 3)
    assert lease.node.id == "n1" and lease.queued
    assert await a.slots.others("n1") == 1  # b holds it now
    b.balancer.release(lease)
    await b.balancer.flush()
    assert await a.slots.others("n1") == 0


async def test_a_claim_a_peer_beat_moves_on_to_another_node(pair: tuple[Router, Router]) -> None:
    a, b = pair
    first = await b.balancer.acquire("m", FLAGS)
    # a's own view says both nodes are free; n1 or n2, whichever b took, is refused in Redis.
    lease = await a.balancer.acquire("m", FLAGS)
    assert lease.node.id != first.node.id and not lease.queued
    assert a.nodes.get(first.node.id).others_busy == 1  # type: ignore[union-attr]
    assert a.nodes.get(first.node.id).inflight == 0  # type: ignore[union-attr]  # the refused claim undone


async def test_a_client_that_leaves_while_claiming_holds_nothing(pair: tuple[Router, Router]) -> None:
    a, b = pair
    for i in range(30):  # cancel at every point of the claim's round trip
        task = asyncio.create_task(a.balancer.acquire("m", FLAGS))
        for _ in range(i % 6):
            await asyncio.sleep(0)
        if i % 6 == 5:
            await asyncio.sleep(0.001 * (i % 4))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            a.balancer.release(await task)
    await asyncio.sleep(0.2)
    await a.balancer.flush()
    assert [n.inflight for n in a.nodes.all()] == [0, 0]
    assert await b.slots.others("n1") == 0 and await b.slots.others("n2") == 0


async def test_slots_given_up_on_come_back_when_the_node_reports_the_jobs_ended(
    pair: tuple[Router, Router],
) -> None:
    a, b = pair
    for router in pair:
        router.nodes.set_draining("n2")
    lease = await a.balancer.acquire("m", FLAGS)
    a.balancer.release(lease, abandoned=True)  # the client left; the node may still run it
    await a.balancer.flush()
    assert await b.slots.others("n1") == 1  # still held, for every router
    assert a.nodes.heartbeat(Heartbeat(node_id="n1", active_jobs=1, free_slots=0))
    await a.balancer.flush()
    assert await b.slots.others("n1") == 1  # the node still runs it
    assert a.nodes.heartbeat(Heartbeat(node_id="n1", active_jobs=0, free_slots=1))
    await asyncio.sleep(0.1)
    await a.balancer.flush()
    assert await b.slots.others("n1") == 0
