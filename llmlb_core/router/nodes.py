"""Node registry and health: who is registered, who is online, what each can serve.

A node is *online* while its heartbeats keep arriving within ``node_timeout_s`` and the router
holds its inference credential (given at registration, kept in memory only). Registration
records survive a router restart in SQLite; such nodes show as offline until they heartbeat,
are told to re-register, and do.

Each node id belongs to the API key that first registered it (``owner_key_id``, persisted): the
HTTP routes (:mod:`llmlb_core.router.node_routes`) let only that key or an admin key act on it. A node that
deregisters leaves the list but its id stays claimed; :meth:`NodeRegistry.release` (admin) frees
it. A key that registers a node at the base URL of an offline entry (or a claim) of its own
replaces that stale entry, so node restarts under fresh ids do not pile up.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import msgspec

from llmlb_core.protocol import Heartbeat, JobProgress, ModelAdvert, NodeRegistration
from llmlb_core.server.log_format import log_list
from llmlb_core.storage.interfaces import NodeStore

log = logging.getLogger("llmlb.nodes")

NodeStatus = Literal["online", "offline", "draining"]


# The ids of OpenAI-compatible endpoints an admin registered (llmlb_core.router.endpoints): servers
# that are not llmlb nodes, which the router calls as nodes.
ENDPOINT_ID_PREFIX = "endpoint:"


@dataclass(eq=False)
class NodeState:
    id: str
    name: str
    base_url: str
    runtime_types: list[str]
    models: dict[str, ModelAdvert]
    slots: int
    accelerators: list[dict[str, Any]]
    registered_at: float
    token: str | None = None
    owner_key_id: str | None = None  # the key that first registered this id (None: endpoints)
    last_heartbeat: float | None = None  # monotonic
    last_seen_wall: float | None = None
    active_jobs: int = 0
    free_slots: int = 0
    queued_jobs: int = 0
    loaded_models: list[str] = field(default_factory=list)
    # The running jobs' progress, as the last heartbeat reported it (at most MAX_REPORTED_JOBS).
    jobs: list[JobProgress] = field(default_factory=list)
    draining: bool = False
    # Router-side accounting.
    inflight: int = 0
    # Jobs the router stopped waiting for (client gone, timeout) that the node may still run;
    # they hold their slots until a heartbeat shows them ended (see ``heartbeat``).
    abandoned: int = 0
    # Slots other routers hold on this node (several routers: llmlb_core.shared.slots), as
    # last read from Redis; 0 with one router.
    others_busy: int = 0
    completed: int = 0
    failures: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=20))
    suspect_until: float = 0.0  # monotonic
    avg_duration_s: float | None = None
    # Told of every failure recorded here (several routers: the others mark it suspect too).
    on_failure: Callable[[NodeState, str, float], None] | None = field(default=None, repr=False)

    @property
    def is_endpoint(self) -> bool:
        """A registered OpenAI-compatible server, not an llmlb node."""
        return self.id.startswith(ENDPOINT_ID_PREFIX)

    def status(self, now: float, timeout: float) -> NodeStatus:
        if self.token is None or self.last_heartbeat is None or now - self.last_heartbeat > timeout:
            return "offline"
        return "draining" if self.draining else "online"

    @property
    def free(self) -> int:
        return self.slots - self.inflight - self.abandoned - self.others_busy

    def serves(self, model: str, flags: frozenset[str]) -> bool:
        advert = self.models.get(model)
        return advert is not None and bool(flags.intersection(advert.capabilities))

    def record_duration(self, seconds: float) -> None:
        self.completed += 1
        if self.avg_duration_s is None:
            self.avg_duration_s = seconds
        else:
            self.avg_duration_s = 0.8 * self.avg_duration_s + 0.2 * seconds

    def record_failure(self, reason: str, cooldown_s: float, *, at: float | None = None) -> None:
        self.failures.append((at or time.time(), reason))
        self.suspect_until = max(self.suspect_until, time.monotonic() + cooldown_s)
        if self.on_failure is not None and at is None:  # ``at``: a failure another router saw
            self.on_failure(self, reason, cooldown_s)


@dataclass(frozen=True)
class Claim:
    """A deregistered node id that stays its owner's until the owner or an admin reuses it."""

    owner_key_id: str
    base_url: str


class NodeObserver(Protocol):
    """Told of every change to this router's nodes that other routers must see (several routers:
    :mod:`llmlb_core.router.replicas`). Not told of endpoints' nodes: each router derives those
    from the shared endpoint list itself."""

    def registered(self, node: NodeState) -> None:
        """A node registered here, or its registration changed (models, draining)."""

    def heartbeat(self, node: NodeState) -> None:
        """A node's heartbeat arrived here."""

    def removed(self, node_id: str, claim: Claim | None) -> None:
        """A node left (``claim``: its id stays its owner's) or was released (None)."""

    def failed(self, node: NodeState, reason: str, cooldown_s: float) -> None:
        """A request to the node failed here."""


class NodeView(msgspec.Struct, kw_only=True):
    """What ``/v0/nodes`` shows of a node (never its credential)."""

    id: str
    name: str
    base_url: str
    status: str
    runtime_types: list[str]
    models: list[ModelAdvert]
    slots: int
    active_jobs: int
    inflight: int
    abandoned: int
    free_slots: int
    queued_jobs: int
    loaded_models: list[str]
    jobs: list[JobProgress]
    accelerators: list[dict[str, Any]]
    registered_at: float
    last_seen_at: float | None
    completed: int
    avg_duration_s: float | None
    recent_failures: list[dict[str, Any]]
    suspect: bool
    owner_key_id: str | None  # the API key (id) that owns this node id; None: an endpoint


class NodeRegistry:
    def __init__(
        self,
        store: NodeStore,
        *,
        timeout_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self.timeout_s = timeout_s
        self._clock = clock
        self._nodes: dict[str, NodeState] = {}
        self._claims: dict[str, Claim] = {}
        self._listeners: list[Callable[[], None]] = []
        self._last_status: dict[str, NodeStatus] = {}
        self._observer: NodeObserver | None = None
        for row in store.list_nodes():
            try:
                reg = msgspec.convert(row.record, NodeRegistration)
            except msgspec.ValidationError as exc:
                # E.g. an id from an older version (``host:port``) that the charset now refuses.
                log.warning("dropping unreadable node record %r: %s", row.id, exc)
                store.delete_node(row.id)
                continue
            if row.deregistered_at is not None:
                if row.owner_key_id is not None:
                    self._claims[row.id] = Claim(row.owner_key_id, reg.base_url.rstrip("/"))
                continue
            state = self._state_from(reg, row.registered_at)
            state.last_seen_wall = row.last_seen_at
            state.owner_key_id = row.owner_key_id
            self._nodes[row.id] = state

    # --- change notification -------------------------------------------------------------
    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def changed(self) -> None:
        for listener in self._listeners:
            listener()

    def share_with(self, observer: NodeObserver) -> None:
        """Tell ``observer`` of every shared change from now on (several routers)."""
        self._observer = observer
        for node in self._nodes.values():
            node.on_failure = observer.failed

    def _shared(self, node_id: str) -> NodeObserver | None:
        """The observer, for a node other routers must hear of (not an endpoint's)."""
        if node_id.startswith(ENDPOINT_ID_PREFIX):
            return None
        return self._observer

    # --- registration and heartbeats -----------------------------------------------------
    @staticmethod
    def _state_from(reg: NodeRegistration, registered_at: float) -> NodeState:
        return NodeState(
            id=reg.node_id,
            name=reg.name,
            base_url=reg.base_url.rstrip("/"),
            runtime_types=list(reg.runtime_types),
            models={m.id: m for m in reg.models},
            slots=reg.slots,
            accelerators=[msgspec.to_builtins(a) for a in reg.accelerators],
            registered_at=registered_at,
        )

    def register(self, reg: NodeRegistration, owner_key_id: str | None = None) -> NodeState:
        """Add or refresh a node. The caller has checked that the key may use this id; an id
        keeps its first owner, an unowned one becomes ``owner_key_id``'s."""
        now_wall = time.time()
        owner = self.owner_of(reg.node_id) or owner_key_id
        record = msgspec.to_builtins(reg)
        record["token"] = ""  # the credential is never persisted
        self._store.upsert_node(reg.node_id, record, now_wall, owner)
        self._claims.pop(reg.node_id, None)
        old = self._nodes.get(reg.node_id)
        state = self._state_from(reg, now_wall)
        state.owner_key_id = owner
        state.token = reg.token
        state.last_heartbeat = self._clock()
        state.last_seen_wall = now_wall
        state.free_slots = reg.slots
        state.draining = reg.draining  # a restarted node takes work again; a draining one does not
        if old is not None:  # keep router-side accounting across re-registration
            state.inflight = old.inflight
            state.others_busy = old.others_busy
            state.completed = old.completed
            state.failures = old.failures
            state.avg_duration_s = old.avg_duration_s
        self._nodes[reg.node_id] = state
        self._forget_stale(state)
        if self._observer is not None:
            state.on_failure = self._observer.failed
            if (observer := self._shared(state.id)) is not None:
                observer.registered(state)
        log.info(
            "node %s (%s) registered at %s: runtimes=%s models=%s slots=%d",
            reg.name,
            reg.node_id,
            state.base_url,
            log_list(reg.runtime_types),
            log_list(sorted(state.models)),
            reg.slots,
        )
        self.changed()
        return state

    def heartbeat(self, hb: Heartbeat) -> bool:
        """Apply a heartbeat; False when the node must re-register (unknown to this router)."""
        state = self._nodes.get(hb.node_id)
        if state is None or state.token is None:
            return False  # unknown, or known from the database but not re-registered yet
        was_offline = state.status(self._clock(), self.timeout_s) == "offline"
        state.last_heartbeat = self._clock()
        state.last_seen_wall = time.time()
        state.active_jobs = hb.active_jobs
        state.free_slots = hb.free_slots
        state.queued_jobs = hb.queued_jobs
        state.loaded_models = list(hb.loaded_models)
        state.jobs = list(hb.jobs)
        # The node runs active + queued jobs; those beyond the router's in-flight ones are what
        # is left of the abandoned ones (the rest ended): their slots come back now.
        still_running = min(state.abandoned, max(0, hb.active_jobs + hb.queued_jobs - state.inflight))
        slots_freed = still_running < state.abandoned
        state.abandoned = still_running
        if hb.models is not None:
            state.models = {m.id: m for m in hb.models}
        if (observer := self._shared(state.id)) is not None:
            if hb.models is not None:
                observer.registered(state)  # the registration now carries the new models
            observer.heartbeat(state)
        if was_offline:
            # A draining node stays draining: its heartbeats do not put it back in traffic.
            log.info(
                "node %s (%s) is back %s", state.name, state.id, "(draining)" if state.draining else "online"
            )
            self._last_status[state.id] = self.status(state)
        if was_offline or slots_freed:
            self.changed()
        return True

    def mark_down(self, node: NodeState, reason: str) -> bool:
        """Take a node out of traffic at once (connection refused/reset); its next heartbeat
        or registration brings it back. Logged here, with the reason, and not again by
        :meth:`sweep` as a missed heartbeat. Whether it was up (and so logged) until now."""
        if node.last_heartbeat is None:
            return False
        node.last_heartbeat = None
        self._last_status[node.id] = "offline"
        log.warning(
            "node %s (%s) is down: %s (failover: no traffic to it until its next heartbeat)",
            node.name,
            node.id,
            reason,
        )
        self.changed()
        return True

    def set_draining(self, node_id: str, draining: bool = True) -> bool:
        """Drain (no new work) or resume a node; False when the id is not listed."""
        state = self._nodes.get(node_id)
        if state is None:
            return False
        state.draining = draining
        log.info("node %s (%s) %s", state.name, node_id, "is draining" if draining else "resumed")
        if (observer := self._shared(node_id)) is not None:
            observer.registered(state)
        self.changed()
        return True

    def deregister(self, node_id: str) -> bool:
        """The node leaves the list; an owned id stays claimed (see :meth:`release`)."""
        state = self._nodes.pop(node_id, None)
        claim = None
        if state is not None and state.owner_key_id is not None:
            self._store.mark_node_deregistered(node_id, time.time())
            claim = self._claims[node_id] = Claim(state.owner_key_id, state.base_url)
        else:
            self._store.delete_node(node_id)
        if (observer := self._shared(node_id)) is not None:
            observer.removed(node_id, claim)
        if state is not None:
            log.info("node %s (%s) deregistered", state.name, node_id)
            self.changed()
        return state is not None

    def release(self, node_id: str) -> bool:
        """Forget a node id and its owner (admin): any key may claim it next."""
        state = self._nodes.pop(node_id, None)
        claim = self._claims.pop(node_id, None)
        existed = self._store.delete_node(node_id)
        if (observer := self._shared(node_id)) is not None:
            observer.removed(node_id, None)
        if state is not None or claim is not None or existed:
            log.info("node id %s released", node_id)
        if state is not None or claim is not None:
            self.changed()
        return state is not None or claim is not None or existed

    def _forget_stale(self, fresh: NodeState) -> None:
        """Drop the same owner's offline entries and claims at ``fresh``'s base URL: that node
        restarted under a new id."""
        if fresh.owner_key_id is None:
            return
        now = self._clock()
        stale = [
            n.id
            for n in self._nodes.values()
            if n is not fresh
            and n.owner_key_id == fresh.owner_key_id
            and n.base_url == fresh.base_url
            and n.status(now, self.timeout_s) == "offline"
        ]
        stale += [
            node_id
            for node_id, claim in self._claims.items()
            if node_id != fresh.id
            and claim.owner_key_id == fresh.owner_key_id
            and claim.base_url == fresh.base_url
        ]
        for node_id in stale:
            log.info("node %s replaces its stale entry %s (same key and address)", fresh.id, node_id)
            self.release(node_id)

    # --- what other routers saw (several routers) -----------------------------------------
    def apply_registration(
        self, reg: NodeRegistration, *, owner_key_id: str | None, registered_at: float, draining: bool
    ) -> None:
        """A node registered (or changed) through another router: serve it here too. Not
        written to the database (that router did) nor told back to the observer."""
        old = self._nodes.get(reg.node_id)
        state = self._state_from(reg, registered_at)
        state.owner_key_id = owner_key_id
        state.token = reg.token
        state.draining = draining
        state.free_slots = reg.slots
        if self._observer is not None:
            state.on_failure = self._observer.failed
        if old is not None:
            for name in ("last_heartbeat", "last_seen_wall", "active_jobs", "free_slots", "queued_jobs"):
                setattr(state, name, getattr(old, name))
            state.loaded_models, state.jobs = old.loaded_models, old.jobs
            state.inflight, state.abandoned, state.others_busy = old.inflight, old.abandoned, old.others_busy
            state.completed, state.failures = old.completed, old.failures
            state.avg_duration_s, state.suspect_until = old.avg_duration_s, old.suspect_until
        else:
            log.info("node %s (%s) registered through another router", reg.name, reg.node_id)
        self._nodes[reg.node_id] = state
        self._claims.pop(reg.node_id, None)
        self.changed()

    def apply_heartbeat(self, hb: Heartbeat, *, age_s: float) -> None:
        """A heartbeat another router received ``age_s`` ago (its slot bookkeeping is that
        router's; here it refreshes liveness and what the node reports)."""
        state = self._nodes.get(hb.node_id)
        if state is None or state.token is None:
            return
        was_offline = state.status(self._clock(), self.timeout_s) == "offline"
        seen = self._clock() - max(0.0, age_s)
        if state.last_heartbeat is not None and seen < state.last_heartbeat:
            return  # older than what this router knows
        state.last_heartbeat = seen
        state.last_seen_wall = time.time() - max(0.0, age_s)
        state.active_jobs, state.free_slots, state.queued_jobs = hb.active_jobs, hb.free_slots, hb.queued_jobs
        state.loaded_models, state.jobs = list(hb.loaded_models), list(hb.jobs)
        still_running = min(state.abandoned, max(0, hb.active_jobs + hb.queued_jobs - state.inflight))
        slots_freed = still_running < state.abandoned
        state.abandoned = still_running
        if was_offline:
            self._last_status[state.id] = self.status(state)
        if was_offline or slots_freed:
            self.changed()

    def apply_removal(self, node_id: str, claim: Claim | None) -> None:
        """A node left (or was released) through another router."""
        state = self._nodes.pop(node_id, None)
        if claim is not None:
            self._claims[node_id] = claim
        else:
            self._claims.pop(node_id, None)
        if state is not None:
            log.info("node %s (%s) left through another router", state.name, node_id)
            self.changed()

    def apply_failure(self, node_id: str, reason: str, cooldown_s: float, at: float) -> None:
        """Another router saw a request to the node fail: it is suspect here too."""
        state = self._nodes.get(node_id)
        if state is not None:
            state.record_failure(reason, cooldown_s, at=at)

    def shared_nodes(self) -> list[NodeState]:
        """The nodes other routers must know of (every one but endpoints')."""
        return [n for n in self._nodes.values() if not n.is_endpoint]

    # --- ownership -----------------------------------------------------------------------
    def owner_of(self, node_id: str) -> str | None:
        """The key id that owns ``node_id`` (listed or claimed); None: unknown or unowned."""
        state = self._nodes.get(node_id)
        if state is not None:
            return state.owner_key_id
        claim = self._claims.get(node_id)
        return claim.owner_key_id if claim is not None else None

    def deregistered(self, node_id: str) -> bool:
        """Whether ``node_id`` left by deregistering and its id is still claimed (not released by
        an admin, nor replaced by its owner's restarted node)."""
        return node_id in self._claims and node_id not in self._nodes

    # --- queries -------------------------------------------------------------------------
    def get(self, node_id: str) -> NodeState | None:
        return self._nodes.get(node_id)

    def all(self) -> list[NodeState]:
        return list(self._nodes.values())

    def status(self, node: NodeState) -> NodeStatus:
        return node.status(self._clock(), self.timeout_s)

    def online(self) -> list[NodeState]:
        now = self._clock()
        return [n for n in self._nodes.values() if n.status(now, self.timeout_s) == "online"]

    def candidates(self, model: str, flags: frozenset[str]) -> list[NodeState]:
        """Online, non-draining nodes that serve ``model`` with one of ``flags``."""
        now = self._clock()
        return [
            n
            for n in self._nodes.values()
            if n.status(now, self.timeout_s) == "online" and n.serves(model, flags)
        ]

    def known_model(self, model: str, flags: frozenset[str]) -> bool:
        """Whether any registered node (online or not) advertises ``model`` for ``flags``."""
        return any(n.serves(model, flags) for n in self._nodes.values())

    def sweep(self) -> None:
        """Log status transitions and wake waiters when a node changed status."""
        now = self._clock()
        changed = False
        for node in self._nodes.values():
            status = node.status(now, self.timeout_s)
            previous = self._last_status.get(node.id)
            if previous is not None and previous != status:
                changed = True
                if status == "offline" and node.last_heartbeat is not None:
                    log.warning(
                        "node %s (%s) is offline: no heartbeat for %.1fs",
                        node.name,
                        node.id,
                        now - node.last_heartbeat,
                    )
            self._last_status[node.id] = status
        if changed:
            self.changed()

    def view(self, node: NodeState) -> NodeView:
        status = self.status(node)
        return NodeView(
            id=node.id,
            name=node.name,
            base_url=node.base_url,
            status=status,
            runtime_types=node.runtime_types,
            models=list(node.models.values()),
            slots=node.slots,
            active_jobs=node.active_jobs,
            inflight=node.inflight,
            abandoned=node.abandoned,
            free_slots=max(node.free, 0),
            queued_jobs=node.queued_jobs,
            loaded_models=node.loaded_models,
            jobs=node.jobs if status != "offline" else [],  # an offline node's report is stale
            accelerators=node.accelerators,
            registered_at=node.registered_at,
            last_seen_at=node.last_seen_wall,
            completed=node.completed,
            avg_duration_s=node.avg_duration_s,
            recent_failures=[{"at": at, "reason": reason} for at, reason in node.failures],
            suspect=node.suspect_until > time.monotonic(),
            owner_key_id=node.owner_key_id,
        )
