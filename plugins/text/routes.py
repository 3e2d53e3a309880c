"""The router's text routes: decode what routing needs, check it, forward the client's bytes.

The three routes differ only in their path, request schema, model flag and the field that must
not be empty, so they are one factory (:func:`forward_route`) over a table (:data:`ROUTES`):
decode strictly (``llmlb_plugins.text.protocol``), check, and ``context.forward.json``, which
fills the model's admin defaults and relays a streamed answer as it arrives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Request, Response, post
from litestar.handlers import BaseRouteHandler

from llmlb_core.api import CapabilityContext, OpenAIError, decode_json_bytes, openapi_json_body
from llmlb_plugins.text.protocol import (
    CHAT_COMPLETION,
    EMBEDDINGS,
    TEXT_COMPLETION,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from llmlb_plugins.text.settings import TextSettings

TextRequest = ChatCompletionRequest | CompletionRequest | EmbeddingRequest


@dataclass(frozen=True)
class TextRoute:
    path: str
    schema: type[TextRequest]
    flag: str
    # The field OpenAI refuses empty ("prompt", "input"), None: nothing to check.
    required: str | None = None


ROUTES = (
    TextRoute("/v1/chat/completions", ChatCompletionRequest, CHAT_COMPLETION),
    TextRoute("/v1/completions", CompletionRequest, TEXT_COMPLETION, required="prompt"),
    TextRoute("/v1/embeddings", EmbeddingRequest, EMBEDDINGS, required="input"),
)


def require_text(value: str | list[Any], param: str) -> None:
    """OpenAI answers 400 for an empty prompt/input; so does llmlb, before any node is busy."""
    empty = not value.strip() if isinstance(value, str) else not value
    if empty or (isinstance(value, list) and any(v == "" or v == [] for v in value)):
        raise OpenAIError(400, f"{param} must not be empty", param=param, code="empty_" + param)


def forward_route(route: TextRoute, context: CapabilityContext[TextSettings]) -> BaseRouteHandler:
    """The handler of one text route: decode -> check -> forward."""
    flags = frozenset({route.flag})

    async def handler(request: Request[Any, Any, Any]) -> Response[Any]:
        body = await request.body()
        req = decode_json_bytes(body, route.schema)
        if route.required is not None:
            require_text(getattr(req, route.required), route.required)
        return await context.forward.json(
            model=req.model,
            flags=flags,
            path=route.path,
            body=body,
            stream=bool(getattr(req, "stream", None)),  # embeddings never stream
        )

    handler.__name__ = handler.__qualname__ = route.path.strip("/").replace("/", "_")
    return post(
        route.path,
        status_code=200,
        request_max_body_size=context.settings.max_body_bytes,
        operation_class=openapi_json_body(route.schema),
    )(handler)


def build_routes(context: CapabilityContext[TextSettings]) -> list[BaseRouteHandler]:
    return [forward_route(route, context) for route in ROUTES]
