"""The router's plugin manager: plugins from entry points, their capabilities, the enabled set.

Every plugin, built-in or not, is an entry point of the ``llmlb.plugins`` group; the built-in
ones are the ``llmlb`` distribution's own (``pyproject.toml`` composes the product), so the core
names none of them. ``load_entry_points = false`` keeps the built-ins and skips third parties.

Start-up refuses (:class:`PluginError`, one line) a plugin that fails to import (naming its entry
point), an implementation of a hook that does not exist (pluggy's ``check_pending``), a
capability registered twice, and an enabled capability nobody provides.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import msgspec
import pluggy

from llmlb_core import hookspecs
from llmlb_core.capability import Capability, UpstreamFlags

log = logging.getLogger("llmlb.plugins")

ENTRY_POINT_GROUP = "llmlb.plugins"
DISTRIBUTION = "llmlb"


class PluginError(RuntimeError):
    """A plugin broke the contract; the router refuses to start."""


def _is_builtin(entry_point: importlib.metadata.EntryPoint) -> bool:
    dist = entry_point.dist
    return dist is not None and dist.name.lower().replace("_", "-") == DISTRIBUTION


def load_entry_points(pm: pluggy.PluginManager, group: str, *, third_party: bool) -> int:
    """Register the plugins of an entry-point group (the ``llmlb`` distribution's own, and with
    ``third_party`` everybody's). A plugin that fails to import is a :class:`PluginError` that
    names its entry point and distribution. Returns how many were registered."""
    count = 0
    for entry_point in importlib.metadata.entry_points(group=group):
        builtin = _is_builtin(entry_point)
        if not (builtin or third_party) or pm.get_plugin(entry_point.name) is not None:
            continue
        dist = entry_point.dist.name if entry_point.dist is not None else "unknown distribution"
        try:
            plugin = entry_point.load()
        except Exception as exc:
            if builtin:
                remedy = f"reinstall {dist} (pip install --force-reinstall {dist})"
            else:
                remedy = f"fix or uninstall {dist}"
                if group == ENTRY_POINT_GROUP:
                    remedy += ", or skip third-party plugins (load_entry_points = false)"
            raise PluginError(
                f"plugin {entry_point.name!r} ({entry_point.value}, from {dist}, entry-point group "
                f"{group}) failed to import: {type(exc).__name__}: {exc}; {remedy}"
            ) from exc
        pm.register(plugin, name=entry_point.name)
        count += 1
        if not builtin:
            log.info("loaded plugin %r from %s (%s)", entry_point.name, dist, entry_point.value)
    return count


def new_manager(
    project: str,
    specs: ModuleType | type,
    group: str,
    *,
    extra_plugins: Iterable[object] = (),
    third_party: bool = True,
    error: type[Exception] = PluginError,
) -> pluggy.PluginManager:
    """A pluggy manager for ``specs`` with the plugins of entry-point ``group`` (and
    ``extra_plugins``); a hook implementation that matches no spec raises ``error``. The
    router's and the node's plugin managers are both made here."""
    pm = pluggy.PluginManager(project)
    pm.add_hookspecs(specs)
    load_entry_points(pm, group, third_party=third_party)
    for plugin in extra_plugins:
        pm.register(plugin)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise error(f"a plugin implements an unknown hook: {exc}") from exc
    return pm


def build_manager(extra_plugins: Iterable[object] = (), *, third_party: bool = True) -> pluggy.PluginManager:
    return new_manager(
        hookspecs.PROJECT, hookspecs, ENTRY_POINT_GROUP, extra_plugins=extra_plugins, third_party=third_party
    )


@dataclass
class LoadedPlugins:
    manager: pluggy.PluginManager
    capabilities: dict[str, Capability[Any]]
    enabled: list[str]

    def _enabled(self) -> list[Capability[Any]]:
        return [self.capabilities[name] for name in self.enabled]

    @property
    def enabled_flags(self) -> frozenset[str]:
        flags: set[str] = set()
        for capability in self._enabled():
            flags |= capability.model_flags
        return frozenset(flags)

    @property
    def known_flags(self) -> frozenset[str]:
        """Flags of every installed capability (enabled or not)."""
        return frozenset(f for c in self.capabilities.values() for f in c.model_flags)

    def json_schemas(self) -> dict[str, dict[str, Any]]:
        return {
            c.name: {name: msgspec.json.schema(struct) for name, struct in c.schemas.items()}
            for c in self._enabled()
        }

    def upstream_flags(self, model_id: str, kind: str) -> list[str]:
        """The flags of an OpenAI-compatible server's model that nobody declared: what the
        installed capabilities claim for it, else their fallbacks (see :class:`UpstreamFlags`).
        Installed, not only enabled: a speech model must not fall back to chat because the audio
        capability is off (flags of disabled capabilities are filtered out where models are
        listed and routed)."""
        rules: list[UpstreamFlags] = [
            c.upstream_flags for c in self.capabilities.values() if c.upstream_flags
        ]
        claimed: set[str] = set()
        for rule in rules:
            claimed |= rule.match(model_id, kind)
        if not claimed:
            for rule in rules:
                claimed |= rule.fallback
        return sorted(claimed)


def load_plugins(
    enabled: Iterable[str] | None,
    *,
    extra_plugins: Iterable[object] = (),
    third_party: bool = True,
) -> LoadedPlugins:
    pm = build_manager(extra_plugins, third_party=third_party)
    capabilities: dict[str, Capability[Any]] = {}

    def register(capability: Capability[Any]) -> None:
        if not isinstance(capability, Capability):
            raise PluginError(f"llmlb_register_capabilities expects a Capability, got {capability!r}")
        if capability.name in capabilities:
            raise PluginError(f"capability {capability.name!r} registered twice")
        for name, struct in capability.schemas.items():
            if not (isinstance(struct, type) and issubclass(struct, msgspec.Struct)):
                raise PluginError(f"{capability.name}: schema {name!r} must be a msgspec.Struct subclass")
        capabilities[capability.name] = capability

    pm.hook.llmlb_register_capabilities(register=register)
    enabled_list = list(dict.fromkeys(capabilities if enabled is None else enabled))
    unknown = [name for name in enabled_list if name not in capabilities]
    if unknown:
        raise PluginError(
            f"enabled capabilities {unknown} are not provided by any plugin "
            f"(available: {sorted(capabilities)})"
        )
    log.info("capabilities: available=%s enabled=%s", sorted(capabilities), enabled_list)
    return LoadedPlugins(manager=pm, capabilities=capabilities, enabled=enabled_list)
