"""The node's plugin manager: runtime types from the ``llmlb.node_runtimes`` entry-point group.

The built-in runtimes are entry points of the ``llmlb`` distribution itself (``pyproject.toml``
composes the product), so the node names none of them; with ``load_entry_points=False`` only
those load. Start-up refuses (:class:`RuntimePluginError`, one line) a runtime plugin that fails
to import (naming its entry point), an implementation of a hook that does not exist, and a
runtime type registered twice or that is not a :class:`RuntimeType`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import pluggy

from llmlb_core import plugins as core_plugins
from llmlb_node import hookspecs
from llmlb_node.runtime import RuntimeType

log = logging.getLogger("llmlb.node.plugins")

ENTRY_POINT_GROUP = "llmlb.node_runtimes"


class RuntimePluginError(core_plugins.PluginError):
    """A runtime plugin broke the contract; the node refuses to start."""


def build_runtime_manager(
    extra_plugins: Iterable[object] = (), *, load_entry_points: bool = True
) -> pluggy.PluginManager:
    return core_plugins.new_manager(
        hookspecs.PROJECT,
        hookspecs,
        ENTRY_POINT_GROUP,
        extra_plugins=extra_plugins,
        third_party=load_entry_points,
        error=RuntimePluginError,
    )


def load_runtime_types(
    extra_plugins: Iterable[object] = (), *, load_entry_points: bool = True
) -> dict[str, RuntimeType[Any]]:
    """Every installed runtime type by name (``load_entry_points``: third parties' too)."""
    pm = build_runtime_manager(extra_plugins, load_entry_points=load_entry_points)
    types: dict[str, RuntimeType[Any]] = {}

    def register(runtime_type: RuntimeType[Any]) -> None:
        if not isinstance(runtime_type, RuntimeType):
            raise RuntimePluginError(
                f"llmlb_node_register_runtimes expects a RuntimeType, got {runtime_type!r}"
            )
        if runtime_type.name in types:
            raise RuntimePluginError(f"runtime type {runtime_type.name!r} registered twice")
        if not isinstance(runtime_type.settings, type):
            raise RuntimePluginError(
                f"runtime type {runtime_type.name!r}: settings must be a type, got {runtime_type.settings!r}"
            )
        types[runtime_type.name] = runtime_type

    pm.hook.llmlb_node_register_runtimes(register=register)
    return types
