"""The router's text routes: validate what routing needs, forward the client's bytes, relay."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, post
from litestar.handlers import BaseRouteHandler

from llmlb_core.bodies import decode_json_bytes
from llmlb_core.errors import OpenAIError
from llmlb_core.services import get_services
from llmlb_core.streaming import forward_json
from llmlb_plugins.text.protocol import (
    CHAT_COMPLETION,
    EMBEDDINGS,
    TEXT_COMPLETION,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
)
from llmlb_plugins.text.settings import TextSettings

CHAT_FLAGS = frozenset({CHAT_COMPLETION})
COMPLETION_FLAGS = frozenset({TEXT_COMPLETION})
EMBEDDING_FLAGS = frozenset({EMBEDDINGS})


def _require_text(value: str | list[Any], param: str, what: str) -> None:
    """OpenAI answers 400 for an empty prompt/input; so does llmlb, before any node is busy."""
    empty = not value.strip() if isinstance(value, str) else not value
    if empty or (isinstance(value, list) and any(v == "" or v == [] for v in value)):
        raise OpenAIError(400, f"{what} must not be empty", param=param, code="empty_" + param)


def build_routes(cfg: TextSettings) -> list[BaseRouteHandler]:
    limit = cfg.max_body_bytes

    @post("/v1/chat/completions", status_code=200, request_max_body_size=limit)
    async def chat_completions(request: Request[Any, Any, Any]) -> Response[Any]:
        body = await request.body()
        req = decode_json_bytes(body, ChatCompletionRequest)
        return await forward_json(
            get_services(request),
            model=req.model,
            flags=CHAT_FLAGS,
            path="/v1/chat/completions",
            body=body,
            stream=bool(req.stream),
        )

    @post("/v1/completions", status_code=200, request_max_body_size=limit)
    async def completions(request: Request[Any, Any, Any]) -> Response[Any]:
        body = await request.body()
        req = decode_json_bytes(body, CompletionRequest)
        _require_text(req.prompt, "prompt", "prompt")
        return await forward_json(
            get_services(request),
            model=req.model,
            flags=COMPLETION_FLAGS,
            path="/v1/completions",
            body=body,
            stream=bool(req.stream),
        )

    @post("/v1/embeddings", status_code=200, request_max_body_size=limit)
    async def embeddings(request: Request[Any, Any, Any]) -> Response[Any]:
        body = await request.body()
        req = decode_json_bytes(body, EmbeddingRequest)
        _require_text(req.input, "input", "input")
        return await forward_json(
            get_services(request),
            model=req.model,
            flags=EMBEDDING_FLAGS,
            path="/v1/embeddings",
            body=body,
            stream=False,
        )

    return [chat_completions, completions, embeddings]
