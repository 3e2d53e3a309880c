"""Registers the built-in ``stable_diffusion`` runtime with the node's plugin manager."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable

from llmlb_node.hookspecs import hookimpl
from llmlb_node.runtime import Runtime, RuntimeType
from llmlb_node.settings import NodeSettings
from llmlb_node.stable_diffusion.model_folder import scan_models

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
    from llmlb_node.stable_diffusion.runtime import StableDiffusionRuntime

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
