"""Text API request schemas (msgspec): what the router must know, nothing more.

The router reads ``model`` (to route), ``stream`` (to relay server-sent events) and checks the
fields every backend requires, with the same strict JSON decoding as the rest of llmlb
(``{"stream": "yes"}`` is a 400 naming ``stream``). Every other field, known to OpenAI or
specific to a backend (``top_k``, ``mirostat``, ``guided_json``, ...), is ignored here and
reaches the backend untouched: the router forwards the client's original body bytes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

ModelId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]

# Model capability flags served by the text capability.
CHAT_COMPLETION = "chat_completion"
TEXT_COMPLETION = "text_completion"
EMBEDDINGS = "embeddings"


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool | None = None


class ChatMessage(msgspec.Struct, kw_only=True):
    """One message; ``content`` and any other field are the backend's business."""

    role: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]


class ChatCompletionRequest(msgspec.Struct, kw_only=True):
    model: ModelId
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None


class CompletionRequest(msgspec.Struct, kw_only=True):
    model: ModelId
    # A string, a list of strings, a list of token ids or a list of such lists.
    prompt: str | list[Any]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    model: ModelId
    # A string, a list of strings, a list of token ids or a list of such lists.
    input: str | list[Any]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, msgspec.Meta(ge=1)] | None = None
