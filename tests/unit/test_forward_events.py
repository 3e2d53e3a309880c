"""``Forwarder.events``: a node's server-sent events read and checked one by one, on real
registries, balancer and metrics, with the nodes' HTTP faked by ``httpx.MockTransport`` (the
``Cluster`` of ``test_forwarding``; why a fake transport is right for unit tests is said there).
What a real router does with real sockets is in tests/integration/test_image_streaming.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmlb_core.server.errors import (
    BadUpstreamAnswer,
    OpenAIError,
    UpstreamStreamBroken,
    UpstreamUnreachable,
)
from llmlb_core.upstream.client import BadAnswer
from llmlb_core.upstream.event_stream import EventStream
from llmlb_core.upstream.sse import SSEEvent
from llmlb_core.upstream.transport import UpstreamProtocolError
from tests.unit.test_forwarding import FLAGS, MODEL, PATH, Cluster, chunked, fails_with, json_answer, suspect

EVENT = b"event: tick\ndata: 1\n\n"


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    made = Cluster(tmp_path)
    yield made
    await made.http.aclose()
    made.store.close()


class Ticks:
    """A route's check: ``tick`` events whose data is a number; ``expected`` of them in all."""

    def __init__(self, expected: int = 2) -> None:
        self.expected = expected
        self.seen = 0

    def event(self, event: SSEEvent) -> int:
        if event.event != "tick" or not event.data.isdigit():
            raise BadAnswer(f"not a tick: {event.event}")
        self.seen += 1
        return int(event.data)

    def end(self) -> None:
        if self.seen != self.expected:
            raise BadAnswer(f"{self.seen} ticks, not {self.expected}")


async def open_events(cluster: Cluster, expected: int = 2, **kwargs: Any) -> EventStream[int]:
    return await cluster.forward.events(
        MODEL,
        FLAGS,
        PATH,
        content=b'{"stream": true}',
        content_type="application/json",
        check=lambda: Ticks(expected),
        max_event_bytes=kwargs.pop("max_event_bytes", 1000),
        **kwargs,
    )


async def read(stream: EventStream[int]) -> list[int]:
    try:
        return [value async for value in stream]
    finally:
        await stream.aclose()


async def test_events_are_checked_and_the_lease_released_when_they_end(cluster: Cluster) -> None:
    node = cluster.add_node("a", chunked(b"event: tick\ndata: 1\n\nevent: ti", b"ck\ndata: 2\n\n"))
    stream = await open_events(cluster)
    assert stream.node_id == "a" and node.inflight == 1  # the lease is held while events come
    assert cluster.sent[0].headers["accept"] == "text/event-stream"
    assert await read(stream) == [1, 2]
    assert stream.completed and (node.inflight, node.abandoned, node.completed) == (0, 0, 1)
    assert cluster.upstream_count("a", "ok") == 1 and not suspect(node)


@pytest.mark.parametrize(
    "first",
    [
        json_answer(status=500),
        fails_with(httpx.ConnectError("refused")),
        chunked(b"event: nope\ndata: x\n\n"),  # refused by the check
        chunked(b'event: error\ndata: {"error": {"code": "model_load_failed"}}\n\n'),
        chunked(b"data: cut off"),  # ended inside its first event
        chunked(EVENT, content_type="application/json"),  # not an event stream
        chunked(b"", then=httpx.ReadError("reset")),
    ],
    ids=["5xx", "refused", "bad first event", "error event", "truncated", "json", "reset"],
)
async def test_a_node_that_fails_before_its_first_event_is_replaced(cluster: Cluster, first: Any) -> None:
    bad = cluster.add_node("a", first)  # registered first: picked first
    good = cluster.add_node("b", chunked(EVENT, EVENT))
    stream = await open_events(cluster)
    assert stream.node_id == "b" and await read(stream) == [1, 1]
    assert cluster.hosts() == ["a", "b"]
    assert suspect(bad) and bad.inflight == 0 and good.inflight == 0


@pytest.mark.parametrize(
    ("first", "failure", "reason"),
    [
        (chunked(b"event: ti", then=httpx.ReadError("reset")), UpstreamUnreachable, "answer cut: ReadError"),
        (
            chunked(b"event: ti", then=UpstreamProtocolError("bad chunk size")),
            BadUpstreamAnswer,
            "bad answer: broken HTTP: bad chunk size",
        ),
    ],
    ids=["cut", "broken HTTP"],
)
async def test_a_break_before_the_first_event_is_what_it_is_for_any_answer(
    cluster: Cluster, first: Any, failure: type[Exception], reason: str
) -> None:
    """Not ``upstream_stream_broken`` (a stream that began): alone, the client gets 502
    ``upstream_unreachable`` for a cut (the node out until it heartbeats) and
    ``bad_upstream_response`` for garbage (the node suspect), as a buffered answer would."""
    node = cluster.add_node("a", first)
    with pytest.raises(failure):
        await open_events(cluster)
    assert node.failures[-1][1] == reason and node.inflight == 0
    assert (cluster.nodes.status(node) == "offline") is (failure is UpstreamUnreachable)


async def test_a_4xx_before_any_event_is_an_openai_error_not_retried(cluster: Cluster) -> None:
    body = b'{"error": {"message": "Unknown LoRA \'x\'", "param": "loras", "code": "lora_not_found"}}'
    node = cluster.add_node("a", json_answer(body, status=400))
    cluster.add_node("b", chunked(EVENT, EVENT))
    with pytest.raises(OpenAIError) as caught:
        await open_events(cluster)
    error = caught.value
    assert not isinstance(error, BadUpstreamAnswer)
    assert (error.status, error.param, error.code) == (400, "loras", "lora_not_found")
    assert error.message == "Unknown LoRA 'x' (node 'a')"
    assert error.headers["x-llmlb-node"] == "a"
    assert len(cluster.sent) == 1 and node.inflight == 0 and not suspect(node)


async def test_when_every_node_fails_the_last_failure_is_raised(cluster: Cluster) -> None:
    a = cluster.add_node("a", chunked(b"event: nope\ndata: 1\n\n"))
    b = cluster.add_node("b", fails_with(httpx.ConnectError("refused")))
    with pytest.raises(UpstreamUnreachable):
        await open_events(cluster)
    assert cluster.hosts() == ["a", "b"] and suspect(a) and suspect(b)
    # The garbage-sending node may still be working until it sees the connection close.
    assert (a.inflight, a.abandoned, b.inflight, b.abandoned) == (0, 1, 0, 0)


@pytest.mark.parametrize(
    ("rest", "error", "node_ended"),
    [
        ([b"event: nope\ndata: 2\n\n"], BadUpstreamAnswer, False),  # a bad event: the node goes on
        ([b"event: tick\ndata: " + b"9" * 2000 + b"\n\n"], BadUpstreamAnswer, False),  # over the bound
        ([], BadUpstreamAnswer, True),  # ended one event short (check.end)
        ([b'event: error\ndata: {"error": {"code": "generation_failed"}}\n\n'], UpstreamStreamBroken, True),
    ],
    ids=["bad event", "huge event", "missing event", "error event"],
)
async def test_a_failure_after_the_first_event_is_typed_and_marks_the_node(
    cluster: Cluster, rest: list[bytes], error: type[Exception], node_ended: bool
) -> None:
    node = cluster.add_node("a", chunked(EVENT, *rest))
    stream = await open_events(cluster)
    values = []
    with pytest.raises(error) as caught:
        async for value in stream:
            values.append(value)
    with pytest.raises(StopAsyncIteration):  # failed once: nothing more, no second rejection
        await anext(stream)
    await stream.aclose()
    assert len(node.failures) == 1
    assert values == [1]  # the first event came through before it failed
    assert suspect(node) and stream.node_ended is node_ended
    assert node.inflight == 0 and node.abandoned == (0 if node_ended else 1)
    if error is UpstreamStreamBroken:
        assert caught.value.code == "generation_failed"  # the node's code, never its message
    assert len(cluster.sent) == 1  # nothing is retried after the first event


async def test_a_break_mid_stream_is_upstream_stream_broken(cluster: Cluster) -> None:
    node = cluster.add_node("a", chunked(EVENT, b"event: ti", then=httpx.ReadError("reset")))
    stream = await open_events(cluster)
    with pytest.raises(UpstreamStreamBroken) as caught:
        await read(stream)
    assert caught.value.status == 502 and caught.value.code == "upstream_stream_broken"
    assert suspect(node) and node.abandoned == 0 and cluster.upstream_count("a", "failed") == 1


async def test_closing_early_closes_the_upstream_and_counts_the_job_abandoned(cluster: Cluster) -> None:
    responses: list[httpx.Response] = []

    def endless(request: httpx.Request) -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            while True:
                yield EVENT
                await asyncio.sleep(0.01)

        responses.append(httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"}))
        return responses[-1]

    node = cluster.add_node("a", endless)
    stream = await open_events(cluster, expected=10**6)
    assert await anext(stream) == 1 and await anext(stream) == 1
    assert not responses[0].is_closed
    await stream.aclose()
    assert responses[0].is_closed  # the node sees its client leave
    assert (node.inflight, node.abandoned, node.completed) == (0, 1, 0)
    assert cluster.upstream_count("a", "cancelled") == 1 and not suspect(node)
    await stream.aclose()  # idempotent
    assert node.abandoned == 1
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_a_cancelled_open_releases_the_lease(cluster: Cluster) -> None:
    async def slow(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(10)
        raise AssertionError("not reached")

    node = cluster.add_node("a", slow)
    task = asyncio.create_task(open_events(cluster))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert node.inflight == 0 and node.abandoned == 1  # the node may have started the job
