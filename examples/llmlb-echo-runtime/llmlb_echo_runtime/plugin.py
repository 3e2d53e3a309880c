"""The ``reverser`` node runtime (entry point ``llmlb.node_runtimes: reverser``).

It imports ``llmlb_node.api`` (the node's public runtime API) and the contract of the capability
it serves, ``llmlb_echo_capability.protocol``, and nothing else from llmlb. Its one model
carries the capability's flag, so the router sends ``POST /v1/reverse`` for that model here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

import msgspec
from litestar.handlers import BaseRouteHandler
from llmlb_echo_capability.protocol import FLAG, PATH, ReverseRequest, ReverseResponse

from llmlb_node.api import ModelAdvert, Runtime, RuntimeContext, RuntimeType, hookimpl, json_route

NAME = "reverser"


class ReverserSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``[runtime.reverser]`` table of the node config (env
    ``LLMLB_NODE_RUNTIME__REVERSER__<KEY>``), converted once when the node starts."""

    # The model id this node advertises.
    model: str = "reverser-1"
    # Requests served at once; the router queues (or picks another node) beyond that.
    slots: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    # Pretend each request takes this long (to watch the load in /v0/nodes).
    delay_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0


class ReverserRuntime(Runtime):
    """Reverses text. The node core counts its jobs (the default ``load()``) and refuses a
    request for a model it does not advertise before the handler runs."""

    type_name = NAME

    def __init__(self, context: RuntimeContext[ReverserSettings]) -> None:
        self.settings = context.settings
        self.slots = context.settings.slots

    def models(self) -> list[ModelAdvert]:
        return [ModelAdvert(id=self.settings.model, capabilities=[FLAG], runtime=NAME)]

    def routes(self) -> list[BaseRouteHandler]:
        # The router checked the body already; the node decodes it strictly again (json_route),
        # since the contract is the node's own API too.
        @json_route(PATH, ReverseRequest, ReverseResponse)
        async def reverse(req: ReverseRequest) -> ReverseResponse:
            await asyncio.sleep(self.settings.delay_s)
            return ReverseResponse(model=req.model, text=req.text[::-1])

        return [reverse]


def create_runtime(context: RuntimeContext[ReverserSettings]) -> Runtime | None:
    """Start only where the operator asked for it (``--runtime reverser``, or ``runtimes`` in
    the node config). A runtime that needs no model files would otherwise run on every node it
    is installed on; one that does need files returns None when it finds none."""
    return ReverserRuntime(context) if context.requested else None


@hookimpl
def llmlb_node_register_runtimes(register: Callable[[RuntimeType[Any]], None]) -> None:
    register(
        RuntimeType(
            name=NAME,
            factory=create_runtime,
            settings=ReverserSettings,
            description="Example: reverses text for the reverse capability (llmlb-echo-capability)",
            needs_models_dir=False,  # it computes its answers: no files
        )
    )
