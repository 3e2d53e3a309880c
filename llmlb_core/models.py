"""Model registry: what ``/v1/models`` lists and how a request's ``model`` is resolved.

The list is aggregated from online nodes (and, later, endpoints), filtered to the capability
flags of enabled capabilities. Admins may register a model to give it per-model defaults
(opaque to the core; each capability plugin reads the keys it knows) and a description; a
registered model that no online node serves is known (503 ``no_capable_nodes``), not unknown
(404).

What a model can do is the capabilities' business: each capability that serves a model and has
a ``describe_model`` gets the ``details`` of the model's advert from every online node serving
it, and what it returns is merged into the model object's ``details`` (a describer that fails
or returns something that is not a JSON object is logged once and skipped: a node's odd
details never break ``/v1/models``).
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from llmlb_core.capability import ModelDescriber
from llmlb_core.errors import ModelNotFound, NoCapableNodes
from llmlb_core.nodes import NodeRegistry
from llmlb_core.protocol import ModelAdvert
from llmlb_core.storage import ModelRow, ModelStore

log = logging.getLogger("llmlb.models")


@dataclass(frozen=True)
class Describer:
    """An enabled capability's ``describe_model`` and the flags of the models it serves."""

    capability: str
    flags: frozenset[str]
    describe: ModelDescriber


class ModelObject(msgspec.Struct, kw_only=True):
    """OpenAI's model object plus llmlb's capability flags and routing facts."""

    id: str
    object: str = "model"
    created: int
    owned_by: str = "llmlb"
    capabilities: list[str]
    nodes: int
    defaults: dict[str, Any] = msgspec.field(default_factory=dict)
    description: str = ""
    # What the capabilities serving it say it can do (e.g. images: family, native size, supports).
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class ModelRegistry:
    def __init__(self, store: ModelStore, nodes: NodeRegistry) -> None:
        self._store = store
        self._nodes = nodes
        self._registered: dict[str, ModelRow] = {m.id: m for m in store.list_models()}
        self._describers: list[Describer] = []
        self._failed_describers: set[str] = set()

    def describe_with(self, describers: Sequence[Describer]) -> None:
        """The enabled capabilities' ``describe_model`` (set once, when the router is built)."""
        self._describers = list(describers)

    # --- admin ---------------------------------------------------------------------------
    def register(
        self, model_id: str, capabilities: list[str], defaults: dict[str, Any], description: str
    ) -> ModelRow:
        row = ModelRow(
            id=model_id,
            capabilities=sorted(set(capabilities)),
            defaults=defaults,
            description=description,
            created_at=self._registered[model_id].created_at if model_id in self._registered else time.time(),
        )
        self._store.upsert_model(row)
        self._registered[model_id] = row
        return row

    def delete(self, model_id: str) -> bool:
        existed = self._store.delete_model(model_id)
        self._registered.pop(model_id, None)
        return existed

    def registered(self) -> list[ModelRow]:
        return list(self._registered.values())

    def defaults(self, model_id: str) -> dict[str, Any]:
        row = self._registered.get(model_id)
        return dict(row.defaults) if row else {}

    # --- listing -------------------------------------------------------------------------
    def _online_adverts(
        self, enabled_flags: frozenset[str]
    ) -> dict[str, builtins.list[tuple[float, ModelAdvert]]]:
        """Each model with a flag in ``enabled_flags``: (node registration time, advert) per node."""
        adverts: dict[str, builtins.list[tuple[float, ModelAdvert]]] = {}
        for node in self._nodes.online():
            for advert in node.models.values():
                if enabled_flags.intersection(advert.capabilities):
                    adverts.setdefault(advert.id, []).append((node.registered_at, advert))
        return adverts

    def list(self, enabled_flags: frozenset[str]) -> list[ModelObject]:
        out = []
        for model_id, served in sorted(self._online_adverts(enabled_flags).items()):
            flags = sorted({f for _, a in served for f in enabled_flags.intersection(a.capabilities)})
            row = self._registered.get(model_id)
            out.append(
                ModelObject(
                    id=model_id,
                    created=int(row.created_at if row else min(at for at, _ in served)),
                    capabilities=flags,
                    nodes=len(served),
                    defaults=dict(row.defaults) if row else {},
                    description=row.description if row else "",
                    details=self._describe(model_id, frozenset(flags), [a.details for _, a in served]),
                )
            )
        return out

    def _describe(
        self, model_id: str, flags: frozenset[str], details: builtins.list[dict[str, Any]]
    ) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for describer in self._describers:
            if not describer.flags.intersection(flags):
                continue
            try:
                described = msgspec.to_builtins(describer.describe(details))
                if not isinstance(described, dict):
                    raise TypeError(f"returned {type(described).__name__}, not a dict")
            except Exception as exc:
                if describer.capability not in self._failed_describers:
                    self._failed_describers.add(describer.capability)
                    log.warning(
                        "capability %s could not describe model %r (details left out; logged once): %r",
                        describer.capability,
                        model_id,
                        exc,
                    )
                continue
            merged.update(described)
        return merged

    def get(self, model_id: str, enabled_flags: frozenset[str]) -> ModelObject:
        for model in self.list(enabled_flags):
            if model.id == model_id:
                return model
        raise ModelNotFound(model_id)

    def online(self, flags: frozenset[str]) -> builtins.list[str]:
        """Ids of the models that an online node serves with any of ``flags``, sorted."""
        return sorted(self._online_adverts(flags))

    def details(self, model: str, flags: frozenset[str]) -> builtins.list[Mapping[str, Any]]:
        """The ``details`` of ``model``'s advert from every online node serving it with ``flags``."""
        return [node.models[model].details for node in self._nodes.candidates(model, flags)]

    def idle_nodes(self, model: str, flags: frozenset[str]) -> int:
        """How many online nodes serving ``model`` have a free slot now."""
        return sum(1 for node in self._nodes.candidates(model, flags) if node.free > 0)

    # --- resolution ----------------------------------------------------------------------
    def ensure_servable(self, model_id: str, flags: frozenset[str]) -> None:
        """Raise 404 for an unknown model, 503 ``no_capable_nodes`` when none is online."""
        if self._nodes.candidates(model_id, flags):
            return
        row = self._registered.get(model_id)
        known = self._nodes.known_model(model_id, flags) or (
            row is not None and bool(flags.intersection(row.capabilities))
        )
        if not known:
            raise ModelNotFound(model_id)
        raise NoCapableNodes(model_id)
