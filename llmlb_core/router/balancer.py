"""Choosing a node for a request: free slots first, then fewest in flight, then least recently
used; a bounded FIFO wait queue when every capable slot is busy.

- A node's free slots are its advertised ``slots`` minus the router's own in-flight count,
  minus the jobs the router gave up on that the node may still be running (``abandoned``: the
  client left, the answer timed out; see :func:`job_left_running`). The node's heartbeat
  clears those once it reports them ended (``NodeRegistry.heartbeat``).
- Nodes marked suspect (recent failure) are used only when no healthy node can take the job.
- All slots busy: the request waits (FIFO per compatible request; a waiter that cannot use the
  freed node does not block one behind it that can). Full queue (``queue_max`` waiters): 429
  ``queue_full``; wait longer than ``queue_timeout_s``: 504 ``queue_timeout``. Both say when to
  come back in ``Retry-After``: the nodes' average job time times the jobs ahead, over their
  slots.
- Several routers (``redis_url``): a slot picked here is claimed in Redis before the job is
  sent (:mod:`llmlb_core.shared.slots`), so two routers never overfill a node; a claim that a
  peer beat is given back and the pick made again, knowing the peers' count. Each release
  gives the slot back there too (in the background). Redis down: this router's own
  accounting alone, written to Redis whole when it is back.
- No online node at all for the model: 503 ``no_capable_nodes`` at once (or when the last
  capable node goes offline while waiting).
- A waiter that is cancelled (its client left) leaves the queue at once; a slot handed to it
  just as it was cancelled goes back to the next waiter.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from llmlb_core.router.nodes import NodeRegistry, NodeState
from llmlb_core.server.errors import NoCapableNodes, OpenAIError, UpstreamTimeout
from llmlb_core.shared.link import SharedDown
from llmlb_core.shared.slots import SharedSlots

log = logging.getLogger("llmlb.balancer")

# How long a slot given back waits for a claim to take it to Redis before it goes on its own
# (a busy router saves a round trip per request). Not when the node was full as far as this
# router knows: a peer may be waiting for that slot, so it goes at once.
RELEASE_DELAY_S = 0.02


@dataclass(eq=False)
class Lease:
    """One slot on one node, held for the duration of one upstream call."""

    node: NodeState
    queued: bool = False
    wait_ms: float = 0.0
    queue_position: int = 0
    _released: bool = False

    def headers(self) -> dict[str, str]:
        if not self.queued:
            return {}
        return {
            "x-queue-status": "queued",
            "x-queue-wait-ms": str(round(self.wait_ms)),
            "x-queue-position": str(self.queue_position),
        }


_Key = tuple[str, frozenset[str], frozenset[str]]


@dataclass(eq=False)
class _Waiter:
    model: str
    flags: frozenset[str]
    exclude: frozenset[str]
    future: asyncio.Future[Lease]
    seq: int = 0
    enqueued: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> _Key:
        return (self.model, self.flags, self.exclude)


def job_left_running(exc: BaseException) -> bool:
    """Whether a lease that ends with ``exc`` may leave its job running on the node: the request
    was cancelled (client gone) or timed out after it was sent. A refused connection, a 5xx or
    a node that broke off its answer means the node is not working on it (any more)."""
    if isinstance(exc, asyncio.CancelledError):
        return True
    return isinstance(exc, UpstreamTimeout)


class Balancer:
    def __init__(
        self,
        nodes: NodeRegistry,
        *,
        queue_max: int,
        queue_timeout_s: float,
        shared: SharedSlots | None = None,
    ) -> None:
        self._nodes = nodes
        self._shared = shared
        # The slots this router holds per node as Redis has them (claims taken, releases sent
        # or waiting to go), the releases waiting for a claim to take them along, and the
        # releases sent on their own, under way.
        self._held: dict[str, int] = {}
        self._releases: dict[str, tuple[int, int]] = {}
        self._release_timer: asyncio.TimerHandle | None = None
        self._writes: set[asyncio.Task[Any]] = set()
        self.queue_max = queue_max
        self.queue_timeout_s = queue_timeout_s
        # One FIFO per kind of request (model, flags, excluded nodes): only queue heads are
        # ever examined, so finishing a job costs O(kinds x nodes), not O(waiters).
        self._queues: dict[_Key, deque[_Waiter]] = {}
        self._waiting = 0
        self._seq = itertools.count(1)
        self._last_pick: dict[str, int] = {}
        self.total_queued = 0
        nodes.subscribe(self._on_nodes_changed)

    @property
    def queue_depth(self) -> int:
        return self._waiting

    def _pick(self, model: str, flags: frozenset[str], exclude: Iterable[str]) -> NodeState | None:
        excluded = set(exclude)
        now = time.monotonic()
        best: NodeState | None = None
        best_key: tuple[int, int, int, int] | None = None
        for node in self._nodes.candidates(model, flags):
            if node.id in excluded or node.free <= 0:
                continue
            key = (
                1 if node.suspect_until > now else 0,
                -node.free,
                node.inflight,
                self._last_pick.get(node.id, 0),
            )
            if best_key is None or key < best_key:
                best, best_key = node, key
        return best

    def _take(self, node: NodeState) -> None:
        node.inflight += 1
        self._last_pick[node.id] = next(self._seq)

    def try_acquire(self, model: str, flags: frozenset[str], exclude: Iterable[str] = ()) -> Lease | None:
        """A lease on a node with a free slot now, without queueing (None if none is free)."""
        node = self._pick(model, flags, exclude)
        if node is None:
            return None
        self._take(node)
        return Lease(node=node)

    async def acquire(self, model: str, flags: frozenset[str], exclude: Iterable[str] = ()) -> Lease:
        exclude = frozenset(exclude)
        while True:
            lease = await self._acquire_here(model, flags, exclude)
            if self._shared is None or await self._claim(lease):
                return lease

    async def _claim(self, lease: Lease) -> bool:
        """Claim ``lease``'s slot among all routers (sending the releases waiting to go); False
        (lease undone) when peers hold it."""
        assert self._shared is not None
        node = lease.node
        if not self._shared.up:
            return True
        releases, self._releases = self._releases, {}
        try:
            ok, others = await self._shared.claim(
                node.id, node.slots, releases, orphan=lambda reply: self._claimed_then_left(node, reply)
            )
        except SharedDown:
            return True  # this router's own accounting, until Redis is back (then resynced)
        except asyncio.CancelledError:
            # The client left while claiming: the slot goes back here now, and in Redis once
            # the claim has answered, if it took one (``_claimed_then_left``).
            lease._released = True
            node.inflight = max(0, node.inflight - 1)
            self._drain()
            raise
        node.others_busy = others
        if ok:
            self._held[node.id] = self._held.get(node.id, 0) + 1
            return True
        lease._released = True
        node.inflight = max(0, node.inflight - 1)
        return False

    def _claimed_then_left(self, node: NodeState, reply: Any) -> None:
        if isinstance(reply, list) and reply and reply[0] == 1:
            self._held[node.id] = self._held.get(node.id, 0) + 1
            self._give_back(node, 1)

    async def _acquire_here(self, model: str, flags: frozenset[str], exclude: frozenset[str]) -> Lease:
        exclude = frozenset(exclude)
        if not self._waiting:  # FIFO: nobody may overtake earlier waiters
            lease = self.try_acquire(model, flags, exclude)
            if lease is not None:
                return lease
        capable = self._capable(model, flags, exclude)
        if not capable:
            raise NoCapableNodes(model)
        if self._waiting >= self.queue_max:
            raise OpenAIError(
                429,
                f"All {sum(n.slots for n in capable)} slot(s) for model '{model}' are busy and "
                f"the wait queue is full ({self.queue_max}); retry later",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(self._retry_after(capable))},
            )
        waiter = _Waiter(
            model, flags, exclude, asyncio.get_running_loop().create_future(), seq=next(self._seq)
        )
        position = self._waiting + 1
        self._queues.setdefault(waiter.key, deque()).append(waiter)
        self._waiting += 1
        self.total_queued += 1
        self._drain()  # a slot may have freed between the check and the append
        try:
            # Not wait_for: on 3.11 it returns a result that arrives together with a
            # cancellation and drops the cancellation (the request would run for nobody).
            async with asyncio.timeout(self.queue_timeout_s):
                lease = await waiter.future
        except TimeoutError:
            self._forget(waiter)
            raise OpenAIError(
                504,
                f"Timed out after {self.queue_timeout_s:g}s waiting for a free slot for model '{model}'",
                type="server_error",
                code="queue_timeout",
                headers={"Retry-After": str(self._retry_after(self._capable(model, flags, exclude)))},
            ) from None
        except asyncio.CancelledError:
            self._forget(waiter)
            raise
        lease.queued = True
        lease.queue_position = position
        lease.wait_ms = (time.monotonic() - waiter.enqueued) * 1000
        return lease

    def _remove(self, waiter: _Waiter) -> None:
        queue = self._queues.get(waiter.key)
        if queue is None:
            return
        with contextlib.suppress(ValueError):
            queue.remove(waiter)
            self._waiting -= 1
        if not queue:
            del self._queues[waiter.key]

    def _forget(self, waiter: _Waiter) -> None:
        self._remove(waiter)
        fut = waiter.future
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            self.release(fut.result())  # a slot was handed over just as we gave up

    def _capable(self, model: str, flags: frozenset[str], exclude: frozenset[str]) -> list[NodeState]:
        return [n for n in self._nodes.candidates(model, flags) if n.id not in exclude]

    def _retry_after(self, capable: list[NodeState]) -> int:
        """Whole seconds until a slot is likely free for one more waiter (at least 1)."""
        durations = [n.avg_duration_s for n in capable if n.avg_duration_s]
        per_job = sum(durations) / len(durations) if durations else 1.0
        slots = max(1, sum(n.slots for n in capable))
        return max(1, math.ceil(per_job * (self._waiting + 1) / slots))

    def release(self, lease: Lease, *, duration_s: float | None = None, abandoned: bool = False) -> None:
        """End a lease. ``abandoned``: the router stopped waiting for the answer but the node
        may still be working on it; its slot stays taken until the node's heartbeat says not."""
        if lease._released:
            return
        lease._released = True
        lease.node.inflight = max(0, lease.node.inflight - 1)
        if abandoned:
            lease.node.abandoned += 1  # its slot stays held, in Redis too
        elif self._shared is not None:
            self._give_back(lease.node, 1)
        if duration_s is not None:
            lease.node.record_duration(duration_s)
        self._drain()

    # --- slots shared with other routers ----------------------------------------------------
    def _give_back(self, node: NodeState, n: int) -> None:
        """Give ``n`` of this router's slots on ``node`` back in Redis: with the next claim, or
        on their own after RELEASE_DELAY_S (one round trip per request on a busy router)."""
        assert self._shared is not None
        held = self._held.get(node.id, 0)
        n = min(n, held)
        if n <= 0 or not self._shared.up:
            return  # never claimed there (Redis was down): the resync writes the count whole
        self._held[node.id] = held - n
        given, _ = self._releases.get(node.id, (0, node.slots))
        self._releases[node.id] = (given + n, node.slots)
        if node.free <= n:  # it was full: peers may be waiting
            if self._release_timer is not None:
                self._release_timer.cancel()
            self._send_releases()
        elif self._release_timer is None:
            self._release_timer = asyncio.get_running_loop().call_later(RELEASE_DELAY_S, self._send_releases)

    def _send_releases(self) -> None:
        self._release_timer = None
        if not self._releases:
            return  # a claim took them along
        releases, self._releases = self._releases, {}
        task = asyncio.get_running_loop().create_task(self._release_there(releases))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _release_there(self, releases: dict[str, tuple[int, int]]) -> None:
        assert self._shared is not None
        with contextlib.suppress(SharedDown):  # the resync writes the counts whole
            await self._shared.release(releases)

    async def refresh(self, node_ids: Iterable[str]) -> None:
        """Re-read the peers' counts on these nodes (a peer freed a slot, or died), then hand
        what is free to waiters."""
        if self._shared is None:
            return
        for node_id in node_ids:
            node = self._nodes.get(node_id)
            if node is None:
                continue
            try:
                node.others_busy = await self._shared.others(node_id)
            except SharedDown:
                return
        self._drain()

    async def resync(self) -> None:
        """Redis is back (or first reached): write every count whole, re-read the peers'."""
        if self._shared is None:
            return
        self._releases = {}  # the whole counts below include them
        for node in self._nodes.all():
            count = node.inflight + node.abandoned
            if count or self._held.get(node.id):
                await self._shared.set(node.id, count)
                self._held[node.id] = count
        await self.refresh([n.id for n in self._nodes.all()])

    def forget_peers(self) -> None:
        """Redis is down: the peers' counts are unknown; this router counts only its own."""
        for node in self._nodes.all():
            node.others_busy = 0
        self._drain()

    async def flush(self) -> None:
        """Send the releases waiting to go, and wait for the background writes (shutdown)."""
        if self._release_timer is not None:
            self._release_timer.cancel()
            self._send_releases()
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    def _drain(self) -> None:
        """Hand free slots to waiting requests, oldest first among the queues' heads."""
        while self._waiting:
            if not any(n.free > 0 for n in self._nodes.online()):
                return  # nothing can move until a slot frees
            heads = sorted((q[0] for q in self._queues.values()), key=lambda w: w.seq)
            for waiter in heads:
                node = self._pick(waiter.model, waiter.flags, waiter.exclude)
                if node is not None:
                    self._remove(waiter)
                    if not waiter.future.done():
                        self._take(node)
                        waiter.future.set_result(Lease(node=node))
                    break
            else:
                return  # no head can use a free slot

    def _on_nodes_changed(self) -> None:
        """A node came, went or changed status: fail waiters nobody can ever serve, then drain."""
        if self._shared is not None:  # e.g. a heartbeat showed abandoned jobs ended
            for node in self._nodes.all():
                excess = self._held.get(node.id, 0) - node.inflight - node.abandoned
                if excess > 0:
                    self._give_back(node, excess)
        for queue in list(self._queues.values()):
            head = queue[0]
            if not any(n.id not in head.exclude for n in self._nodes.candidates(head.model, head.flags)):
                for waiter in list(queue):
                    self._remove(waiter)
                    if not waiter.future.done():
                        waiter.future.set_exception(NoCapableNodes(waiter.model))
        self._drain()
