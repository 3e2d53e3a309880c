"""The node's plugin manager: built-in runtime plugins plus the ``llmlb.node_runtimes`` group."""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable

import pluggy

from llmlb_node import hookspecs
from llmlb_node.runtime import RuntimeType

log = logging.getLogger("llmlb.node.plugins")

ENTRY_POINT_GROUP = "llmlb.node_runtimes"
BUILTIN_PLUGINS: tuple[str, ...] = (
    "llmlb_node.stable_diffusion.plugin",
    "llmlb_node.openai_compatible.plugin",
)


class RuntimePluginError(RuntimeError):
    """A runtime plugin broke the contract; the node refuses to start."""


def load_runtime_types(
    extra_plugins: Iterable[object] = (), *, load_entry_points: bool = True
) -> dict[str, RuntimeType]:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for dotted in BUILTIN_PLUGINS:
        try:
            module = importlib.import_module(dotted)
        except ModuleNotFoundError as exc:
            if exc.name and dotted.startswith(exc.name):
                continue  # not shipped in this checkout
            raise
        pm.register(module, name=dotted)
    if load_entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    for plugin in extra_plugins:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise RuntimePluginError(f"runtime plugin implements an unknown hook: {exc}") from exc

    types: dict[str, RuntimeType] = {}

    def register(runtime_type: RuntimeType) -> None:
        if not isinstance(runtime_type, RuntimeType):
            raise RuntimePluginError(f"expected RuntimeType, got {runtime_type!r}")
        if runtime_type.name in types:
            raise RuntimePluginError(f"runtime type {runtime_type.name!r} registered twice")
        types[runtime_type.name] = runtime_type

    pm.hook.llmlb_node_register_runtimes(register=register)
    return types
