"""What the node core does for every runtime: it counts the requests running on the runtime's
routes (the default ``load()`` reports them), streams until their last byte, and refuses a JSON
request for a model the runtime does not advertise, after the router's credential."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from litestar import Request, post
from litestar.handlers import BaseRouteHandler
from litestar.response import Stream

from llmlb_core.testing import lifespan
from llmlb_node.api import ModelAdvert, Runtime
from llmlb_node.app import create_node_app, requested_model
from llmlb_node.settings import NodeSettings


class Gate(Runtime):
    """Answers once ``open`` is set; advertises one model; counts nothing itself."""

    type_name = "gate"

    def __init__(self, refuse: bool = True) -> None:
        self.open = asyncio.Event()
        self.refuse_unknown_models = refuse

    def models(self) -> list[ModelAdvert]:
        return [ModelAdvert(id="gate-1", capabilities=["gate"], runtime="gate")]

    def routes(self) -> list[BaseRouteHandler]:
        runtime = self

        @post("/v1/gate", status_code=200)
        async def gate(request: Request[Any, Any, Any]) -> dict[str, Any]:
            body = await request.json()  # the body the core read is still there
            await runtime.open.wait()
            return {"model": body.get("model")}

        @post("/v1/stream", status_code=200)
        async def stream() -> Stream:
            async def parts() -> AsyncIterator[bytes]:
                yield b"a"
                await runtime.open.wait()
                yield b"b"

            return Stream(parts(), media_type="text/plain")

        return [gate, stream]


def app_of(runtime: Runtime) -> tuple[Any, dict[str, str]]:
    app = create_node_app(NodeSettings(name="n", node_id="n-1"), runtimes=[runtime], register=False)
    return app, {"authorization": f"Bearer {app.state.node_token}"}


@contextlib.asynccontextmanager
async def AsyncTestClient(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The node's app in this loop (the runtime's events are this loop's)."""
    async with lifespan(app), httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://n") as c:
        yield c


async def test_the_core_counts_a_runtimes_jobs_until_their_answers_end() -> None:
    runtime = Gate()
    app, auth = app_of(runtime)
    async with AsyncTestClient(app) as client:
        calls = [
            asyncio.create_task(client.post("/v1/gate", json={"model": "gate-1"}, headers=auth))
            for _ in range(3)
        ]
        for _ in range(100):
            await asyncio.sleep(0.01)
            if runtime.active_jobs == 3:
                break
        assert runtime.load().active_jobs == 3 and runtime.load().loaded_models == ["gate-1"]
        assert (await client.get("/health")).json()["active_jobs"] == 3
        runtime.open.set()
        assert [(await c).json() for c in calls] == [{"model": "gate-1"}] * 3
        assert runtime.active_jobs == 0
        # A refused request is never counted.
        assert (await client.post("/v1/gate", json={"model": "gate-1"})).status_code == 401
        assert runtime.active_jobs == 0


async def test_a_streamed_answer_counts_until_its_last_byte() -> None:
    runtime = Gate()
    app, auth = app_of(runtime)
    async with AsyncTestClient(app) as client:
        call = asyncio.create_task(client.post("/v1/stream", json={}, headers=auth))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if runtime.active_jobs:
                break
        assert runtime.active_jobs == 1
        runtime.open.set()
        assert (await call).content == b"ab"
        assert runtime.active_jobs == 0


@pytest.mark.parametrize("refuse", [True, False])
async def test_a_model_the_runtime_does_not_advertise_is_refused_by_the_core(refuse: bool) -> None:
    runtime = Gate(refuse=refuse)
    runtime.open.set()
    app, auth = app_of(runtime)
    async with AsyncTestClient(app) as client:
        answer = await client.post("/v1/gate", json={"model": "other"}, headers=auth)
        if refuse:
            assert answer.status_code == 404
            assert answer.json()["error"] == {
                "message": "The model 'other' does not exist on this node",
                "type": "invalid_request_error",
                "param": "model",
                "code": "model_not_found",
            }
        else:
            assert answer.json() == {"model": "other"}
        # Without the router's credential the model is not even looked at.
        assert (await client.post("/v1/gate", json={"model": "other"})).status_code == 401
        # No model, or a body that is not an object: the handler's to judge.
        assert (await client.post("/v1/gate", json={"text": "x"}, headers=auth)).json() == {"model": None}
        assert runtime.active_jobs == 0


def test_requested_model_reads_only_a_string_model_of_an_object() -> None:
    assert requested_model(b'{"model": "m", "x": [1, {"y": 2}]}') == "m"
    for body in (b'{"model": 3}', b"[]", b"{not json", b'{"x": 1}', b"[" * 1000 + b"]" * 1000, b"\xff"):
        assert requested_model(body) is None
