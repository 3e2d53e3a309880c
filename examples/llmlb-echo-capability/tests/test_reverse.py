"""The ``reverse`` capability, tested as its author would: a router and a stand-in node in one
process (``llmlb_core.testing.Cluster``: no port, no child process). Run with
``pytest examples/llmlb-echo-capability`` (pytest-asyncio, ``asyncio_mode = "auto"``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from litestar import post
from litestar.handlers import BaseRouteHandler
from llmlb_echo_capability import plugin
from llmlb_echo_capability.protocol import FLAG, PATH

from llmlb_core.testing import Cluster
from llmlb_node.api import ModelAdvert, Runtime, RuntimeType, hookimpl


class StandIn(Runtime):
    """A node runtime that answers whatever ``answer`` holds: the capability's own tests need no
    real runtime, and can make the node misbehave."""

    type_name = "stand-in"
    answer: Any = {"model": "m-1", "text": "olleh", "object": "reverse"}

    def models(self) -> list[ModelAdvert]:
        return [ModelAdvert(id="m-1", capabilities=[FLAG], runtime="stand-in")]

    def routes(self) -> list[BaseRouteHandler]:
        @post(PATH, status_code=200)
        async def reverse() -> Any:
            return StandIn.answer

        return [reverse]


class StandInPlugin:
    @hookimpl
    def llmlb_node_register_runtimes(self, register: Callable[[RuntimeType[Any]], None]) -> None:
        register(RuntimeType(name="stand-in", factory=lambda context: StandIn(), needs_models_dir=False))


@pytest.fixture
async def cluster() -> Any:
    router = {"plugin": {"reverse": {"max_chars": 20}}, "max_retries": 0}
    async with Cluster(capabilities=[plugin], runtimes=[StandInPlugin()], router=router) as cluster:
        yield cluster


async def test_the_node_answers_and_the_client_gets_it(cluster: Cluster) -> None:
    answer = await cluster.client.post("/v1/reverse", json={"model": "m-1", "text": "hello"})
    assert answer.status_code == 200
    assert answer.json() == {"model": "m-1", "text": "olleh", "object": "reverse"}
    assert answer.headers["x-llmlb-node"] == cluster.node_id


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m-1"}, "text"),
        ({"model": "m-1", "text": 5}, "text"),
        ({"model": "m-1", "text": "hi", "temperature": 1}, "temperature"),
        ({"model": "m-1", "text": "x" * 21}, "text"),  # max_chars, from [plugin.reverse]
        ({"text": "hi"}, "model"),
    ],
)
async def test_a_bad_body_is_a_400_naming_the_field(
    cluster: Cluster, body: dict[str, Any], param: str
) -> None:
    answer = await cluster.client.post("/v1/reverse", json=body)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == param


async def test_an_unknown_model_is_a_404(cluster: Cluster) -> None:
    answer = await cluster.client.post("/v1/reverse", json={"model": "nope", "text": "hi"})
    assert (answer.status_code, answer.json()["error"]["code"]) == (404, "model_not_found")


async def test_a_node_answer_that_is_not_a_reverse_response_is_a_502(cluster: Cluster) -> None:
    StandIn.answer = {"model": "m-1", "text": 5}
    try:
        answer = await cluster.client.post("/v1/reverse", json={"model": "m-1", "text": "hi"})
    finally:
        StandIn.answer = {"model": "m-1", "text": "olleh", "object": "reverse"}
    assert (answer.status_code, answer.json()["error"]["code"]) == (502, "bad_upstream_response")


async def test_the_docs_show_the_request_and_the_answer(cluster: Cluster) -> None:
    operation = (await cluster.client.get("/docs/openapi.json")).json()["paths"][PATH]["post"]
    assert operation["requestBody"]["content"]["application/json"]["schema"]["title"] == "ReverseRequest"
    assert (
        operation["responses"]["200"]["content"]["application/json"]["schema"]["title"] == "ReverseResponse"
    )
