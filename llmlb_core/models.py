"""Model registry: what ``/v1/models`` lists and how a request's ``model`` is resolved.

The list is aggregated from online nodes (and, later, endpoints), filtered to the capability
flags of enabled capabilities. Admins may register a model to give it per-model defaults
(opaque to the core; each capability plugin reads the keys it knows) and a description; a
registered model that no online node serves is known (503 ``no_capable_nodes``), not unknown
(404).
"""

from __future__ import annotations

import builtins
import time
from typing import Any

import msgspec

from llmlb_core.errors import ModelNotFound, NoCapableNodes
from llmlb_core.nodes import NodeRegistry
from llmlb_core.storage import ModelRow, ModelStore


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


class ModelRegistry:
    def __init__(self, store: ModelStore, nodes: NodeRegistry) -> None:
        self._store = store
        self._nodes = nodes
        self._registered: dict[str, ModelRow] = {m.id: m for m in store.list_models()}

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
    def list(self, enabled_flags: frozenset[str]) -> list[ModelObject]:
        flags: dict[str, set[str]] = {}
        counts: dict[str, int] = {}
        created: dict[str, float] = {}
        for node in self._nodes.online():
            for advert in node.models.values():
                usable = enabled_flags.intersection(advert.capabilities)
                if not usable:
                    continue
                flags.setdefault(advert.id, set()).update(usable)
                counts[advert.id] = counts.get(advert.id, 0) + 1
                created[advert.id] = min(created.get(advert.id, node.registered_at), node.registered_at)
        out = []
        for model_id in sorted(flags):
            row = self._registered.get(model_id)
            out.append(
                ModelObject(
                    id=model_id,
                    created=int(row.created_at if row else created[model_id]),
                    capabilities=sorted(flags[model_id]),
                    nodes=counts[model_id],
                    defaults=dict(row.defaults) if row else {},
                    description=row.description if row else "",
                )
            )
        return out

    def get(self, model_id: str, enabled_flags: frozenset[str]) -> ModelObject:
        for model in self.list(enabled_flags):
            if model.id == model_id:
                return model
        raise ModelNotFound(model_id)

    def online(self, flags: frozenset[str]) -> builtins.list[str]:
        """Ids of the models that an online node serves with any of ``flags``, sorted."""
        return sorted({m.id for m in self.list(flags)})

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
