"""The router's half of the model flag rules (which capability serves a model), built from what
the installed capabilities declare; applied where adverts enter the router."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from llmlb_core.plugins import LoadedPlugins
from llmlb_core.protocol import ModelAdvert


class FlagRules:
    """The router's half of the flag rules, built from what the installed capabilities declare:
    flag aliases (merged from every ``Capability.flag_aliases``) and the flags of models nobody
    declared any for (``LoadedPlugins.upstream_flags``, from the enabled capabilities).

    Used where adverts enter the router: an endpoint's health check and a node's registration
    or heartbeat (a node's ``openai_compatible`` runtime cannot know the capabilities)."""

    def __init__(self, plugins: LoadedPlugins) -> None:
        self._plugins = plugins
        aliases: dict[str, set[str]] = {}
        for capability in plugins.capabilities.values():
            for alias, flags in capability.flag_aliases.items():
                aliases.setdefault(alias, set()).update(flags)
        self.aliases: dict[str, frozenset[str]] = {a: frozenset(f) for a, f in aliases.items()}

    def expand(self, flags: Iterable[str]) -> list[str]:
        """``flags`` with aliases replaced by what they stand for, sorted."""
        out: set[str] = set()
        for flag in flags:
            out |= self.aliases.get(flag, {flag})
        return sorted(out)

    def unknown(self, flags: Iterable[str]) -> list[str]:
        """The flags (aliases expanded) that no installed capability serves."""
        return sorted(set(self.expand(flags)) - self._plugins.known_flags)

    def advert(self, advert: ModelAdvert) -> ModelAdvert:
        """``advert`` as the router keeps it: declared flags with aliases expanded; none declared
        and an upstream kind named (``kind``, or ``upstream_kind`` from older nodes): the flags
        the enabled capabilities give such a model. Anything else is kept as it is."""
        if advert.capabilities:
            if not any(flag in self.aliases for flag in advert.capabilities):
                return advert
            flags = self.expand(advert.capabilities)
        else:
            kind = advert.details.get("kind", advert.details.get("upstream_kind"))
            if not isinstance(kind, str):
                return advert
            flags = self._plugins.upstream_flags(advert.id, kind)
        return msgspec.structs.replace(advert, capabilities=flags)

    def adverts(self, adverts: list[ModelAdvert]) -> list[ModelAdvert]:
        return [self.advert(advert) for advert in adverts]
