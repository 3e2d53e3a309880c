"""A node's server-sent event stream, read event by event and checked (``Forwarder.events``).

:class:`EventStream` is what :meth:`llmlb_core.router.forwarding.Forwarder.events` returns: the node's
answer read with the bounded reader (:func:`llmlb_core.upstream.sse.read_events`), every event passed
through the route's :class:`EventCheck`, which turns it into what the route sends on (or raises
``BadAnswer``). Its first event was read (and checked) inside the forwarder's failover attempt;
the others come as they arrive, by ``async for``. How it can end:

- the node ends the stream and ``check.end()`` agrees that nothing is missing: iteration stops,
  ``completed`` is set;
- the node sends something the check refuses, goes over a bound, ends the stream early, breaks
  off, or reports a failure with an ``error`` event: iteration raises a
  :class:`llmlb_core.server.errors.NodeFailure` (made by the forwarder's ``fail``, which may tell a
  failure before the first event, ``started`` still False, from one after it: the node is
  marked suspect);
- the route closes it early (its client left): :meth:`EventStream.aclose`.

``aclose`` closes the node's response (shielded from cancellation: the node sees its client
leave and cancels the job) and runs ``on_close`` exactly once, which releases the lease. It is
idempotent; a route calls it in a ``finally`` whatever happened.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import Generic, Protocol, TypeVar

import anyio
import httpx

from llmlb_core.server.errors import NodeFailure
from llmlb_core.upstream.client import BadAnswer, close_response, is_timeout
from llmlb_core.upstream.sse import ERROR_EVENT, SSEEvent, read_events

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


class EventCheck(Protocol[T_co]):
    """A route's checks of one node's event stream (a fresh one for every attempt)."""

    def event(self, event: SSEEvent) -> T_co:
        """What the route makes of ``event`` (e.g. the bytes it sends its client); raises
        ``BadAnswer`` when the node must not have sent it."""
        ...

    def end(self) -> None:
        """The node ended its stream: raise ``BadAnswer`` when something is missing."""
        ...


class NodeReportedError(Exception):
    """The node sent an ``error`` event (its failure, after the stream began)."""

    def __init__(self, data: bytes) -> None:
        super().__init__("the node reported an error in its event stream")
        self.data = data


class EventStream(Generic[T]):
    """A node's checked event stream (module doc). ``node_id`` and ``headers`` (the lease's
    queue headers) are for the route's response."""

    def __init__(
        self,
        response: httpx.Response,
        check: EventCheck[T],
        *,
        node_id: str,
        headers: dict[str, str],
        max_event_bytes: int,
        max_total_bytes: int,
        fail: Callable[[Exception], NodeFailure],
        on_close: Callable[[EventStream[T]], None],
    ) -> None:
        self.node_id = node_id
        self.headers = headers
        self.completed = False  # the node ended the stream and nothing was missing
        self.started = False  # the first event is in and passed its check
        self.node_ended = False  # the node ended or broke the stream itself (its job is over)
        self._response = response
        self._check = check
        self._events: AsyncGenerator[SSEEvent, None] = read_events(
            response.aiter_raw(), max_event_bytes=max_event_bytes, max_total_bytes=max_total_bytes
        )
        self._fail = fail
        self._on_close = on_close
        self._first: list[T] = []
        self._ended = False  # the stream completed or failed: nothing more to read
        self._closed = False

    async def start(self) -> None:
        """Read and check the first event (the forwarder's failover attempt does)."""
        with contextlib.suppress(StopAsyncIteration):  # no event at all, and the check agrees
            self._first.append(await self._next())
        self.started = True

    async def _next(self) -> T:
        if self._ended:
            raise StopAsyncIteration
        try:
            event = await anext(self._events, None)
            if event is None:
                self.node_ended = self._ended = True
                self._check.end()
                self.completed = True
                raise StopAsyncIteration
            if event.event == ERROR_EVENT:
                self.node_ended = True
                raise NodeReportedError(event.data)
            return self._check.event(event)
        except httpx.HTTPError as exc:
            self.node_ended = not is_timeout(exc)  # a stalled node may still be working
            self._ended = True
            raise self._fail(exc) from None
        except (BadAnswer, NodeReportedError) as exc:
            self._ended = True
            raise self._fail(exc) from None

    def __aiter__(self) -> EventStream[T]:
        return self

    async def __anext__(self) -> T:
        if self._first:
            return self._first.pop()
        if self._closed:
            raise StopAsyncIteration
        return await self._next()  # StopAsyncIteration once it completed or failed

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._on_close(self)
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(RuntimeError):
                await self._events.aclose()
            await close_response(self._response)
