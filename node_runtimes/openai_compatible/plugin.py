"""Registers the built-in ``openai_compatible`` runtime (entry point of the ``llmlb`` distribution)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmlb_node.api import Runtime, RuntimeConfigError, RuntimeContext, RuntimeType, hookimpl
from llmlb_node.openai_compatible.settings import OpenAICompatibleSettings

NAME = "openai_compatible"


def create_runtime(context: RuntimeContext[OpenAICompatibleSettings]) -> Runtime | None:
    if not context.settings.url:
        if context.requested:
            raise RuntimeConfigError(
                f"runtime {NAME} needs the URL of the server to front "
                f"(--upstream URL, or url in [runtime.{NAME}])"
            )
        return None  # nothing configured to front
    from llmlb_node.openai_compatible.runtime import OpenAICompatibleRuntime

    return OpenAICompatibleRuntime(context.settings)


@hookimpl
def llmlb_node_register_runtimes(register: Callable[[RuntimeType[Any]], None]) -> None:
    register(
        RuntimeType(
            name=NAME,
            factory=create_runtime,
            settings=OpenAICompatibleSettings,
            description="A local OpenAI-compatible server (llama.cpp, vLLM, Ollama, whisper.cpp, ...)",
        )
    )
