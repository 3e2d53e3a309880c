"""Choosing a node for a request: free slots first, then fewest in flight, then least recently
used; a bounded FIFO wait queue when every capable slot is busy.

- A node's free slots are its advertised ``slots`` minus the router's own in-flight count.
- Nodes marked suspect (recent failure) are used only when no healthy node can take the job.
- All slots busy: the request waits (FIFO per compatible request; a waiter that cannot use the
  freed node does not block one behind it that can). Full queue (``queue_max`` waiters): 429
  with ``Retry-After``. Wait longer than ``queue_timeout_s``: 504 ``queue_timeout``.
- No online node at all for the model: 503 ``no_capable_nodes`` at once (or when the last
  capable node goes offline while waiting).
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

from llmlb_core.errors import OpenAIError
from llmlb_core.nodes import NodeRegistry, NodeState

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


@dataclass(eq=False)
class _Waiter:
    model: str
    flags: frozenset[str]
    exclude: frozenset[str]
    future: asyncio.Future[Lease]
    enqueued: float = field(default_factory=time.monotonic)


def no_capable_nodes(model: str) -> OpenAIError:
    return OpenAIError(
        503,
        f"No online node can serve model '{model}' right now",
        type="server_error",
        param="model",
        code="no_capable_nodes",
    )


class Balancer:
    def __init__(self, nodes: NodeRegistry, *, queue_max: int, queue_timeout_s: float) -> None:
        self._nodes = nodes
        self.queue_max = queue_max
        self.queue_timeout_s = queue_timeout_s
        self._waiters: deque[_Waiter] = deque()
        self._seq = itertools.count(1)
        self._last_pick: dict[str, int] = {}
        self.total_queued = 0
        nodes.subscribe(self._drain)

    @property
    def queue_depth(self) -> int:
        return len(self._waiters)

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
        if not self._waiters:  # FIFO: nobody may overtake earlier waiters
            lease = self.try_acquire(model, flags, exclude)
            if lease is not None:
                return lease
        capable = [n for n in self._nodes.candidates(model, flags) if n.id not in exclude]
        if not capable:
            raise no_capable_nodes(model)
        if len(self._waiters) >= self.queue_max:
            raise OpenAIError(
                429,
                f"All {sum(n.slots for n in capable)} slot(s) for model '{model}' are busy and "
                f"the wait queue is full ({self.queue_max}); retry later",
                type="rate_limit_error",
                code="queue_full",
                headers={"Retry-After": str(self._retry_after(capable))},
            )
        waiter = _Waiter(model, flags, exclude, asyncio.get_running_loop().create_future())
        position = len(self._waiters) + 1
        self._waiters.append(waiter)
        self.total_queued += 1
        self._drain()  # a slot may have freed between the check and the append
        try:
            lease = await asyncio.wait_for(asyncio.shield(waiter.future), self.queue_timeout_s)
        except TimeoutError:
            self._forget(waiter)
            raise OpenAIError(
                504,
                f"Timed out after {self.queue_timeout_s:g}s waiting for a free slot for model '{model}'",
                type="server_error",
                code="queue_timeout",
            ) from None
        except asyncio.CancelledError:
            self._forget(waiter)
            raise
        lease.queued = True
        lease.queue_position = position
        lease.wait_ms = (time.monotonic() - waiter.enqueued) * 1000
        return lease

    def _forget(self, waiter: _Waiter) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        fut = waiter.future
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            self.release(fut.result())  # a slot was handed over just as we gave up

    def _retry_after(self, capable: list[NodeState]) -> int:
        durations = [n.avg_duration_s for n in capable if n.avg_duration_s]
        per_job = sum(durations) / len(durations) if durations else 1.0
        slots = max(1, sum(n.slots for n in capable))
        return max(1, math.ceil(per_job * (len(self._waiters) + 1) / slots))

    def release(self, lease: Lease, *, duration_s: float | None = None) -> None:
        if lease._released:
            return
        lease._released = True
        lease.node.inflight = max(0, lease.node.inflight - 1)
        if duration_s is not None:
            lease.node.record_duration(duration_s)
        self._drain()

    def _drain(self) -> None:
        """Hand free slots to waiters in FIFO order; fail waiters nobody can ever serve."""
        if not self._waiters:
            return
        for waiter in list(self._waiters):
            if waiter.future.done():
                self._waiters.remove(waiter)
                continue
            node = self._pick(waiter.model, waiter.flags, waiter.exclude)
            if node is not None:
                self._take(node)
                self._waiters.remove(waiter)
                waiter.future.set_result(Lease(node=node))
                continue
            if not any(
                n.id not in waiter.exclude for n in self._nodes.candidates(waiter.model, waiter.flags)
            ):
                self._waiters.remove(waiter)
                waiter.future.set_exception(no_capable_nodes(waiter.model))
