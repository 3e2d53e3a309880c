"""A capability plugin and a node runtime plugin defined by the tests (not shipped).

They exercise the public contract exactly as a third party would: a new capability ``echo``
with its own route and model flag, served by a new runtime type ``echo`` on a node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.handlers import BaseRouteHandler

from llmlb_core.bodies import decode_json_bytes
from llmlb_core.capability import Capability
from llmlb_core.hookspecs import hookimpl
from llmlb_core.protocol import ModelAdvert
from llmlb_core.services import get_services
from llmlb_node.hookspecs import hookimpl as node_hookimpl
from llmlb_node.runtime import Runtime, RuntimeLoad, RuntimeType
from llmlb_node.settings import NodeSettings

FLAGS = frozenset({"echo"})


class EchoRequest(msgspec.Struct, kw_only=True):
    model: str
    text: str = ""
    delay: float = 0.0


class EchoCapability:
    """Router side: capability ``echo`` with route ``POST /v1/echo``."""

    @hookimpl
    def llmlb_register_capabilities(self, register: Callable[[Capability], None]) -> None:
        register(Capability(name="echo", model_flags=FLAGS, runtime_types=frozenset({"echo"})))

    @hookimpl
    def llmlb_register_routes(self, register: Callable[..., None]) -> None:
        @post("/v1/echo", status_code=200)
        async def echo(request: Request[Any, Any, Any]) -> Response[Any]:
            body = await request.body()
            req = decode_json_bytes(body, EchoRequest)
            result = await get_services(request).call_node(
                req.model, FLAGS, "/v1/echo", content=body, content_type="application/json"
            )
            return Response(
                content=result.content,
                status_code=result.status,
                media_type=result.content_type,
                headers=result.headers,
            )

        register("echo", echo)

    @hookimpl
    def llmlb_register_schemas(self, register: Callable[[str, str, type], None]) -> None:
        register("echo", "EchoRequest", EchoRequest)


class EchoRuntime(Runtime):
    type_name = "echo"

    def __init__(self, settings: NodeSettings, slots: int = 1) -> None:
        self.settings = settings
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
            return {"echo": req.text, "node": runtime.settings.display_name}

        return [echo]


class EchoRuntimePlugin:
    """Node side: registers runtime type ``echo``."""

    def __init__(self, slots: int = 1) -> None:
        self.slots = slots

    @node_hookimpl
    def llmlb_node_register_runtimes(self, register: Callable[[RuntimeType], None]) -> None:
        register(RuntimeType(name="echo", factory=lambda s: EchoRuntime(s, self.slots)))
