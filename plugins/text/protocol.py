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

ModelId = Annotated[str, msgspec.Meta(min_length=1, max_length=256, pattern=r"\S")]  # not blank

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


class TextModelDefaults(msgspec.Struct, kw_only=True):
    """Per-model defaults an admin may set for a text model (``POST /v0/models``): top-level
    fields added to a request that left them out. Backend extras (``top_k``, ...) pass as they
    are; the common OpenAI fields are checked here, when the admin sets them. ``stream`` cannot
    be defaulted: the router relays by what the client asked for."""

    stream: None = None
    temperature: Annotated[float, msgspec.Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, msgspec.Meta(ge=1)] | None = None
    presence_penalty: Annotated[float, msgspec.Meta(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, msgspec.Meta(ge=-2.0, le=2.0)] | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=128)] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, msgspec.Meta(ge=1)] | None = None
