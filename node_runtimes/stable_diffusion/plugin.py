"""Registers the built-in ``stable_diffusion`` runtime with the node's plugin manager."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable

from node_runtimes.hookspecs import hookimpl
from node_runtimes.runtime import Runtime, RuntimeType
from node_runtimes.settings import NodeSettings
from node_runtimes.stable_diffusion.model_folder import scan_models

log = logging.getLogger("llmlb.node.sd")


def create_runtime(settings: NodeSettings) -> Runtime | None:
    if importlib.util.find_spec("stable_diffusion_cpp") is None:
        log.warning(
            "stable-diffusion-cpp-python is not installed: no stable_diffusion runtime "
            "(pip install 'llmlb[sd]')"
        )
        return None
    if not scan_models(settings.models_path):
        return None
    from node_runtimes.stable_diffusion.runtime import StableDiffusionRuntime

    return StableDiffusionRuntime(settings)


@hookimpl
def llmlb_node_register_runtimes(register: Callable[[RuntimeType], None]) -> None:
    register(
        RuntimeType(
            name="stable_diffusion",
            factory=create_runtime,
            description="Stable Diffusion through stable-diffusion.cpp, in-process",
        )
    )
