"""Registers the built-in ``stable_diffusion`` runtime (entry point of the ``llmlb`` distribution)."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from typing import Any

import click

from llmlb_node.api import Runtime, RuntimeConfigError, RuntimeContext, RuntimeType, hookimpl
from llmlb_node.stable_diffusion.models.model_folder import scan_models
from llmlb_node.stable_diffusion.settings import StableDiffusionSettings

log = logging.getLogger("llmlb.node.sd")

NAME = "stable_diffusion"
# `llmlb node` flags (and the environment variables of earlier versions) for this runtime's table.
CLI_OPTIONS = (
    click.Option(
        ["--threads", "threads"], type=int, envvar="LLMLB_NODE_THREADS", help="threads (0: all cores)"
    ),
    click.Option(
        ["--idle-unload", "idle_unload_s"],
        type=float,
        envvar="LLMLB_NODE_IDLE_UNLOAD_S",
        help="unload a model idle this many seconds (0: never)",
    ),
    click.Option(
        ["--weights", "weights_preference"],
        type=click.Choice(["auto", "safetensors", "gguf"]),
        envvar="LLMLB_NODE_WEIGHTS_PREFERENCE",
        help="weights format when a model folder holds several",
    ),
    click.Option(
        ["--cancel", "cancel"],
        type=click.Choice(["now", "next_image"]),
        help="how a job stops when its client has gone or it runs too long: now (a worker process "
        "per model, killed mid-image) or next_image (in-process, at the next image)",
    ),
    click.Option(
        ["--max-job-seconds", "max_job_seconds"],
        type=float,
        help="stop a job that generates longer than this with 504 job_timeout (0: no limit)",
    ),
)
NOT_INSTALLED = "stable-diffusion-cpp-python is not installed (pip install 'llmlb[sd]')"


def create_runtime(context: RuntimeContext[StableDiffusionSettings]) -> Runtime | None:
    if importlib.util.find_spec("stable_diffusion_cpp") is None:
        if context.requested:
            raise RuntimeConfigError(f"runtime {NAME}: {NOT_INSTALLED}")
        log.warning("%s: no %s runtime", NOT_INSTALLED, NAME)
        return None
    if not scan_models(context.models_dir).models:
        if context.requested:
            raise RuntimeConfigError(
                f"runtime {NAME}: no model folder in {context.models_dir} (--models-dir; "
                f"`llmlb demo-model {context.models_dir / 'demo'}` writes a small one)"
            )
        return None
    from llmlb_node.stable_diffusion.runtime import StableDiffusionRuntime

    return StableDiffusionRuntime(context)


@hookimpl
def llmlb_node_register_runtimes(register: Callable[[RuntimeType[Any]], None]) -> None:
    register(
        RuntimeType(
            name=NAME,
            factory=create_runtime,
            settings=StableDiffusionSettings,
            description="Stable Diffusion through stable-diffusion.cpp",
            cli_options=CLI_OPTIONS,
        )
    )
