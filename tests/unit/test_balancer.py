"""The balancer on a real node registry (SQLite file): slots, FIFO per kind of request,
no head-of-line blocking across models, waiters failed when their last node goes away."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from llmlb_core.protocol import ModelAdvert, NodeRegistration
from llmlb_core.router.balancer import Balancer
from llmlb_core.router.nodes import NodeRegistry
from llmlb_core.server.errors import OpenAIError
from llmlb_core.storage.sqlite import Store

FLAGS = frozenset({"image_generation"})


def registry(tmp_path: Path, **models_by_node: list[str]) -> NodeRegistry:
    nodes = NodeRegistry(Store(tmp_path / "db.sqlite3"), timeout_s=60)
    for name, models in models_by_node.items():
        nodes.register(
            NodeRegistration(
                node_id=name,
                name=name,
                base_url=f"http://{name}",
                token="t",
                runtime_types=["x"],
                models=[ModelAdvert(id=m, capabilities=["image_generation"], runtime="x") for m in models],
                slots=1,
            )
        )
    return nodes


async def test_a_waiter_for_another_model_is_not_blocked_by_the_queue_head(tmp_path: Path) -> None:
    nodes = registry(tmp_path, a=["model-a"], b=["model-b"])
    balancer = Balancer(nodes, queue_max=10, queue_timeout_s=5)
    lease_a = await balancer.acquire("model-a", FLAGS)
    lease_b = await balancer.acquire("model-b", FLAGS)
    waiting_a = asyncio.create_task(balancer.acquire("model-a", FLAGS))
    waiting_b = asyncio.create_task(balancer.acquire("model-b", FLAGS))
    await asyncio.sleep(0.01)
    assert balancer.queue_depth == 2
    balancer.release(lease_b)  # frees b: the b waiter, behind the a waiter, gets it at once
    got_b = await asyncio.wait_for(waiting_b, 1)
    assert got_b.node.id == "b" and got_b.queued and not waiting_a.done()
    balancer.release(lease_a)
    assert (await asyncio.wait_for(waiting_a, 1)).node.id == "a"
    assert balancer.queue_depth == 0


async def test_fifo_within_a_model_and_full_queue(tmp_path: Path) -> None:
    nodes = registry(tmp_path, a=["m"])
    balancer = Balancer(nodes, queue_max=3, queue_timeout_s=5)
    first = await balancer.acquire("m", FLAGS)
    waiters = [asyncio.create_task(balancer.acquire("m", FLAGS)) for _ in range(3)]
    await asyncio.sleep(0.01)
    with pytest.raises(OpenAIError) as full:
        await balancer.acquire("m", FLAGS)
    assert full.value.status == 429 and int(full.value.headers["Retry-After"]) >= 1
    order = []
    lease = first
    for _ in waiters:
        balancer.release(lease)
        await asyncio.sleep(0.01)
        finished = [w for w in waiters if w.done() and w not in order]
        assert len(finished) == 1
        order.append(finished[0])
        lease = finished[0].result()
    assert order == waiters  # served in arrival order
    assert [w.result().queue_position for w in waiters] == [1, 2, 3]


async def test_waiters_fail_with_503_when_their_last_node_goes(tmp_path: Path) -> None:
    nodes = registry(tmp_path, a=["m"])
    balancer = Balancer(nodes, queue_max=10, queue_timeout_s=5)
    await balancer.acquire("m", FLAGS)
    waiting = asyncio.create_task(balancer.acquire("m", FLAGS))
    await asyncio.sleep(0.01)
    nodes.deregister("a")
    with pytest.raises(OpenAIError) as gone:
        await asyncio.wait_for(waiting, 1)
    assert gone.value.status == 503 and gone.value.code == "no_capable_nodes"
    assert balancer.queue_depth == 0


async def test_queue_timeout_is_504_and_leaves_no_waiter(tmp_path: Path) -> None:
    nodes = registry(tmp_path, a=["m"])
    balancer = Balancer(nodes, queue_max=10, queue_timeout_s=0.05)
    await balancer.acquire("m", FLAGS)
    with pytest.raises(OpenAIError) as late:
        await balancer.acquire("m", FLAGS)
    assert late.value.status == 504 and balancer.queue_depth == 0
    assert late.value.code == "queue_timeout" and late.value.headers == {"Retry-After": "1"}


async def test_retry_after_is_the_same_estimate_for_a_full_queue_and_a_timed_out_wait(tmp_path: Path) -> None:
    nodes = registry(tmp_path, a=["m"], b=["m"])
    for node in nodes.candidates("m", FLAGS):
        node.record_duration(7.0)  # 7 s per job on each of the two slots
    balancer = Balancer(nodes, queue_max=3, queue_timeout_s=0.05)
    await balancer.acquire("m", FLAGS)
    await balancer.acquire("m", FLAGS)
    waiting = [asyncio.create_task(balancer.acquire("m", FLAGS)) for _ in range(3)]
    await asyncio.sleep(0)
    with pytest.raises(OpenAIError) as full:
        await balancer.acquire("m", FLAGS)
    assert (full.value.status, full.value.headers) == (429, {"Retry-After": "14"})  # 7 s x 4 jobs / 2 slots
    retry_after = []
    for task in waiting:
        with pytest.raises(OpenAIError) as late:
            await task
        assert late.value.status == 504
        retry_after.append(int(late.value.headers["Retry-After"]))
    # Each waiter that gives up counts the waiters still behind it plus one, over the slots.
    assert sorted(retry_after) == [math.ceil(7.0 * ahead / 2) for ahead in (1, 2, 3)]
