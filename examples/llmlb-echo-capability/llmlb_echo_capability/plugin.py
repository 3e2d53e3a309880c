"""The ``reverse`` capability as a router plugin (entry point ``llmlb.plugins: reverse``).

Everything here comes from ``llmlb_core.api``, the router's public plugin API; nothing else in
``llmlb_core`` is a contract. The handler closes over the :class:`CapabilityContext` the router
builds once when an admin enables the capability: its parsed settings and the forwarder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

import msgspec
from litestar import Response
from litestar.handlers import BaseRouteHandler

from llmlb_core.api import Capability, CapabilityContext, OpenAIError, answer_type, hookimpl, json_route
from llmlb_echo_capability.protocol import FLAG, PATH, ReverseRequest, ReverseResponse

NAME = "reverse"
FLAGS = frozenset({FLAG})


class ReverseSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``[plugin.reverse]`` table (env ``LLMLB_PLUGIN__REVERSE__<KEY>``).

    The router converts it once, at start-up; a bad value stops ``llmlb serve`` with exit
    status 2 and one line naming the key, before any request is served."""

    # The longest text accepted, in characters; longer is a 400 (the node never sees it).
    max_chars: Annotated[int, msgspec.Meta(ge=1)] = 10_000


def build_routes(context: CapabilityContext[ReverseSettings]) -> Sequence[BaseRouteHandler]:
    """Called once by the router when ``reverse`` is enabled; the handler closes over
    ``context`` (no app state, no globals)."""
    max_chars = context.settings.max_chars

    # json_route: the body is decoded strictly first (a bad one is an OpenAI-shaped 400 naming
    # the field), and /docs shows both types.
    @json_route(PATH, ReverseRequest, ReverseResponse)
    async def reverse(req: ReverseRequest, body: bytes) -> Response[bytes]:
        """Answers the text reversed, by a node that serves the model."""
        if len(req.text) > max_chars:
            raise OpenAIError(400, f"text is {len(req.text)} characters; at most {max_chars}", param="text")
        # Pick a node serving `req.model` with the flag, fail over, and accept the node's answer
        # only as a ReverseResponse (else a 502, the node suspect, another node tried). Unknown
        # model: 404 model_not_found; no node online: 503 no_capable_nodes.
        result = await context.forward.call(
            req.model, FLAGS, PATH, content=body, content_type="application/json",
            check=answer_type(ReverseResponse),
        )  # fmt: skip
        return result.to_response()  # x-llmlb-node names the node that answered

    return [reverse]


@hookimpl
def llmlb_register_capabilities(register: Callable[[Capability[Any]], None]) -> None:
    register(
        Capability(
            name=NAME,
            model_flags=FLAGS,
            build_routes=build_routes,
            settings=ReverseSettings,
            description="Example: POST /v1/reverse answers the text reversed (llmlb-echo-runtime)",
            schemas={"ReverseRequest": ReverseRequest, "ReverseResponse": ReverseResponse},
        )
    )
