"""``llmlb_core.testing.Cluster``: a router and a node in one process, through ASGI transports
(no port, no child process), with their lifespans, keys made, and the settings read as the
processes read them, the environment included."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import pytest
from litestar import Response
from litestar.handlers import BaseRouteHandler

from llmlb_core.api import Capability, CapabilityContext, answer_type, hookimpl, json_route
from llmlb_core.testing import ADMIN_KEY, Cluster
from llmlb_node.api import ModelAdvert, Runtime, RuntimeContext, RuntimeType
from llmlb_node.api import hookimpl as node_hookimpl
from tests.support.echo_plugin import EchoCapability, EchoRuntimePlugin


async def test_a_cluster_serves_a_capability_through_its_node_in_process() -> None:
    started = time.monotonic()
    async with Cluster(capabilities=[EchoCapability()], runtimes=[EchoRuntimePlugin()]) as cluster:
        answer = await cluster.client.post("/v1/echo", json={"model": "echo-1", "text": "hi"})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"echo": "hi", "node": "testing-node"}
        assert answer.headers["x-llmlb-node"] == cluster.node_id
        nodes = (await cluster.admin.get("/v0/nodes")).json()["data"]
        assert [(n["id"], n["status"], n["runtime_types"]) for n in nodes] == [
            (cluster.node_id, "online", ["echo"])
        ]
        assert (await cluster.client.get("/v0/nodes")).status_code == 403  # an api key, not admin
        assert cluster.admin.headers["authorization"] == f"Bearer {ADMIN_KEY}"
        assert (await cluster.node_client.get("/health")).json()["registered"] is True
        await cluster.heartbeat()
    assert time.monotonic() - started < 5


async def test_without_runtimes_a_cluster_is_a_router_alone() -> None:
    async with Cluster(capabilities=[EchoCapability()]) as cluster:
        assert cluster.node_app is None
        answer = await cluster.client.post("/v1/echo", json={"model": "echo-1"})
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "model_not_found"


class Words(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    words: list[str] = msgspec.field(default_factory=list)


class Ask(msgspec.Struct, kw_only=True):
    model: str


class Told(msgspec.Struct, kw_only=True):
    words: list[str]


class WordsCapability:
    @hookimpl
    def llmlb_register_capabilities(self, register: Callable[[Capability[Any]], None]) -> None:
        def build(context: CapabilityContext[Words]) -> Sequence[BaseRouteHandler]:
            @json_route("/v1/words", Ask, Told)
            async def words(ask: Ask, body: bytes) -> Response[bytes]:
                result = await context.forward.call(
                    ask.model, frozenset({"words"}), "/v1/words", content=body,
                    content_type="application/json", check=answer_type(Told),
                )  # fmt: skip
                merged = {"router": context.settings.words, "node": result.parsed.words}
                return Response(msgspec.json.encode(merged), media_type="application/json")

            return [words]

        register(
            Capability(name="words", model_flags=frozenset({"words"}), build_routes=build, settings=Words)
        )


class WordsRuntime(Runtime):
    type_name = "words"

    def __init__(self, context: RuntimeContext[Words]) -> None:
        self.settings = context.settings

    def models(self) -> list[ModelAdvert]:
        return [ModelAdvert(id="words-1", capabilities=["words"], runtime="words")]

    def routes(self) -> list[BaseRouteHandler]:
        @json_route("/v1/words", Ask)
        async def words(ask: Ask) -> Told:
            return Told(words=self.settings.words)

        return [words]


class WordsRuntimePlugin:
    @node_hookimpl
    def llmlb_node_register_runtimes(self, register: Callable[[RuntimeType[Any]], None]) -> None:
        register(RuntimeType(name="words", factory=WordsRuntime, settings=Words, needs_models_dir=False))


@pytest.mark.parametrize(("router_words", "node_words"), [("a,b", '["c", "d,e"]'), ('["a", "b"]', "c, d,e")])
async def test_list_settings_of_plugin_and_runtime_tables_come_from_the_environment(
    router_words: str, node_words: str
) -> None:
    environ = {"LLMLB_PLUGIN__WORDS__WORDS": router_words, "LLMLB_NODE_RUNTIME__WORDS__WORDS": node_words}
    async with Cluster(
        capabilities=[WordsCapability()], runtimes=[WordsRuntimePlugin()], environ=environ
    ) as cluster:
        answer = await cluster.client.post("/v1/words", json={"model": "words-1"})
        assert answer.status_code == 200, answer.text
        node = ["c", "d,e"] if node_words.startswith("[") else ["c", "d", "e"]
        assert answer.json() == {"router": ["a", "b"], "node": node}
