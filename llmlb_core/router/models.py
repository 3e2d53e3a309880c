"""Model registry: what ``/v1/models`` and ``/v0/models`` list and how a request's ``model`` is
resolved.

``/v1/models`` is aggregated from online nodes (and endpoints), filtered to the capability flags
of enabled capabilities. Admins may register a model to give it per-model defaults (opaque to
the core; each capability plugin reads the keys it knows) and a description; a node may describe
its models too (a stable_diffusion node: ``description`` in model.toml). An admin's description
wins over a node's.

``/v0/models`` (admin) lists every model the router knows, with where it runs
(:class:`ModelEntry`): the registered ones, the ones any listed node advertises (online,
draining or offline), and the ones a node advertised before it left (deregistered, or released
by an admin) in the last :data:`FORGET_GONE_AFTER_S` seconds. The same knowledge decides a
request's answer when no online node serves its model (:meth:`ModelRegistry.ensure_servable`):
a known model is a 503 ``no_capable_nodes`` that says where and when it was last seen; only a
model nobody registered or advertised (or not for a day) is a 404 ``model_not_found``. What
nodes left is kept in memory and, for deregistered nodes, read back from the database at start,
so a router restart does not turn a recently seen model into a 404.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import msgspec

from llmlb_core.capability import ModelDescriber
from llmlb_core.protocol import ModelAdvert, NodeRegistration, plain_description
from llmlb_core.router.nodes import NodeRegistry, NodeState
from llmlb_core.server.durations import ago
from llmlb_core.server.errors import ModelNotFound, NoCapableNodes, OpenAIError
from llmlb_core.storage.interfaces import ModelRow, ModelStore, NodeStore

log = logging.getLogger("llmlb.models")

# How long the models of a node that left (deregistered or released) stay known: 503 with where
# they were last seen, then 404 again (a day: a node restarted for an upgrade, or moved, comes
# back well within it; a model removed for good stops being "known" by the next day).
FORGET_GONE_AFTER_S = 24 * 3600

# Where a model runs, best first: an online node takes requests now, a draining one finishes its
# jobs, an offline one may come back, a gone one left (deregistered or released).
PlacementStatus = Literal["online", "draining", "offline", "gone"]
ModelStatus = Literal["online", "draining", "offline", "unserved"]
_RANK: dict[str, int] = {"online": 0, "draining": 1, "offline": 2, "gone": 3}


class ModelRegistryStore(ModelStore, NodeStore, Protocol):
    """What the model registry reads: its registered models, and (once, at start) the
    registrations of nodes that left, for what they advertised."""


@dataclass(frozen=True)
class Describer:
    """An enabled capability's ``describe_model`` and the flags of the models it serves."""

    capability: str
    flags: frozenset[str]
    describe: ModelDescriber


@dataclass(frozen=True)
class GoneNode:
    """A node that left the list, with what it advertised (kept :data:`FORGET_GONE_AFTER_S`)."""

    id: str
    name: str
    models: Mapping[str, ModelAdvert]
    last_seen_at: float  # wall clock


@dataclass(frozen=True)
class Sighting:
    """One node that advertises (or advertised) a model."""

    node_id: str
    node_name: str
    status: PlacementStatus
    last_seen_at: float | None
    advert: ModelAdvert

    def placement(self) -> Placement:
        return Placement(
            node_id=self.node_id, node_name=self.node_name, status=self.status, last_seen_at=self.last_seen_at
        )


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


class Placement(msgspec.Struct, kw_only=True):
    """A node that serves (or served) a model, as ``/v0/models`` shows it."""

    node_id: str
    node_name: str
    status: PlacementStatus
    last_seen_at: float | None  # unix seconds


class ModelEntry(msgspec.Struct, kw_only=True):
    """A model as ``/v0/models`` lists it: every known model, served now or not.

    ``status``: ``online`` (an online node serves it), ``draining`` (only draining nodes do),
    ``offline`` (its nodes are offline or left: requests get a 503), ``unserved`` (registered by
    an admin, never advertised by a node)."""

    id: str
    object: str = "model"
    status: ModelStatus
    capabilities: list[str]
    description: str = ""
    registered: bool  # an admin registered it (POST /v0/models): it has defaults/description
    defaults: dict[str, Any] = msgspec.field(default_factory=dict)
    created_at: float | None  # registration by the admin, or first registration of a node
    last_seen_at: float | None  # the latest heartbeat of a node serving it
    nodes: list[Placement]
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class ModelList(msgspec.Struct, kw_only=True):
    """The answer of ``/v0/models``."""

    object: str = "list"
    data: list[ModelEntry]


def _description(advert: ModelAdvert) -> str:
    """A node's description of a model, on one printable line and bounded (nodes are untrusted;
    the schema checked it at registration, an endpoint's advert is the router's own)."""
    return plain_description(advert.description)


class ModelRegistry:
    def __init__(
        self, store: ModelRegistryStore, nodes: NodeRegistry, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._nodes = nodes
        self._clock = clock  # wall clock: the nodes' last_seen_at are unix times
        self._registered: dict[str, ModelRow] = {m.id: m for m in store.list_models()}
        # Called after every change made here (several routers: the others reload).
        self.on_change: Callable[[], None] | None = None
        self._describers: list[Describer] = []
        self._failed_describers: set[str] = set()
        self._listed: dict[str, NodeState] = {n.id: n for n in nodes.all()}
        self._gone: dict[str, GoneNode] = self._deregistered(store, clock() - FORGET_GONE_AFTER_S)
        nodes.subscribe(self._note_departures)

    def describe_with(self, describers: Sequence[Describer]) -> None:
        """The enabled capabilities' ``describe_model`` (set once, when the router is built)."""
        self._describers = list(describers)

    # --- nodes that left -----------------------------------------------------------------
    @staticmethod
    def _deregistered(store: NodeStore, horizon: float) -> dict[str, GoneNode]:
        """The nodes that deregistered after ``horizon``, from the database (at start)."""
        gone = {}
        for row in store.list_nodes():
            if row.deregistered_at is None or row.deregistered_at < horizon:
                continue
            try:
                reg = msgspec.convert(row.record, NodeRegistration)
            except msgspec.ValidationError:
                continue  # NodeRegistry logs and drops unreadable records
            gone[row.id] = GoneNode(row.id, reg.name, {m.id: m for m in reg.models}, row.last_seen_at)
        return gone

    def _note_departures(self) -> None:
        """Called on every change of the node list: remember what the nodes that left served."""
        listed = {n.id: n for n in self._nodes.all()}
        for node_id, node in self._listed.items():
            if node_id not in listed and self._nodes.deregistered(node_id):
                seen = node.last_seen_wall or node.registered_at
                self._gone[node_id] = GoneNode(node.id, node.name, dict(node.models), seen)
        # Not "gone" any more: back under the same id, restarted under a new one with the same
        # name (a node's id is random per start unless set; its name is <host>-<port> by
        # default), or released by an admin (DELETE /v0/nodes/{id}, a deleted endpoint): an
        # admin's removal makes its models unknown (404), not unavailable (503).
        names = {n.name for n in listed.values()}
        for node_id in [
            i
            for i, g in self._gone.items()
            if i in listed or g.name in names or not self._nodes.deregistered(i)
        ]:
            del self._gone[node_id]
        self._listed = listed

    def _recently_gone(self) -> builtins.list[GoneNode]:
        horizon = self._clock() - FORGET_GONE_AFTER_S
        for node_id in [i for i, g in self._gone.items() if g.last_seen_at < horizon]:
            del self._gone[node_id]
        return list(self._gone.values())

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
        if self.on_change is not None:
            self.on_change()
        return row

    def delete(self, model_id: str) -> bool:
        existed = self._store.delete_model(model_id)
        self._registered.pop(model_id, None)
        if self.on_change is not None:
            self.on_change()
        return existed

    def reload(self) -> None:
        """Re-read the registered models (another router changed them)."""
        self._registered = {m.id: m for m in self._store.list_models()}

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

    def _description(self, row: ModelRow | None, adverts: Sequence[ModelAdvert]) -> str:
        """The admin's description, else the first a node gives."""
        if row is not None and row.description:
            return row.description
        return next((d for d in map(_description, adverts) if d), "")

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
                    description=self._description(row, [a for _, a in served]),
                    details=self._describe(model_id, frozenset(flags), [a.details for _, a in served]),
                )
            )
        return out

    def _sightings(self, enabled_flags: frozenset[str]) -> dict[str, builtins.list[Sighting]]:
        """Every node that advertises (or, gone, advertised) a model with an enabled flag."""
        seen: dict[str, builtins.list[Sighting]] = {}
        for node in self._nodes.all():
            status = self._nodes.status(node)
            for advert in node.models.values():
                if enabled_flags.intersection(advert.capabilities):
                    seen.setdefault(advert.id, []).append(
                        Sighting(node.id, node.name, status, node.last_seen_wall, advert)
                    )
        for gone in self._recently_gone():
            for advert in gone.models.values():
                if enabled_flags.intersection(advert.capabilities):
                    seen.setdefault(advert.id, []).append(
                        Sighting(gone.id, gone.name, "gone", gone.last_seen_at, advert)
                    )
        for sightings in seen.values():
            sightings.sort(key=lambda s: (_RANK[s.status], -(s.last_seen_at or 0.0)))
        return seen

    def entries(self, enabled_flags: frozenset[str]) -> builtins.list[ModelEntry]:
        """Every known model with where it runs (``/v0/models``), sorted by id."""
        seen = self._sightings(enabled_flags)
        registered_at = {n.id: n.registered_at for n in self._nodes.all()}
        out = []
        for model_id in sorted(seen.keys() | self._registered.keys()):
            sightings = seen.get(model_id, [])
            row = self._registered.get(model_id)
            adverts = [s.advert for s in sightings]
            online = [s.advert for s in sightings if s.status == "online"]
            flags = {f for a in adverts for f in enabled_flags.intersection(a.capabilities)}
            if row is not None:
                flags.update(row.capabilities)
            seen_at = [s.last_seen_at for s in sightings if s.last_seen_at is not None]
            listed = [registered_at[s.node_id] for s in sightings if s.node_id in registered_at]
            out.append(
                ModelEntry(
                    id=model_id,
                    status=_model_status(sightings),
                    capabilities=sorted(flags),
                    description=self._description(row, adverts),
                    registered=row is not None,
                    defaults=dict(row.defaults) if row else {},
                    created_at=row.created_at if row else min(listed, default=None),
                    last_seen_at=max(seen_at, default=None),
                    nodes=[s.placement() for s in sightings],
                    details=self._describe(
                        model_id, frozenset(flags), [a.details for a in (online or adverts)]
                    ),
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
        """The model as ``/v1/models`` lists it; else the answer a request for it gets (404, or
        503 saying where it was last seen)."""
        for model in self.list(enabled_flags):
            if model.id == model_id:
                return model
        raise self.unavailable(model_id, enabled_flags)

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
        if not self._nodes.candidates(model_id, flags):
            raise self.unavailable(model_id, flags)

    def unavailable(self, model_id: str, flags: frozenset[str]) -> OpenAIError:
        """Why no online node can take ``model_id`` now (called only when none can): 503
        ``no_capable_nodes`` naming where and when it was last seen, or 404 when nobody
        registered it or advertised it in the last day."""
        sightings = self._sightings(flags).get(model_id, [])
        if sightings:
            return NoCapableNodes(model_id, _last_seen(sightings, self._clock()))
        row = self._registered.get(model_id)
        if row is not None and flags.intersection(row.capabilities):
            return NoCapableNodes(model_id, "it is registered, but no node has advertised it yet")
        return ModelNotFound(model_id)


def _model_status(sightings: Sequence[Sighting]) -> ModelStatus:
    if not sightings:
        return "unserved"
    best = sightings[0].status  # sorted best first
    return "offline" if best == "gone" else best


def _last_seen(sightings: Sequence[Sighting], now: float) -> str:
    """Where a model was seen last, for a 503's message."""
    best = sightings[0]
    if best.status == "draining":
        return "draining on node " + ", ".join(s.node_name for s in sightings if s.status == "draining")
    latest = max(sightings, key=lambda s: s.last_seen_at or 0.0)
    when = f"{ago(now - latest.last_seen_at)} ago " if latest.last_seen_at is not None else ""
    state = "which has left" if latest.status == "gone" else "now offline"
    return f"last seen {when}on node {latest.node_name}, {state}"
