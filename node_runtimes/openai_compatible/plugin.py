"""Registers the built-in ``openai_compatible`` runtime (entry point of the ``llmlb`` distribution)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from llmlb_node.api import KINDS, Runtime, RuntimeConfigError, RuntimeContext, RuntimeType, hookimpl
from llmlb_node.openai_compatible.settings import OpenAICompatibleSettings

NAME = "openai_compatible"
# `llmlb node` flags for this runtime's table.
CLI_OPTIONS = (
    click.Option(["--upstream", "url"], metavar="URL", help="front this OpenAI-compatible server"),
    click.Option(["--upstream-key", "api_key"], envvar="LLMLB_UPSTREAM_KEY", help="the key the server wants"),
    click.Option(["--upstream-kind", "kind"], type=click.Choice(KINDS), help="kind of server"),
    click.Option(["--upstream-model", "models"], multiple=True, help="serve only this model (repeatable)"),
    click.Option(
        ["--upstream-capability", "capabilities"],
        multiple=True,
        help="flag of its models (repeatable; default: the router assigns them)",
    ),
    click.Option(["--upstream-slots", "slots"], type=int, help="requests sent to it at once"),
)


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
            cli_options=CLI_OPTIONS,
            needs_models_dir=False,  # it fronts a server
        )
    )
