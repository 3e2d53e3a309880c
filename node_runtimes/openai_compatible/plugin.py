"""Registers the built-in ``openai_compatible`` runtime with the node's plugin manager."""

from __future__ import annotations

import logging
from collections.abc import Callable

from llmlb_node.hookspecs import hookimpl
from llmlb_node.runtime import Runtime, RuntimeType
from llmlb_node.settings import NodeSettings

log = logging.getLogger("llmlb.node.openai_compatible")

NAME = "openai_compatible"


def create_runtime(settings: NodeSettings) -> Runtime | None:
    from llmlb_node.openai_compatible.runtime import OpenAICompatibleRuntime, load_runtime_settings

    cfg = load_runtime_settings(settings.runtime_settings.get(NAME, {}))
    if not cfg.url:
        if NAME in settings.runtimes:
            raise SystemExit("runtime openai_compatible needs an upstream URL (--upstream URL)")
        return None  # nothing configured to front
    return OpenAICompatibleRuntime(settings, cfg)


@hookimpl
def llmlb_node_register_runtimes(register: Callable[[RuntimeType], None]) -> None:
    register(
        RuntimeType(
            name=NAME,
            factory=create_runtime,
            description="A local OpenAI-compatible server (llama.cpp, vLLM, Ollama, whisper.cpp, ...)",
        )
    )
