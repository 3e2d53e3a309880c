"""A capability plugin and a node runtime plugin defined by the tests (not shipped).

They exercise the public contract exactly as a third party would: a new capability ``echo``
with its own route and model flag, served by a new runtime type ``echo`` on a node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.handlers import BaseRouteHandler

from llmlb_core.api import Capability, CapabilityContext, decode_json_bytes, hookimpl
from llmlb_node.api import ModelAdvert, Runtime, RuntimeContext, RuntimeLoad, RuntimeType
from llmlb_node.api import hookimpl as node_hookimpl

FLAGS = frozenset({"echo"})


class EchoRequest(msgspec.Struct, kw_only=True):
    model: str
    text: str = ""
    delay: float = 0.0


def build_echo_routes(context: CapabilityContext[Any]) -> Sequence[BaseRouteHandler]:
    @post("/v1/echo", status_code=200)
    async def echo(request: Request[Any, Any, Any]) -> Response[Any]:
        body = await request.body()
        req = decode_json_bytes(body, EchoRequest)
        result = await context.forward.call(
            req.model, FLAGS, "/v1/echo", content=body, content_type="application/json"
        )
        return result.to_response()

    return [echo]


class EchoCapability:
    """Router side: capability ``echo`` with route ``POST /v1/echo``."""

    @hookimpl
    def llmlb_register_capabilities(self, register: Callable[[Capability[Any]], None]) -> None:
        register(
            Capability(
                name="echo",
                model_flags=FLAGS,
                build_routes=build_echo_routes,
                schemas={"EchoRequest": EchoRequest},
            )
        )


class EchoRuntime(Runtime):
    type_name = "echo"

    def __init__(self, context: RuntimeContext[Any], slots: int = 1) -> None:
        self.context = context
        self.slots = slots
        self.active = 0

    def models(self) -> list[ModelAdvert]:
        return [ModelAdvert(id="echo-1", capabilities=["echo"], runtime="echo")]

    def load(self) -> RuntimeLoad:
        return RuntimeLoad(active_jobs=self.active)

    def routes(self) -> list[BaseRouteHandler]:
        runtime = self

        @post("/v1/echo", status_code=200)
        async def echo(request: Request[Any, Any, Any]) -> dict[str, Any]:
            req = decode_json_bytes(await request.body(), EchoRequest)
            runtime.active += 1
            try:
                await asyncio.sleep(req.delay)
            finally:
                runtime.active -= 1
            return {"echo": req.text, "node": runtime.context.node_name}

        return [echo]


class EchoRuntimePlugin:
    """Node side: registers runtime type ``echo``."""

    def __init__(self, slots: int = 1) -> None:
        self.slots = slots

    @node_hookimpl
    def llmlb_node_register_runtimes(self, register: Callable[[RuntimeType[Any]], None]) -> None:
        register(RuntimeType(name="echo", factory=lambda context: EchoRuntime(context, self.slots)))
