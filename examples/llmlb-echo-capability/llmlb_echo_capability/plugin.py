"""The ``reverse`` capability as a router plugin (entry point ``llmlb.plugins: reverse``).

Everything here comes from ``llmlb_core.api``, the router's public plugin API; nothing else in
``llmlb_core`` is a contract. The handler closes over the :class:`CapabilityContext` the router
builds once when an admin enables the capability: its parsed settings and the forwarder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

import msgspec
from litestar import Request, Response, post
from litestar.handlers import BaseRouteHandler

from llmlb_core.api import (
    BadAnswer,
    Capability,
    CapabilityContext,
    OpenAIError,
    decode_json_bytes,
    hookimpl,
)
from llmlb_echo_capability.protocol import FLAG, PATH, ReverseRequest, ReverseResponse

NAME = "reverse"
FLAGS = frozenset({FLAG})


class ReverseSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The ``[plugin.reverse]`` table (env ``LLMLB_PLUGIN__REVERSE__<KEY>``).

    The router converts it once, at start-up; a bad value stops ``llmlb serve`` with exit
    status 2 and one line naming the key, before any request is served."""

    # The longest text accepted, in characters; longer is a 400 (the node never sees it).
    max_chars: Annotated[int, msgspec.Meta(ge=1)] = 10_000


_answer_decoder = msgspec.json.Decoder(ReverseResponse)


def check_answer(content: bytes) -> ReverseResponse:
    """A node's answer is untrusted: one that is not a ReverseResponse is a 502 for the client,
    makes the node suspect, and the request is tried on another node."""
    try:
        return _answer_decoder.decode(content)
    except msgspec.DecodeError as exc:
        raise BadAnswer(f"not a reverse answer: {exc}") from None


def build_routes(context: CapabilityContext[ReverseSettings]) -> Sequence[BaseRouteHandler]:
    """Called once by the router when ``reverse`` is enabled; the handler closes over
    ``context`` (no app state, no globals)."""
    max_chars = context.settings.max_chars

    @post(PATH, status_code=200)
    async def reverse(request: Request[Any, Any, Any]) -> Response[bytes]:
        body = await request.body()
        # Strict decoding: a bad body is an OpenAI-shaped 400 naming the field.
        req = decode_json_bytes(body, ReverseRequest)
        if len(req.text) > max_chars:
            raise OpenAIError(400, f"text is {len(req.text)} characters; at most {max_chars}", param="text")
        # Pick a node serving `req.model` with the flag, fail over, check the answer. Unknown
        # model: 404 model_not_found; no node online: 503 no_capable_nodes.
        result = await context.forward.call(
            req.model, FLAGS, PATH, content=body, content_type="application/json", check=check_answer
        )
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
