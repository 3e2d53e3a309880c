"""The text capability as a router plugin: chat completions, completions, embeddings.

Model capability flags: ``chat_completion`` (``/v1/chat/completions``), ``text_completion``
(``/v1/completions``) and ``embeddings`` (``/v1/embeddings``). They are served by nodes running
the ``openai_compatible`` runtime and by OpenAI-compatible endpoints registered with the router
(``/v0/endpoints``: llama.cpp, vLLM, Ollama or any other OpenAI-compatible server).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmlb_core.capability import Capability
from llmlb_core.hookspecs import hookimpl
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
from llmlb_plugins.text.settings import load_text_settings

NAME = "text"
FLAGS = frozenset({CHAT_COMPLETION, TEXT_COMPLETION, EMBEDDINGS})
RUNTIME_TYPES = frozenset({"openai_compatible", "llama_cpp", "vllm", "ollama", "generic"})


@hookimpl
def llmlb_register_capabilities(register: Callable[[Capability], None]) -> None:
    register(
        Capability(
            name=NAME,
            model_flags=FLAGS,
            runtime_types=RUNTIME_TYPES,
            description="OpenAI chat completions, completions and embeddings (streaming relayed)",
            defaults_schema="TextModelDefaults",
        )
    )


@hookimpl
def llmlb_register_routes(register: Callable[..., None], settings: dict[str, dict[str, Any]]) -> None:
    register(NAME, *build_routes(load_text_settings(settings[NAME])))


@hookimpl
def llmlb_register_schemas(register: Callable[[str, str, type], None]) -> None:
    register(NAME, "ChatCompletionRequest", ChatCompletionRequest)
    register(NAME, "CompletionRequest", CompletionRequest)
    register(NAME, "EmbeddingRequest", EmbeddingRequest)
    register(NAME, "TextModelDefaults", TextModelDefaults)
