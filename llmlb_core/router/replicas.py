"""Several routers, one live state: what this router tells the others through Redis, and what
it does with what they tell it (``redis_url``; docs/scaling.md).

Durable state (keys, nodes' registrations, models, endpoints) is in the shared database; what
lives only in a router's memory is shared here:

- **nodes**: a registration (with its inference credential, sealed with ``secret_key`` when
  one is set) in the hash ``llmlb:nodes``, the last heartbeat in ``llmlb:beats``; each change
  is also sent as a message, so the other routers serve a node registered anywhere within
  milliseconds. A router that missed messages (Redis was down) re-reads both hashes.
- **changes to keys, models and endpoints**: a message, on which every other router re-reads
  that table from the database (a revoked key is refused everywhere at once);
- **failure marks** (a node made suspect by a failed request);
- **slots**: :mod:`llmlb_core.shared.slots`, through the balancer.

Writes go out in the background, in order, from one task: nothing on a request's path waits
for them except the slot claim and release.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from llmlb_core.protocol import Heartbeat, NodeRegistration
from llmlb_core.router.auth import KeyManager
from llmlb_core.router.balancer import Balancer
from llmlb_core.router.endpoints import EndpointManager
from llmlb_core.router.models import ModelRegistry
from llmlb_core.router.nodes import Claim, NodeRegistry, NodeState
from llmlb_core.shared.link import PREFIX, RedisLink, SharedDown
from llmlb_core.shared.slots import ROUTER_TTL_MS, SharedSlots
from llmlb_core.storage.secretbox import SecretBox, SecretKeyError

log = logging.getLogger("llmlb.replicas")

NODES_KEY = PREFIX + "nodes"
BEATS_KEY = PREFIX + "beats"
# Every router re-reads the shared node state this often, in case it missed a message.
RESYNC_S = 5.0
# A node whose last heartbeat anywhere is older than this many node timeouts is dropped from
# Redis (it crashed without deregistering; the database keeps its registration).
FORGET_AFTER_TIMEOUTS = 10


class SharedNode(msgspec.Struct, kw_only=True):
    """A node's registration as routers share it."""

    registration: dict[str, Any]  # NodeRegistration, its token sealed when ``sealed``
    owner_key_id: str | None
    registered_at: float
    draining: bool
    sealed: bool = False


class SharedBeat(msgspec.Struct, kw_only=True):
    heartbeat: dict[str, Any]  # Heartbeat without its models
    at: float  # wall clock, when the router received it


class Replicas:
    """This router's part in the shared live state (see the module docstring)."""

    def __init__(
        self,
        link: RedisLink,
        slots: SharedSlots,
        *,
        nodes: NodeRegistry,
        keys: KeyManager,
        models: ModelRegistry,
        endpoints: EndpointManager,
        balancer: Balancer,
        box: SecretBox | None,
    ) -> None:
        self.link = link
        self.slots = slots
        self._nodes = nodes
        self._keys = keys
        self._models = models
        self._endpoints = endpoints
        self._balancer = balancer
        self._box = box
        self._here: set[str] = set()  # nodes whose registration or heartbeats arrive here
        self._outbox: asyncio.Queue[Callable[[], Awaitable[Any]]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._unsealable_warned = False
        self._encode = msgspec.json.Encoder().encode
        link.on("node", self._on_node)
        link.on("beat", self._on_beat)
        link.on("gone", self._on_gone)
        link.on("fail", self._on_fail)
        link.on("keys", lambda _m: keys.reload())
        link.on("models", lambda _m: models.reload())
        link.on("endpoints", lambda _m: self._spawn(endpoints.reload()))
        link.on("slots", lambda m: self._spawn(balancer.refresh([str(m.get("n"))])))
        link.on_back(self.resync)
        keys.on_change = lambda: self._send(lambda: link.publish("keys"))
        models.on_change = lambda: self._send(lambda: link.publish("models"))
        endpoints.on_change = lambda: self._send(lambda: link.publish("endpoints"))
        nodes.share_with(self)

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._write_forever(), name="llmlb-replicas-writer"),
            asyncio.create_task(self._tick_forever(), name="llmlb-replicas-tick"),
        ]
        await self.link.start()

    async def stop(self) -> None:
        await self._balancer.flush()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._outbox.join(), timeout=2.0)  # what is queued goes out
        with contextlib.suppress(SharedDown):
            await self.slots.leave()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.link.stop()

    def _spawn(self, work: Awaitable[Any]) -> None:
        self._send(lambda: work)

    def _send(self, write: Callable[[], Awaitable[Any]]) -> None:
        self._outbox.put_nowait(write)

    async def _write_forever(self) -> None:
        while True:
            write = await self._outbox.get()
            try:
                await write()
            except SharedDown:
                pass  # resent by the resync when Redis is back
            except Exception:
                log.exception("sharing a change through redis failed")
            finally:
                self._outbox.task_done()

    async def _tick_forever(self) -> None:
        """Keep this router alive in Redis; re-read the peers' slots where they hold some; now
        and then re-read the shared node state (messages can be lost)."""
        last_resync = time.monotonic()
        was_up = self.link.up
        while True:
            await asyncio.sleep(ROUTER_TTL_MS / 4000)
            if not self.link.up:
                if was_up:
                    self._balancer.forget_peers()
                was_up = False
                continue
            was_up = True
            try:
                await self.slots.alive()
                busy = [n.id for n in self._nodes.all() if n.others_busy]
                if busy:
                    await self._balancer.refresh(busy)
                if time.monotonic() - last_resync >= RESYNC_S:
                    last_resync = time.monotonic()
                    await self._read_nodes()
            except SharedDown:
                continue
            except Exception:  # a bug must not stop the liveness key (peers would free our slots)
                log.exception("sharing live state through redis failed; retrying")

    # --- this router's changes, out ------------------------------------------------------
    def registered(self, node: NodeState) -> None:
        self._here.add(node.id)
        blob = self._encode(self._shared_node(node))
        beat = self._encode(self._shared_beat(node))  # registering is a sign of life too
        self._send(lambda: self._put_node(node.id, blob))
        self._send(lambda: self._put_beat(node.id, beat))

    def heartbeat(self, node: NodeState) -> None:
        self._here.add(node.id)
        blob = self._encode(self._shared_beat(node))
        self._send(lambda: self._put_beat(node.id, blob))

    def removed(self, node_id: str, claim: Claim | None) -> None:
        self._here.discard(node_id)
        gone = None if claim is None else {"owner": claim.owner_key_id, "base_url": claim.base_url}

        async def write() -> None:
            pipe = self.link.client.pipeline(transaction=False)
            pipe.hdel(NODES_KEY, node_id)
            pipe.hdel(BEATS_KEY, node_id)
            await self.link.run(pipe.execute())
            await self.link.publish("gone", id=node_id, claim=gone)

        self._send(write)

    def failed(self, node: NodeState, reason: str, cooldown_s: float) -> None:
        at = time.time()
        self._send(lambda: self.link.publish("fail", id=node.id, reason=reason, cooldown=cooldown_s, at=at))

    def _shared_node(self, node: NodeState) -> SharedNode:
        registration = NodeRegistration(
            node_id=node.id,
            name=node.name,
            base_url=node.base_url,
            token=node.token or "",
            runtime_types=node.runtime_types,
            models=list(node.models.values()),
            slots=node.slots,
            accelerators=msgspec.convert(node.accelerators, list[Any]),
            draining=node.draining,
        )
        record = msgspec.to_builtins(registration)
        if self._box is not None:
            record["token"] = self._box.seal(record["token"])
        return SharedNode(
            registration=record,
            owner_key_id=node.owner_key_id,
            registered_at=node.registered_at,
            draining=node.draining,
            sealed=self._box is not None,
        )

    @staticmethod
    def _shared_beat(node: NodeState) -> SharedBeat:
        beat = Heartbeat(
            node_id=node.id,
            active_jobs=node.active_jobs,
            free_slots=node.free_slots,
            loaded_models=node.loaded_models,
            queued_jobs=node.queued_jobs,
            jobs=node.jobs,
        )
        return SharedBeat(heartbeat=msgspec.to_builtins(beat), at=time.time())

    async def _put_node(self, node_id: str, blob: bytes) -> None:
        await self.link.run(self.link.client.hset(NODES_KEY, node_id, blob))
        await self.link.publish("node", id=node_id, node=msgspec.json.decode(blob))

    async def _put_beat(self, node_id: str, blob: bytes) -> None:
        await self.link.run(self.link.client.hset(BEATS_KEY, node_id, blob))
        await self.link.publish("beat", id=node_id, beat=msgspec.json.decode(blob))

    # --- the others' changes, in ---------------------------------------------------------
    def _on_node(self, message: dict[str, Any]) -> None:
        self._apply_node(msgspec.convert(message.get("node"), SharedNode))

    def _on_beat(self, message: dict[str, Any]) -> None:
        self._apply_beat(msgspec.convert(message.get("beat"), SharedBeat))

    def _on_gone(self, message: dict[str, Any]) -> None:
        node_id = str(message.get("id"))
        self._here.discard(node_id)
        claim = message.get("claim")
        kept = Claim(str(claim["owner"]), str(claim["base_url"])) if isinstance(claim, dict) else None
        self._nodes.apply_removal(node_id, kept)

    def _on_fail(self, message: dict[str, Any]) -> None:
        self._nodes.apply_failure(
            str(message.get("id")),
            str(message.get("reason")),
            float(message.get("cooldown", 0.0)),
            float(message.get("at", time.time())),
        )

    def _apply_node(self, shared: SharedNode) -> None:
        record = dict(shared.registration)
        if shared.sealed:
            if self._box is None:
                self._warn_unsealable("this router has no secret_key")
                return
            try:
                record["token"] = self._box.open(str(record.get("token", "")), what="a node credential")
            except SecretKeyError as exc:
                self._warn_unsealable(str(exc))
                return
        registration = msgspec.convert(record, NodeRegistration)
        self._here.discard(registration.node_id)  # it now registers through another router
        self._nodes.apply_registration(
            registration,
            owner_key_id=shared.owner_key_id,
            registered_at=shared.registered_at,
            draining=shared.draining,
        )

    def _apply_beat(self, shared: SharedBeat) -> None:
        beat = msgspec.convert(shared.heartbeat, Heartbeat)
        self._nodes.apply_heartbeat(beat, age_s=time.time() - shared.at)

    def _warn_unsealable(self, why: str) -> None:
        if not self._unsealable_warned:
            self._unsealable_warned = True
            log.warning(
                "cannot use nodes registered through other routers: their credentials are sealed "
                "and %s; give every router the same secret_key (LLMLB_SECRET_KEY)",
                why,
            )

    # --- resynchronising -----------------------------------------------------------------
    async def _read_nodes(self) -> None:
        """Re-read every shared registration and heartbeat (messages may have been missed)."""
        pipe = self.link.client.pipeline(transaction=False)
        pipe.hgetall(NODES_KEY)
        pipe.hgetall(BEATS_KEY)
        registrations, beats = await self.link.run(pipe.execute())
        horizon = time.time() - FORGET_AFTER_TIMEOUTS * self._nodes.timeout_s
        for raw_id, blob in registrations.items():
            node_id = raw_id.decode()
            if node_id in self._here:
                continue  # this router's own view is the newest
            try:
                self._apply_node(msgspec.json.decode(blob, type=SharedNode))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("ignoring unreadable shared node %r: %s", node_id, exc)
        stale = []
        for raw_id, blob in beats.items():
            node_id = raw_id.decode()
            try:
                beat = msgspec.json.decode(blob, type=SharedBeat)
                if beat.at < horizon:
                    stale.append(node_id)
                elif node_id not in self._here:
                    self._apply_beat(beat)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.warning("ignoring an unreadable shared heartbeat of %r: %s", node_id, exc)
        if stale:
            pipe = self.link.client.pipeline(transaction=False)
            pipe.hdel(NODES_KEY, *stale)
            pipe.hdel(BEATS_KEY, *stale)
            await self.link.run(pipe.execute())

    async def resync(self) -> None:
        """Redis reached (at start or after it was down): push what this router holds, then
        re-read what the others hold, and the tables they may have changed meanwhile."""
        await self.slots.alive()
        for node in self._nodes.shared_nodes():
            if node.id in self._here and node.token is not None:
                await self._put_node(node.id, self._encode(self._shared_node(node)))
                await self._put_beat(node.id, self._encode(self._shared_beat(node)))
        await self._read_nodes()
        try:
            self._keys.reload()
            self._models.reload()
            await self._endpoints.reload()
        except Exception as exc:  # e.g. the database is down too: its own 503s say so
            log.warning("re-reading keys, models and endpoints after redis returned failed: %s", exc)
        await self._balancer.resync()
