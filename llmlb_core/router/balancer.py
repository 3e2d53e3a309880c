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

from llmlb_core.router.nodes import NodeRegistry, NodeState
from llmlb_core.server.errors import NoCapableNodes, OpenAIError, UpstreamTimeout

log = logging.getLogger("llmlb.balancer")


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
    def __init__(self, nodes: NodeRegistry, *, queue_max: int, queue_timeout_s: float) -> None:
        self._nodes = nodes
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
            lease.node.abandoned += 1
        if duration_s is not None:
            lease.node.record_duration(duration_s)
        self._drain()

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
        for queue in list(self._queues.values()):
            head = queue[0]
            if not any(n.id not in head.exclude for n in self._nodes.candidates(head.model, head.flags)):
                for waiter in list(queue):
                    self._remove(waiter)
                    if not waiter.future.done():
                        waiter.future.set_exception(NoCapableNodes(waiter.model))
        self._drain()
