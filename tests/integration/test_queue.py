"""Balancing and the bounded wait queue over real loopback HTTP (echo runtime with a delay)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.support.echo_plugin import EchoCapability, EchoRuntimePlugin
from tests.support.inproc import start_node, start_router
from tests.support.servers import ADMIN_KEY

AUTH = {"authorization": f"Bearer {ADMIN_KEY}"}


async def test_full_queue_answers_429_with_retry_after_and_queued_requests_report_wait(
    tmp_path: Path,
) -> None:
    router = start_router(tmp_path / "data", plugins=[EchoCapability()], queue_max=1)
    node = None
    try:
        node = start_node(router.url, [EchoRuntimePlugin(slots=1)], name="slow", runtimes=["echo"])
        async with httpx.AsyncClient(base_url=router.url, headers=AUTH, timeout=30) as client:

            async def call(delay: float) -> httpx.Response:
                return await client.post("/v1/echo", json={"model": "echo-1", "delay": delay})

            running = asyncio.create_task(call(1.0))
            await asyncio.sleep(0.3)
            queued = asyncio.create_task(call(0.0))
            await asyncio.sleep(0.3)
            rejected = await call(0.0)
            assert rejected.status_code == 429
            assert int(rejected.headers["retry-after"]) >= 1
            error = rejected.json()["error"]
            assert error["code"] == "queue_full" and error["type"] == "rate_limit_error"
            first, second = await running, await queued
        assert first.status_code == 200 and "x-queue-status" not in first.headers
        assert second.status_code == 200
        assert second.headers["x-queue-status"] == "queued"
        assert int(second.headers["x-queue-wait-ms"]) >= 300
    finally:
        if node is not None:
            node.stop()
        router.stop()


async def test_queue_wait_timeout_is_504(tmp_path: Path) -> None:
    router = start_router(tmp_path / "data", plugins=[EchoCapability()], queue_timeout_s=0.3)
    node = None
    try:
        node = start_node(router.url, [EchoRuntimePlugin(slots=1)], name="slow", runtimes=["echo"])
        async with httpx.AsyncClient(base_url=router.url, headers=AUTH, timeout=30) as client:
            running = asyncio.create_task(client.post("/v1/echo", json={"model": "echo-1", "delay": 1.0}))
            await asyncio.sleep(0.2)
            timed_out = await client.post("/v1/echo", json={"model": "echo-1"})
            assert timed_out.status_code == 504
            assert timed_out.json()["error"]["code"] == "queue_timeout"
            assert int(timed_out.headers["retry-after"]) >= 1  # when to come back, as for a full queue
            assert (await running).status_code == 200
    finally:
        if node is not None:
            node.stop()
        router.stop()


async def test_requests_spread_over_nodes_by_free_slots(tmp_path: Path) -> None:
    router = start_router(tmp_path / "data", plugins=[EchoCapability()])
    nodes = []
    try:
        for name in ("a", "b"):
            nodes.append(start_node(router.url, [EchoRuntimePlugin(slots=2)], name=name, runtimes=["echo"]))
        async with httpx.AsyncClient(base_url=router.url, headers=AUTH, timeout=30) as client:
            responses = await asyncio.gather(
                *(client.post("/v1/echo", json={"model": "echo-1", "delay": 0.5}) for _ in range(4))
            )
        served = sorted(r.json()["node"] for r in responses)
        assert served == ["a", "a", "b", "b"]  # 4 slots, 4 requests: no queueing, no doubling up
        assert all("x-queue-status" not in r.headers for r in responses)
    finally:
        for node in nodes:
            node.stop()
        router.stop()


def test_unknown_model_is_404_and_model_without_online_node_is_503(tmp_path: Path) -> None:
    router = start_router(tmp_path / "data", plugins=[EchoCapability()])
    try:
        unknown = httpx.post(f"{router.url}/v1/echo", json={"model": "nope"}, headers=AUTH)
        assert unknown.status_code == 404
        assert unknown.json()["error"]["code"] == "model_not_found"
        registered = httpx.post(
            f"{router.url}/v0/models", headers=AUTH, json={"id": "echo-1", "capabilities": ["echo"]}
        )
        assert registered.status_code == 201
        offline = httpx.post(f"{router.url}/v1/echo", json={"model": "echo-1"}, headers=AUTH)
        assert offline.status_code == 503
        assert offline.json()["error"]["code"] == "no_capable_nodes"
        deleted = httpx.delete(f"{router.url}/v0/models/echo-1", headers=AUTH)
        assert deleted.status_code == 200
        assert httpx.post(f"{router.url}/v1/echo", json={"model": "echo-1"}, headers=AUTH).status_code == 404
    finally:
        router.stop()


def test_metrics_exposition(tmp_path: Path) -> None:
    router = start_router(tmp_path / "data", plugins=[EchoCapability()])
    node = None
    try:
        # A stable id (the default one is random per process): the metrics are labelled by id.
        node = start_node(router.url, [EchoRuntimePlugin()], name="m", node_id="m", runtimes=["echo"])
        assert httpx.post(f"{router.url}/v1/echo", json={"model": "echo-1"}, headers=AUTH).status_code == 200
        assert httpx.get(f"{router.url}/metrics").status_code == 401  # admin key required by default
        text = httpx.get(f"{router.url}/metrics", headers=AUTH).text
        assert 'llmlb_requests_total{method="POST",route="/v1/echo",status="200"} 1.0' in text
        assert 'llmlb_upstream_requests_total{node="m",outcome="ok"} 1.0' in text
        assert 'llmlb_node_up{name="m",node="m",status="online"} 1.0' in text
        assert "llmlb_queue_depth 0.0" in text
        assert 'llmlb_request_duration_seconds_bucket{le="0.5",route="/v1/echo"}' in text
    finally:
        if node is not None:
            node.stop()
        router.stop()


def test_metrics_forget_deregistered_nodes(tmp_path: Path) -> None:
    router = start_router(tmp_path / "data", plugins=[EchoCapability()])
    node = None
    try:
        node = start_node(router.url, [EchoRuntimePlugin()], name="gone", node_id="gone", runtimes=["echo"])
        assert httpx.post(f"{router.url}/v1/echo", json={"model": "echo-1"}, headers=AUTH).status_code == 200
        assert 'node="gone"' in httpx.get(f"{router.url}/metrics", headers=AUTH).text
        node.stop()  # deregisters on shutdown
        node = None
        assert 'node="gone"' not in httpx.get(f"{router.url}/metrics", headers=AUTH).text
    finally:
        if node is not None:
            node.stop()
        router.stop()
