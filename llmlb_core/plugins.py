"""The router's plugin manager: built-in capability plugins, entry-point plugins, enabled set.

Built-in capabilities are ordinary plugins registered from ``BUILTIN_PLUGINS``; third parties
add theirs through the ``llmlb.plugins`` entry-point group. After loading, ``check_pending()``
makes an implementation of a hook that does not exist fail loudly at start-up, and so does a
route or schema registered for an unknown capability, or an enabled capability nobody provides.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import pluggy
from litestar.handlers import BaseRouteHandler

from llmlb_core import hookspecs
from llmlb_core.capability import Capability

log = logging.getLogger("llmlb.plugins")

ENTRY_POINT_GROUP = "llmlb.plugins"
BUILTIN_PLUGINS: tuple[str, ...] = (
    "llmlb_plugins.text.plugin", "llmlb_plugins.audio.plugin", "llmlb_plugins.images.plugin",
)


class PluginError(RuntimeError):
    """A plugin broke the contract; the router refuses to start."""


@dataclass
class LoadedPlugins:
    manager: pluggy.PluginManager
    capabilities: dict[str, Capability]
    enabled: list[str]
    routes: dict[str, list[BaseRouteHandler]] = field(default_factory=dict)
    schemas: dict[str, dict[str, type]] = field(default_factory=dict)

    @property
    def enabled_flags(self) -> frozenset[str]:
        flags: set[str] = set()
        for name in self.enabled:
            flags |= self.capabilities[name].model_flags
        return frozenset(flags)

    @property
    def enabled_runtime_types(self) -> frozenset[str]:
        types: set[str] = set()
        for name in self.enabled:
            types |= self.capabilities[name].runtime_types
        return frozenset(types)

    def json_schemas(self) -> dict[str, dict[str, Any]]:
        return {
            cap: {name: msgspec.json.schema(struct) for name, struct in schemas.items()}
            for cap, schemas in self.schemas.items()
            if cap in self.enabled
        }


def _builtin_modules() -> list[Any]:
    modules = []
    for dotted in BUILTIN_PLUGINS:
        try:
            modules.append(importlib.import_module(dotted))
        except ModuleNotFoundError as exc:
            if exc.name and dotted.startswith(exc.name):
                continue  # this checkout does not ship that capability
            raise
    return modules


def build_manager(
    extra_plugins: Iterable[object] = (), *, load_entry_points: bool = True
) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for module in _builtin_modules():
        pm.register(module, name=module.__name__)
    if load_entry_points:
        count = pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        if count:
            log.info("loaded %d plugin(s) from entry points %s", count, ENTRY_POINT_GROUP)
    for plugin in extra_plugins:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin implements an unknown hook: {exc}") from exc
    return pm


def load_plugins(
    enabled: Iterable[str] | None,
    plugin_settings: dict[str, dict[str, Any]],
    *,
    extra_plugins: Iterable[object] = (),
    load_entry_points: bool = True,
) -> LoadedPlugins:
    pm = build_manager(extra_plugins, load_entry_points=load_entry_points)

    capabilities: dict[str, Capability] = {}

    def register_capability(capability: Capability) -> None:
        if not isinstance(capability, Capability):
            raise PluginError(f"register_capabilities expects Capability, got {capability!r}")
        if capability.name in capabilities:
            raise PluginError(f"capability {capability.name!r} registered twice")
        capabilities[capability.name] = capability

    pm.hook.llmlb_register_capabilities(register=register_capability)

    enabled_list = list(dict.fromkeys(capabilities if enabled is None else enabled))
    unknown = [name for name in enabled_list if name not in capabilities]
    if unknown:
        raise PluginError(
            f"enabled capabilities {unknown} are not provided by any plugin "
            f"(available: {sorted(capabilities)})"
        )
    loaded = LoadedPlugins(manager=pm, capabilities=capabilities, enabled=enabled_list)

    def _known(cap: str) -> None:
        if cap not in capabilities:
            raise PluginError(f"route/schema registered for unknown capability {cap!r}")

    def register_routes(cap: str, *handlers: BaseRouteHandler) -> None:
        _known(cap)
        for handler in handlers:
            if not isinstance(handler, BaseRouteHandler):
                raise PluginError(f"{cap}: {handler!r} is not a Litestar route handler")
        loaded.routes.setdefault(cap, []).extend(handlers)

    pm.hook.llmlb_register_routes(register=register_routes, settings=_SettingsView(plugin_settings))

    def register_schema(cap: str, name: str, struct: type) -> None:
        _known(cap)
        if not (isinstance(struct, type) and issubclass(struct, msgspec.Struct)):
            raise PluginError(f"{cap}: schema {name!r} must be a msgspec.Struct subclass")
        loaded.schemas.setdefault(cap, {})[name] = struct

    pm.hook.llmlb_register_schemas(register=register_schema)
    log.info("capabilities: available=%s enabled=%s", sorted(capabilities), loaded.enabled)
    return loaded


class _SettingsView(dict[str, dict[str, Any]]):
    """All plugin tables; ``view[name]`` is that capability's table (empty if none)."""

    def __missing__(self, key: str) -> dict[str, Any]:
        return {}
