"""The Forwarder on real registries (SQLite in tmp_path, real balancer and metrics) with the
nodes' HTTP faked.

The transport is an ``httpx.MockTransport`` instead of the router's aiohttp client because
these are unit tests: no sockets, no processes, milliseconds each. What the real transport
raises (``ConnectError`` for a refusal, ``ReadError`` for a reset mid-answer, ``ReadTimeout``
for a slow peer, ``RemoteProtocolError`` for broken HTTP) is covered by
tests/integration/test_upstream_transport.py against a peer on a raw socket; here the fake
raises those httpx exceptions, so failover, typed errors, lease accounting and answer checks are exercised
exactly as in production.
"""

from __future__ import annotations

import asyncio
import gzip
import inspect
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from llmlb_core.config.settings import RouterSettings
from llmlb_core.protocol import ModelAdvert, NodeRegistration
from llmlb_core.router.balancer import Balancer
from llmlb_core.router.forwarding import Forwarder, UpstreamResult, with_body_defaults
from llmlb_core.router.metrics import Metrics
from llmlb_core.router.models import ModelRegistry
from llmlb_core.router.nodes import NodeRegistry, NodeState
from llmlb_core.server.errors import (
    BadUpstreamAnswer,
    JobTimedOut,
    ModelNotFound,
    NoCapableNodes,
    NodeFailure,
    OpenAIError,
    UpstreamTimeout,
)
from llmlb_core.server.stream_body import StreamBody
from llmlb_core.storage.sqlite import Store
from llmlb_core.upstream.client import BadAnswer
from llmlb_core.upstream.relay import RelayStream
from llmlb_core.upstream.transport import UpstreamProtocolError

FLAGS = frozenset({"chat_completion"})
MODEL = "m"
PATH = "/v1/chat/completions"
OK_BODY = b'{"id":"x","object":"chat.completion"}'

Answer = httpx.Response | Awaitable[httpx.Response]
Handler = Callable[[httpx.Request], Answer]


class Cluster:
    """Real registries, balancer and metrics around a Forwarder whose nodes are functions:
    ``answers[node_name](request)`` answers what node ``node_name`` is sent."""

    def __init__(self, tmp_path: Path, *, max_retries: int = 2, **settings: Any) -> None:
        self.store = Store(tmp_path / "db.sqlite3")
        self.nodes = NodeRegistry(self.store, timeout_s=60)
        self.models = ModelRegistry(self.store, self.nodes)
        self.balancer = Balancer(self.nodes, queue_max=10, queue_timeout_s=1)
        self.metrics = Metrics(self.nodes, self.balancer)
        self.answers: dict[str, Handler] = {}
        self.sent: list[httpx.Request] = []
        self.http = httpx.AsyncClient(transport=httpx.MockTransport(self._dispatch))
        self.forward = Forwarder(
            settings=RouterSettings(data_dir=str(tmp_path), max_retries=max_retries, **settings),
            models=self.models,
            nodes=self.nodes,
            balancer=self.balancer,
            http=self.http,
            metrics=self.metrics,
        )

    async def _dispatch(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        answer = self.answers[request.url.host](request)
        return await answer if inspect.isawaitable(answer) else answer

    def add_node(self, name: str, answer: Handler, *, models: tuple[str, ...] = (MODEL,)) -> NodeState:
        """Register node ``name`` (one slot, token ``tok-<name>``) at ``http://<name>``."""
        self.answers[name] = answer
        return self.nodes.register(
            NodeRegistration(
                node_id=name,
                name=name,
                base_url=f"http://{name}",
                token=f"tok-{name}",
                runtime_types=["fake"],
                models=[ModelAdvert(id=m, capabilities=sorted(FLAGS), runtime="fake") for m in models],
                slots=1,
            )
        )

    def hosts(self) -> list[str]:
        """The nodes sent to, in order."""
        return [r.url.host for r in self.sent]

    def upstream_count(self, node: str, outcome: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "llmlb_upstream_requests_total", {"node": node, "outcome": outcome}
        )
        return value or 0.0


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    made = Cluster(tmp_path)
    yield made
    await made.http.aclose()
    made.store.close()


def unread(status: int, body: bytes, content_type: str) -> httpx.Response:
    """A response as a real transport hands it over: head read, body still to stream
    (``httpx.Response(content=bytes)`` would be read already), with its declared length."""

    async def stream() -> AsyncIterator[bytes]:
        yield body

    headers = {"content-type": content_type, "content-length": str(len(body))}
    return httpx.Response(status, content=stream(), headers=headers)


def gzipped(body: bytes) -> Handler:
    """A JSON answer sent gzip-encoded (the router asks for none: ``accept-encoding: identity``)."""

    def answer(request: httpx.Request) -> httpx.Response:
        response = unread(200, gzip.compress(body), "application/json")
        response.headers["content-encoding"] = "gzip"
        return response

    return answer


def json_answer(body: bytes = OK_BODY, status: int = 200) -> Handler:
    return lambda request: unread(status, body, "application/json")


def fails_with(exc: Exception) -> Handler:
    def answer(request: httpx.Request) -> httpx.Response:
        raise exc

    return answer


def chunked(
    *chunks: bytes, content_type: str = "text/event-stream", then: Exception | None = None
) -> Handler:
    """An answer streamed in exactly these chunks (no content-length), optionally breaking off."""

    def answer(request: httpx.Request) -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk
            if then is not None:
                raise then

        return httpx.Response(200, content=body(), headers={"content-type": content_type})

    return answer


class AsyncChunks:
    """An upload's chunks as an async iterable (what a client's body looks like to StreamBody)."""

    def __init__(self, *chunks: bytes) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


def suspect(node: NodeState) -> bool:
    return node.suspect_until > time.monotonic()


def refuse_all(content: bytes) -> None:
    """A route's ``check`` that finds every answer unusable."""
    raise BadAnswer("no images")


async def call(cluster: Cluster, **kwargs: Any) -> UpstreamResult:
    return await cluster.forward.call(
        MODEL, FLAGS, PATH, content=b'{"model":"m"}', content_type="application/json", **kwargs
    )


async def relay_all(response: Any) -> list[bytes]:
    assert isinstance(response, RelayStream)
    return [chunk async for chunk in response.relay]


# --- call: buffered answers -----------------------------------------------------------------
async def test_call_returns_the_answer_with_the_node_named(cluster: Cluster) -> None:
    node = cluster.add_node("a", json_answer())
    result = await call(cluster, check=json.loads)
    assert (result.status, result.content, result.node_id) == (200, OK_BODY, "a")
    assert result.parsed == {"id": "x", "object": "chat.completion"}  # what check made of it
    sent = cluster.sent[0]
    assert sent.url == "http://a" + PATH and sent.headers["authorization"] == "Bearer tok-a"
    assert sent.content == b'{"model":"m"}' and sent.headers["content-type"] == "application/json"
    response = result.to_response()
    assert response.status_code == 200 and response.content == OK_BODY
    assert response.headers["x-llmlb-node"] == "a" and response.media_type == "application/json"
    # The lease is back and the job counted.
    assert (node.inflight, node.completed, node.free) == (0, 1, 1)
    assert cluster.upstream_count("a", "ok") == 1


async def test_a_5xx_fails_over_to_another_node(cluster: Cluster) -> None:
    a = cluster.add_node("a", json_answer(b'{"error":{"message":"oom"}}', status=500))
    b = cluster.add_node("b", json_answer())
    result = await call(cluster)
    assert result.node_id == "b" and result.content == OK_BODY
    assert cluster.hosts() == ["a", "b"]
    assert suspect(a) and not suspect(b)
    assert [reason for _, reason in a.failures] == ["HTTP 500"]
    assert (a.inflight, b.inflight, a.completed, b.completed) == (0, 0, 0, 1)
    assert cluster.upstream_count("a", "failed") == 1 and cluster.upstream_count("b", "ok") == 1


async def test_a_refused_connection_fails_over_and_takes_the_node_out(cluster: Cluster) -> None:
    a = cluster.add_node("a", fails_with(httpx.ConnectError("refused")))
    cluster.add_node("b", json_answer())
    result = await call(cluster)
    assert result.node_id == "b" and cluster.hosts() == ["a", "b"]
    assert cluster.nodes.status(a) == "offline"  # out of traffic until its next heartbeat
    assert a.failures[-1][1] == "unreachable: ConnectError" and a.inflight == 0


async def test_a_head_that_is_not_http_is_a_bad_answer_tried_elsewhere(cluster: Cluster) -> None:
    """The transport reports a status line or header that does not parse as
    ``RemoteProtocolError`` (tests/integration/test_upstream_transport.py): the node answered
    garbage, so it is suspect (not taken out of traffic) and the request goes elsewhere."""
    a = cluster.add_node("a", fails_with(UpstreamProtocolError("Duplicate Content-Length")))
    cluster.add_node("b", json_answer())
    result = await call(cluster)
    assert result.node_id == "b" and cluster.hosts() == ["a", "b"]
    assert [r for _, r in a.failures] == ["bad answer: broken HTTP: Duplicate Content-Length"]
    assert suspect(a) and cluster.nodes.status(a) == "online"
    assert (a.inflight, a.abandoned) == (0, 0)


async def test_a_node_alone_that_answers_broken_http_is_a_502(cluster: Cluster) -> None:
    cluster.add_node("a", fails_with(UpstreamProtocolError("Bad status line")))
    with pytest.raises(BadUpstreamAnswer) as failed:
        await call(cluster)
    assert (failed.value.status, failed.value.code) == (502, "bad_upstream_response")


async def test_a_body_that_turns_to_garbage_is_a_bad_answer_tried_elsewhere(cluster: Cluster) -> None:
    a = cluster.add_node(
        "a", chunked(b'{"x":', content_type="application/json", then=UpstreamProtocolError("bad chunk size"))
    )
    cluster.add_node("b", json_answer())
    result = await call(cluster)
    assert result.node_id == "b"
    assert [r for _, r in a.failures] == ["bad answer: broken HTTP: bad chunk size"]
    assert cluster.nodes.status(a) == "online" and a.inflight == 0


async def test_an_answer_that_stalls_mid_read_is_a_timeout(cluster: Cluster) -> None:
    a = cluster.add_node(
        "a", chunked(b'{"x":', content_type="application/json", then=httpx.ReadTimeout("stalled"))
    )
    with pytest.raises(UpstreamTimeout):
        await call(cluster)
    assert a.failures[-1][1] == "answer stalled: ReadTimeout" and cluster.nodes.status(a) == "online"
    assert a.abandoned == 1  # a stalled node may still be working


async def test_when_every_node_fails_the_last_typed_failure_is_raised(cluster: Cluster) -> None:
    a = cluster.add_node("a", fails_with(httpx.ConnectError("refused")))
    b = cluster.add_node("b", json_answer(b"oops", status=503))
    c = cluster.add_node("c", fails_with(httpx.ReadTimeout("slow")))
    with pytest.raises(UpstreamTimeout) as failed:
        await call(cluster)
    assert cluster.hosts() == ["a", "b", "c"]  # max_retries=2: three attempts
    assert (failed.value.status, failed.value.code) == (504, "upstream_timeout")
    assert failed.value.message == "Node 'c' timed out"
    assert (a.inflight, b.inflight, c.inflight) == (0, 0, 0)
    assert c.abandoned == 1  # a timed-out node may still be running the job
    assert all(suspect(n) for n in (a, b, c))


async def test_running_out_of_nodes_raises_the_last_failure_not_503(cluster: Cluster) -> None:
    cluster.add_node("a", json_answer(b"", status=500))
    cluster.add_node("b", json_answer(b'{"error":{"code":"model_load_failed"}}', status=507))
    with pytest.raises(NodeFailure) as failed:
        await call(cluster)
    assert cluster.hosts() == ["a", "b"]  # a third attempt finds no node left
    assert not isinstance(failed.value, NoCapableNodes)
    # b's 507 is shown as 502; its plain-token code is kept, its message never is.
    assert (failed.value.status, failed.value.code) == (502, "model_load_failed")
    assert failed.value.message == "Node 'b' failed (HTTP 507)"


JOB_TIMEOUT_BODY = (
    b'{"error":{"message":"ran past 600 s at /srv/engine.py","type":"server_error","code":"job_timeout"}}'
)


@pytest.mark.parametrize("relayed", [False, True], ids=["call", "stream"])
async def test_a_nodes_job_timeout_is_answered_as_is_not_retried_not_suspect(
    cluster: Cluster, relayed: bool
) -> None:
    a = cluster.add_node("a", json_answer(JOB_TIMEOUT_BODY, status=504))
    b = cluster.add_node("b", json_answer())
    with pytest.raises(JobTimedOut) as failed:
        if relayed:
            await cluster.forward.stream(MODEL, FLAGS, PATH, content=b"{}", content_type="application/json")
        else:
            await call(cluster)
    assert not isinstance(failed.value, NodeFailure)  # failover does not catch it
    assert (failed.value.status, failed.value.code, failed.value.type) == (504, "job_timeout", "server_error")
    assert "/srv" not in failed.value.message and "'a'" in failed.value.message  # the node's text never shown
    assert cluster.hosts() == ["a"] and not suspect(a) and not a.failures
    assert (a.inflight, a.abandoned, b.inflight) == (0, 0, 0)  # the job is over: no slot left held


async def test_any_other_504_is_retried_and_the_node_suspect(cluster: Cluster) -> None:
    a = cluster.add_node("a", json_answer(b'{"error":{"code":"gateway_timeout"}}', status=504))
    cluster.add_node("b", json_answer())
    assert (await call(cluster)).node_id == "b"
    assert suspect(a) and [r for _, r in a.failures] == ["HTTP 504"]


async def test_max_retries_bounds_the_attempts(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, max_retries=0)
    try:
        cluster.add_node("a", json_answer(b"", status=502))
        cluster.add_node("b", json_answer())
        with pytest.raises(NodeFailure) as failed:
            await call(cluster)
        assert cluster.hosts() == ["a"] and failed.value.status == 502
    finally:
        await cluster.http.aclose()
        cluster.store.close()


async def test_a_4xx_is_answered_openai_shaped_and_not_retried(cluster: Cluster) -> None:
    a = cluster.add_node(
        "a",
        json_answer(b'{"object":"error","message":"max_tokens is too large","param":"max_tokens"}', 400),
    )
    cluster.add_node("b", json_answer())
    result = await call(cluster)
    assert cluster.hosts() == ["a"]
    assert result.status == 400 and result.content_type == "application/json"
    assert json.loads(result.content) == {
        "error": {
            "message": "max_tokens is too large (node 'a')",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": None,
        }
    }
    assert result.to_response().status_code == 400
    assert not suspect(a) and a.inflight == 0
    assert cluster.upstream_count("a", "client_error") == 1


@pytest.mark.parametrize(
    ("answer", "kwargs", "reason"),
    [
        pytest.param(
            json_answer(b"<html>hi</html>"),
            {"accept": ("text/plain",)},
            "bad answer: content type 'application/json', expected one of ['text/plain']",
            id="content-type",
        ),
        pytest.param(
            json_answer(b'{"x":"' + b"y" * 100 + b'"}'),
            {"max_answer_bytes": 64},
            "bad answer: answer of 108 bytes is over the limit of 64 bytes",
            id="declared-oversize",
        ),
        pytest.param(
            chunked(b'{"x":"', b"y" * 100, b'"}', content_type="application/json"),
            {"max_answer_bytes": 64},
            "bad answer: answer is over the limit of 64 bytes",
            id="streamed-oversize",
        ),
        pytest.param(
            json_answer(b"[1, 2]"), {}, "bad answer: the answer is not a JSON object", id="not-object"
        ),
        pytest.param(
            json_answer(b'{"images": []}'),
            {"check": refuse_all},
            "bad answer: no images",
            id="check",
        ),
        pytest.param(json_answer(b"{}", status=302), {}, "bad answer: HTTP 302", id="redirect"),
        pytest.param(
            gzipped(b"{}"), {}, "bad answer: content encoding 'gzip' (none was accepted)", id="gzip"
        ),
    ],
)
async def test_a_bad_answer_is_a_502_and_is_tried_elsewhere(
    cluster: Cluster, answer: Handler, kwargs: dict[str, Any], reason: str
) -> None:
    a = cluster.add_node("a", answer)
    b = cluster.add_node("b", answer)
    with pytest.raises(BadUpstreamAnswer) as failed:
        await call(cluster, **kwargs)
    assert cluster.hosts() == ["a", "b"]
    assert (failed.value.status, failed.value.code) == (502, "bad_upstream_response")
    assert failed.value.message == "Node 'b' sent an answer the router cannot use"
    assert [r for _, r in a.failures] == [reason] and suspect(a) and suspect(b)
    assert (a.inflight, b.inflight, a.abandoned, b.abandoned) == (0, 0, 0, 0)


async def test_a_bad_answer_then_a_good_one_succeeds(cluster: Cluster) -> None:
    cluster.add_node("a", json_answer(b"not json"))
    cluster.add_node("b", json_answer())
    result = await call(cluster)
    assert result.node_id == "b" and cluster.hosts() == ["a", "b"]


async def test_an_answer_cut_off_mid_read_is_unreachable_and_retried(cluster: Cluster) -> None:
    a = cluster.add_node(
        "a", chunked(b'{"x":', content_type="application/json", then=httpx.ReadError("reset"))
    )
    cluster.add_node("b", json_answer())
    result = await call(cluster)
    assert result.node_id == "b"
    assert a.failures[-1][1] == "answer cut: ReadError" and cluster.nodes.status(a) == "offline"
    assert a.inflight == 0 and a.abandoned == 0


async def test_unknown_model_is_404(cluster: Cluster) -> None:
    cluster.add_node("a", json_answer(), models=("other",))
    with pytest.raises(ModelNotFound) as missing:
        await call(cluster)
    assert (missing.value.status, missing.value.code, missing.value.param) == (
        404,
        "model_not_found",
        "model",
    )
    assert cluster.sent == []


async def test_known_model_without_an_online_node_is_503(cluster: Cluster) -> None:
    a = cluster.add_node("a", json_answer())
    cluster.nodes.mark_down(a, "test")
    with pytest.raises(NoCapableNodes) as none:
        await call(cluster)
    assert (none.value.status, none.value.code) == (503, "no_capable_nodes")
    assert cluster.sent == []


async def test_an_admin_registered_model_without_nodes_is_503(cluster: Cluster) -> None:
    cluster.models.register(MODEL, sorted(FLAGS), {}, "")
    with pytest.raises(NoCapableNodes):
        await call(cluster)


# --- stream: relayed answers ----------------------------------------------------------------
async def test_stream_relays_the_chunks_as_sent_and_releases_the_lease(cluster: Cluster) -> None:
    node = cluster.add_node("a", chunked(b"data: {}\n\n", b'data: {"n": 2}\n', b"\ndata: [DONE]\n\n"))
    response = await cluster.forward.stream(
        MODEL, FLAGS, PATH, content=b"{}", content_type="application/json", content_length=2
    )
    assert response.status_code == 200 and response.media_type == "text/event-stream"
    assert response.headers["x-llmlb-node"] == "a" and response.headers["cache-control"] == "no-cache"
    assert cluster.sent[0].headers["content-length"] == "2"
    assert node.inflight == 1  # held while the answer is relayed
    # Each event as soon as it is complete, as the bytes it came in (the second and [DONE] are
    # completed by the same chunk: one piece).
    assert await relay_all(response) == [b"data: {}\n\n", b'data: {"n": 2}\n\ndata: [DONE]\n\n']
    assert (node.inflight, node.abandoned, node.completed, node.free) == (0, 0, 1, 1)
    assert cluster.balancer.try_acquire(MODEL, FLAGS) is not None  # the slot is free again
    assert cluster.upstream_count("a", "ok") == 1


async def test_stream_fails_over_before_the_first_byte(cluster: Cluster) -> None:
    a = cluster.add_node("a", json_answer(b"", status=500))
    cluster.add_node("b", chunked(b'data: {"hi": 1}\n\n'))
    response = await cluster.forward.stream(
        MODEL, FLAGS, PATH, content=b"{}", content_type="application/json"
    )
    assert await relay_all(response) == [b'data: {"hi": 1}\n\n']
    assert response.headers["x-llmlb-node"] == "b" and cluster.hosts() == ["a", "b"]
    assert suspect(a) and a.inflight == 0


async def test_stream_answers_a_4xx_openai_shaped(cluster: Cluster) -> None:
    cluster.add_node("a", lambda request: unread(404, b"no such route", "text/plain"))
    cluster.add_node("b", chunked(b'data: {"hi": 1}\n\n'))
    response = await cluster.forward.stream(
        MODEL, FLAGS, PATH, content=b"{}", content_type="application/json"
    )
    assert not isinstance(response, RelayStream)
    assert response.status_code == 404 and response.headers["x-llmlb-node"] == "a"
    assert json.loads(response.content)["error"]["message"] == "no such route (node 'a')"
    assert cluster.hosts() == ["a"]


async def test_stream_refuses_an_encoded_answer(cluster: Cluster) -> None:
    a = cluster.add_node("a", gzipped(b"{}"))
    cluster.add_node("b", json_answer())
    response = await cluster.forward.stream(
        MODEL, FLAGS, PATH, content=b"{}", content_type="application/json"
    )
    assert response.headers["x-llmlb-node"] == "b"
    assert "content encoding 'gzip'" in a.failures[-1][1] and suspect(a)


async def test_stream_refuses_a_wrong_content_type(cluster: Cluster) -> None:
    a = cluster.add_node("a", chunked(b"<html>", content_type="text/html"))
    cluster.add_node("b", chunked(b"RIFF", content_type="audio/wav"))
    response = await cluster.forward.stream(
        MODEL, FLAGS, "/v1/audio/speech", content=b"{}", content_type="application/json", accept=("audio/*",)
    )
    assert response.media_type == "audio/wav" and await relay_all(response) == [b"RIFF"]
    assert "content type 'text/html'" in a.failures[-1][1] and a.inflight == 0


async def test_a_stream_that_breaks_ends_with_an_error_event(cluster: Cluster) -> None:
    node = cluster.add_node("a", chunked(b"data: {}\n\ndata: {", then=httpx.ReadError("reset")))
    response = await cluster.forward.stream(
        MODEL, FLAGS, PATH, content=b"{}", content_type="application/json"
    )
    chunks = await relay_all(response)
    assert chunks[0] == b"data: {}\n\n"  # the partial event is never sent
    event = json.loads(chunks[1].removeprefix(b"data: "))
    assert event["error"]["code"] == "upstream_stream_broken"
    assert event["error"]["message"] == "Node 'a' stopped streaming"
    assert (node.inflight, node.abandoned, node.completed) == (0, 0, 0)
    assert node.failures[-1][1] == "stream broke: ReadError"


async def test_a_stream_over_the_answer_limit_ends_with_bad_upstream_response(cluster: Cluster) -> None:
    cluster.forward.max_answer_bytes = 16
    node = cluster.add_node("a", chunked(b"data: {}\n\n", b"data: " + b"x" * 20 + b"\n\n"))
    response = await cluster.forward.stream(
        MODEL, FLAGS, PATH, content=b"{}", content_type="application/json"
    )
    chunks = await relay_all(response)
    assert chunks[0] == b"data: {}\n\n" and len(chunks) == 2  # the oversized chunk is never sent
    assert json.loads(chunks[1].removeprefix(b"data: "))["error"]["code"] == "bad_upstream_response"
    assert suspect(node) and node.inflight == 0


# --- stream: checked as it passes (llmlb_core.upstream.relay_checks) --------------------------------
EVENT = b'data: {"choices": []}\n\n'
DONE_EVENT = b"data: [DONE]\n\n"
IDLE_S = 0.3


def paced(*steps: bytes | float, content_type: str = "text/event-stream") -> Handler:
    """An answer whose body is ``steps``: bytes sent, or seconds of silence."""

    def answer(request: httpx.Request) -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            for step in steps:
                if isinstance(step, bytes):
                    yield step
                else:
                    await asyncio.sleep(step)

        return httpx.Response(200, content=body(), headers={"content-type": content_type})

    return answer


@pytest.fixture
async def idle_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """A cluster whose relays end after ``IDLE_S`` with nothing to pass on."""
    made = Cluster(tmp_path, stream_idle_timeout_s=IDLE_S)
    yield made
    await made.http.aclose()
    made.store.close()


async def open_stream(cluster: Cluster, path: str = PATH) -> RelayStream:
    response = await cluster.forward.stream(
        MODEL, FLAGS, path, content=b"{}", content_type="application/json"
    )
    assert isinstance(response, RelayStream)
    return response


def error_of(event: bytes) -> dict[str, Any]:
    error: dict[str, Any] = json.loads(event.removeprefix(b"data: "))["error"]
    return error


@pytest.mark.parametrize(
    ("first", "reason"),
    [
        (b"data: hello\n\n", "an event whose data is neither a JSON object nor [DONE]"),
        (b'data: {"a": "\xff"}\n\n', "an event that is not UTF-8"),
        (b"data: {" + b"x" * (1 << 20), "an event over the limit of 1048576 bytes"),
    ],
    ids=["not JSON", "not UTF-8", "endless event"],
)
async def test_garbage_before_the_first_event_is_tried_elsewhere(
    cluster: Cluster, first: bytes, reason: str
) -> None:
    a = cluster.add_node("a", chunked(first, EVENT))
    cluster.add_node("b", chunked(EVENT))
    response = await open_stream(cluster)
    assert response.headers["x-llmlb-node"] == "b" and await relay_all(response) == [EVENT]
    assert a.failures[-1][1].startswith(f"bad answer: {reason}") and suspect(a)
    assert (a.inflight, a.abandoned) == (0, 0)


async def test_garbage_after_the_first_event_ends_the_stream_with_an_error_event(cluster: Cluster) -> None:
    node = cluster.add_node("a", chunked(EVENT, b"event: x\n\n", b"data: [1]\n\n" + EVENT))
    chunks = await relay_all(await open_stream(cluster))
    assert chunks[0] == EVENT and len(chunks) == 2  # the unknown event dropped, the garbage never sent
    assert error_of(chunks[1])["code"] == "bad_upstream_response"
    assert suspect(node) and (node.inflight, node.abandoned) == (0, 0)
    assert cluster.upstream_count("a", "failed") == 1


async def test_a_stream_cut_before_its_first_event_is_tried_elsewhere(cluster: Cluster) -> None:
    a = cluster.add_node("a", chunked(b'data: {"cho', then=httpx.ReadError("reset")))
    cluster.add_node("b", chunked(EVENT))
    assert (await open_stream(cluster)).headers["x-llmlb-node"] == "b"
    assert a.failures[-1][1] == "answer cut: ReadError" and cluster.nodes.status(a) == "offline"


async def test_a_stream_that_stalls_before_its_first_event_is_tried_elsewhere(idle_cluster: Cluster) -> None:
    a = idle_cluster.add_node("a", paced(b": ping", 5.0, EVENT))  # a comment that never ends
    idle_cluster.add_node("b", chunked(EVENT))
    started = time.monotonic()
    response = await open_stream(idle_cluster)
    assert response.headers["x-llmlb-node"] == "b" and time.monotonic() - started < 2
    assert a.failures[-1][1] == "answer stalled: ReadTimeout" and suspect(a)
    assert a.abandoned == 1  # the node may still be working on it


@pytest.mark.parametrize(
    "stall",
    [
        pytest.param((5.0,), id="silence"),
        pytest.param((b"data: {", *[0.1, b"x"] * 50), id="a trickle that never completes an event"),
    ],
)
async def test_a_stream_with_nothing_to_pass_on_ends_with_upstream_timeout(
    idle_cluster: Cluster, stall: tuple[bytes | float, ...]
) -> None:
    node = idle_cluster.add_node("a", paced(EVENT, *stall, EVENT))
    started = time.monotonic()
    chunks = await relay_all(await open_stream(idle_cluster))
    assert chunks[0] == EVENT and len(chunks) == 2 and time.monotonic() - started < 2
    assert error_of(chunks[1])["code"] == "upstream_timeout"
    assert node.failures[-1][1] == "stream stalled: ReadTimeout" and node.abandoned == 1


async def test_keep_alives_count_as_something_to_pass_on(idle_cluster: Cluster) -> None:
    pings = [step for _ in range(8) for step in (IDLE_S / 2, b": ping\n\n")]
    idle_cluster.add_node("a", paced(EVENT, *pings, EVENT))
    chunks = await relay_all(await open_stream(idle_cluster))
    assert chunks == [EVENT, *[b": ping\n\n"] * 8, EVENT]


async def test_a_slow_client_is_not_a_stalled_upstream(idle_cluster: Cluster) -> None:
    idle_cluster.add_node("a", chunked(EVENT, EVENT, DONE_EVENT))
    response = await open_stream(idle_cluster)
    received = []
    async for chunk in response.relay:
        received.append(chunk)
        await asyncio.sleep(IDLE_S * 2)  # the client takes its time with every event
    assert received == [EVENT, EVENT, DONE_EVENT]


async def test_a_binary_stream_that_stalls_is_aborted(idle_cluster: Cluster) -> None:
    node = idle_cluster.add_node("a", paced(b"RIFF", 5.0, b"more", content_type="audio/wav"))
    response = await cluster_speech(idle_cluster)
    received: list[bytes] = []
    with pytest.raises(httpx.ReadTimeout):
        async for chunk in response.relay:
            received.append(chunk)
    assert received == [b"RIFF"] and node.failures[-1][1] == "stream stalled: ReadTimeout"


async def test_binary_and_json_answers_are_passed_as_they_come(cluster: Cluster) -> None:
    """Only server-sent events are parsed: other answers are bounded, not read as events."""
    cluster.add_node("a", chunked(b"RIFF\n\n", b"\xff\x00", content_type="audio/wav"))
    assert await relay_all(await cluster_speech(cluster)) == [b"RIFF\n\n", b"\xff\x00"]


async def test_a_relayed_document_cut_anywhere_is_tried_elsewhere(cluster: Cluster) -> None:
    """A transcript (JSON, text) is read whole before any of it goes: a cut is never sent."""
    a = cluster.add_node(
        "a",
        chunked(b'{"text": "hel', b"lo wor", content_type="application/json", then=httpx.ReadError("reset")),
    )
    cluster.add_node("b", chunked(b'{"text": ', b'"hello"}', content_type="application/json"))
    response = await open_stream(cluster, "/v1/audio/transcriptions")
    assert response.headers["x-llmlb-node"] == "b" and a.failures[-1][1] == "answer cut: ReadError"
    assert await relay_all(response) == [b'{"text": ', b'"hello"}']


async def cluster_speech(cluster: Cluster) -> RelayStream:
    response = await cluster.forward.stream(
        MODEL, FLAGS, "/v1/audio/speech", content=b"{}", content_type="application/json", accept=("audio/*",)
    )
    assert isinstance(response, RelayStream)
    return response


def stalled_body(status: int, made: list[httpx.Response], started: asyncio.Event) -> Handler:
    """A node that sends its status line and headers, then stalls before its body."""

    def answer(request: httpx.Request) -> httpx.Response:
        async def body() -> AsyncIterator[bytes]:
            started.set()
            await asyncio.sleep(60)
            yield b"{}"

        made.append(httpx.Response(status, content=body(), headers={"content-type": "application/json"}))
        return made[-1]

    return answer


async def leave_while_the_body_is_read(cluster: Cluster, started: asyncio.Event) -> None:
    """Start a relayed request, and cancel it (the client left) once the node stalls."""
    task = asyncio.create_task(
        cluster.forward.stream(MODEL, FLAGS, PATH, content=b"{}", content_type="application/json")
    )
    await asyncio.wait_for(started.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_client_that_leaves_while_a_4xx_body_is_read_frees_the_slot(cluster: Cluster) -> None:
    made: list[httpx.Response] = []
    started = asyncio.Event()
    node = cluster.add_node("a", stalled_body(400, made, started))
    await leave_while_the_body_is_read(cluster, started)
    assert node.inflight == 0 and node.free == 1
    assert made[0].is_closed


async def test_a_client_that_leaves_while_a_5xx_body_is_read_closes_the_response(
    cluster: Cluster,
) -> None:
    made: list[httpx.Response] = []
    started = asyncio.Event()
    node = cluster.add_node("a", stalled_body(500, made, started))
    await leave_while_the_body_is_read(cluster, started)
    assert node.inflight == 0  # released (as abandoned: the node may be running it)
    assert made[0].is_closed


async def test_a_client_that_leaves_mid_stream_leaves_the_slot_abandoned(cluster: Cluster) -> None:
    node = cluster.add_node("a", chunked(b"data: {}\n\n", b"data: {}\n\n"))
    response = await cluster.forward.stream(
        MODEL, FLAGS, PATH, content=b"{}", content_type="application/json"
    )
    assert isinstance(response, RelayStream)
    await response.relay.aclose()  # the client went away before the body was sent
    await response.relay.aclose()  # closing twice releases once
    assert (node.inflight, node.abandoned, node.free) == (0, 1, 0)
    assert cluster.upstream_count("a", "cancelled") == 1


async def test_a_streamed_body_is_resent_to_another_node_while_it_is_kept(cluster: Cluster) -> None:
    sent: list[int] = []

    async def upload() -> AsyncIterator[bytes]:
        for part in (b"part-1", b"part-2"):
            sent.append(1)
            yield part

    a = cluster.add_node("a", json_answer(b"", status=503))
    cluster.add_node("b", chunked(b'data: {"hi": 1}\n\n'))
    body = StreamBody(upload())
    response = await cluster.forward.stream(
        MODEL, FLAGS, PATH, content=body, content_type="application/octet-stream"
    )
    assert response.headers["x-llmlb-node"] == "b" and cluster.hosts() == ["a", "b"]
    assert [r.content for r in cluster.sent] == [b"part-1part-2"] * 2
    assert len(sent) == 2  # the client's upload was read once
    assert suspect(a) and a.inflight == 0


async def test_a_streamed_body_over_what_is_kept_is_not_retried_once_sent(cluster: Cluster) -> None:
    async def upload() -> AsyncIterator[bytes]:
        yield b"part-1"
        yield b"part-2"

    a = cluster.add_node("a", json_answer(b"", status=503))
    cluster.add_node("b", chunked(b'data: {"hi": 1}\n\n'))
    body = StreamBody(upload(), keep_bytes=8)
    with pytest.raises(NodeFailure) as failed:
        await cluster.forward.stream(
            MODEL, FLAGS, PATH, content=body, content_type="application/octet-stream"
        )
    assert cluster.hosts() == ["a"] and cluster.sent[0].content == b"part-1part-2"
    assert body.started and failed.value.status == 503
    assert a.inflight == 0


async def test_a_streamed_body_that_fails_on_our_side_is_the_clients_error(cluster: Cluster) -> None:
    async def upload() -> AsyncIterator[bytes]:
        yield b"part-1"
        raise OpenAIError(413, "File is too large", code="request_too_large")

    a = cluster.add_node("a", chunked(b'data: {"hi": 1}\n\n'))
    cluster.add_node("b", chunked(b'data: {"hi": 1}\n\n'))
    body = StreamBody(upload())
    with pytest.raises(OpenAIError) as refused:
        await cluster.forward.stream(
            MODEL, FLAGS, PATH, content=body, content_type="application/octet-stream"
        )
    assert refused.value.status == 413 and not isinstance(refused.value, NodeFailure)
    assert isinstance(body.error, OpenAIError)
    assert not a.failures and a.inflight == 0 and cluster.nodes.status(a) == "online"


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (OpenAIError(413, "File is too large"), 413, "File is too large"),
        (ValueError("bad chunk"), 400, "Reading the request body failed: bad chunk"),
    ],
)
async def test_an_upload_failure_reported_by_the_transport_is_the_clients_error(
    cluster: Cluster, error: Exception, status: int, message: str
) -> None:
    """The real transport reports a body source that failed as an httpx error; the body's own
    error is answered then, and the node is not blamed."""
    body = StreamBody(AsyncChunks(b"part-1"))

    def breaks_off(request: httpx.Request) -> httpx.Response:
        body.error = error
        raise httpx.WriteError("body source failed")

    a = cluster.add_node("a", breaks_off)
    cluster.add_node("b", chunked(b'data: {"hi": 1}\n\n'))
    with pytest.raises(OpenAIError) as refused:
        await cluster.forward.stream(
            MODEL, FLAGS, PATH, content=body, content_type="application/octet-stream"
        )
    assert (refused.value.status, refused.value.message) == (status, message)
    assert cluster.hosts() == ["a"] and not a.failures and cluster.nodes.status(a) == "online"
    assert a.inflight == 0


async def test_a_stream_body_is_sent_again_only_while_it_is_kept() -> None:
    async def upload() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"def"

    body = StreamBody(upload(), keep_bytes=4)
    first = aiter(body)
    assert await anext(first) == b"abc"  # the first attempt stops after one piece
    await first.aclose()  # type: ignore[attr-defined]
    assert body.resendable
    assert [c async for c in body] == [b"abc", b"def"]  # the kept piece, then the rest
    assert not body.resendable  # 6 bytes read: more than the 4 kept
    with pytest.raises(RuntimeError):
        _ = [c async for c in body]


# --- json: a client's body with the model's defaults ----------------------------------------
async def test_json_fills_the_models_defaults(cluster: Cluster) -> None:
    cluster.add_node("a", json_answer())
    cluster.models.register(MODEL, sorted(FLAGS), {"temperature": 0.2, "max_tokens": 64}, "")
    response = await cluster.forward.json(
        model=MODEL, flags=FLAGS, path=PATH, body=b'{"model":"m","temperature":1}', stream=False
    )
    assert response.status_code == 200 and response.content == OK_BODY
    assert response.headers["x-llmlb-node"] == "a"
    assert json.loads(cluster.sent[0].content) == {"model": "m", "temperature": 1, "max_tokens": 64}


async def test_json_streams_when_asked(cluster: Cluster) -> None:
    cluster.add_node("a", chunked(b"data: {}\n\n"))
    response = await cluster.forward.json(
        model=MODEL, flags=FLAGS, path=PATH, body=b'{"model":"m"}', stream=True
    )
    assert await relay_all(response) == [b"data: {}\n\n"]
    assert cluster.sent[0].content == b'{"model":"m"}'  # no defaults: the client's bytes


def test_body_defaults_keep_the_clients_bytes_when_nothing_is_added() -> None:
    body = b'{ "model" : "m", "temperature": 1 }'
    assert with_body_defaults(body, {}) is body
    assert with_body_defaults(body, {"temperature": 0.5}) is body


def test_body_defaults_add_only_what_is_missing() -> None:
    filled = with_body_defaults(b'{"model":"m","n":2}', {"n": 1, "size": "512x512", "style": None})
    assert json.loads(filled) == {"model": "m", "n": 2, "size": "512x512", "style": None}
    assert with_body_defaults('{"p":"é"}'.encode(), {"q": "ü"}) == '{"p":"é","q":"ü"}'.encode()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{nope", "Request body is not valid JSON"),
        (b"[1]", "Request body must be a JSON object"),
        (b'{"a":"\xff"}', "Request body is not valid UTF-8 (at byte 6)"),
    ],
)
def test_body_defaults_refuse_a_bad_body(body: bytes, message: str) -> None:
    with pytest.raises(OpenAIError) as bad:
        with_body_defaults(body, {"n": 1})
    assert (bad.value.status, bad.value.code, bad.value.message) == (400, "invalid_json", message)


@pytest.mark.parametrize("body", [b'{"p":"\\ud800"}', b'{"p":"x\\udc00y"}', b'{"t":NaN}'])
def test_body_defaults_refuse_what_is_not_json(body: bytes) -> None:
    with pytest.raises(OpenAIError) as bad:
        with_body_defaults(body, {"n": 1})
    assert (bad.value.status, bad.value.code) == (400, "invalid_json")
