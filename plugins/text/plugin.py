"""The text capability as a router plugin: chat completions, completions, embeddings.

Model capability flags: ``chat_completion`` (``/v1/chat/completions``), ``text_completion``
(``/v1/completions``) and ``embeddings`` (``/v1/embeddings``). They are served by nodes running
the ``openai_compatible`` runtime and by OpenAI-compatible endpoints registered with the router
(``/v0/endpoints``: llama.cpp, vLLM, Ollama or any other OpenAI-compatible server).

This module only composes the capability: routes (``routes``), settings (``settings``),
schemas (``protocol``) and how upstream models get their flags (``upstream``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmlb_core.api import Capability, hookimpl
from llmlb_plugins.text.protocol import (
    CHAT_COMPLETION,
    EMBEDDINGS,
    TEXT_COMPLETION,
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    TextModelDefaults,
)
from llmlb_plugins.text.routes import build_routes
from llmlb_plugins.text.settings import TextSettings
from llmlb_plugins.text.upstream import FLAG_ALIASES, UPSTREAM_FLAGS

CAPABILITY = Capability(
    name="text",
    model_flags=frozenset({CHAT_COMPLETION, TEXT_COMPLETION, EMBEDDINGS}),
    build_routes=build_routes,
    settings=TextSettings,
    description="OpenAI chat completions, completions and embeddings (streaming relayed)",
    schemas={
        "ChatCompletionRequest": ChatCompletionRequest,
        "CompletionRequest": CompletionRequest,
        "EmbeddingRequest": EmbeddingRequest,
        "TextModelDefaults": TextModelDefaults,
    },
    defaults_schema=TextModelDefaults,
    upstream_flags=UPSTREAM_FLAGS,
    flag_aliases=FLAG_ALIASES,
)


@hookimpl
def llmlb_register_capabilities(register: Callable[[Capability[Any]], None]) -> None:
    register(CAPABILITY)
