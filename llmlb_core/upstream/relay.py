"""Relaying an upstream answer to a client as it arrives: the one relay of the router (answers
from nodes and endpoints) and of the node's ``openai_compatible`` runtime (answers from a local
server).

:class:`Relay` writes each chunk the upstream sends as soon as it is read (no re-chunking, no
buffering), so server-sent events keep their timing. The router's relays check what passes
(:mod:`llmlb_core.upstream.relay_checks`): a server-sent event is then written as soon as it is complete
and checked, as the bytes it came in. :class:`RelayStream` is the Litestar
response over it: it closes the relay whatever happens, also when the response is never
iterated (the client left before the headers went out). Closing is shielded from cancellation
(a client that disconnects cancels the relay), so the upstream always sees its client go away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

import anyio
import httpx
from litestar.response import Stream
from litestar.response.base import ASGIResponse

from llmlb_core.server.errors import error_body
from llmlb_core.server.request_id import with_request_id
from llmlb_core.upstream.client import BadAnswer, close_response, is_timeout
from llmlb_core.upstream.idle_watch import IdleWatch
from llmlb_core.upstream.relay_checks import RelayCheck

if TYPE_CHECKING:
    from litestar.types import Receive, Scope, Send

log = logging.getLogger("llmlb.relay")

# Upstream response headers passed on to the client (besides the router's own).
PASSED_HEADERS = ("content-type", "content-disposition", "content-language")
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def passed_headers(response: httpx.Response) -> dict[str, str]:
    """The upstream headers a relayed answer keeps (content type among them).

    Keep the content type among the answer's *headers*, as sent: given as Litestar's
    ``media_type``, a ``text/*`` type gets ``; charset=utf-8`` appended even when it names its
    charset already (``text/event-stream; charset=utf-8; charset=utf-8``); a header is taken as
    it is (``media_type`` is then only the fallback)."""
    return {name: response.headers[name] for name in PASSED_HEADERS if name in response.headers}


def sse_error_event(message: str, code: str, *, mid_event: bool = False) -> bytes:
    """An OpenAI-shaped error as a server-sent event (the official SDKs raise it); ``mid_event``:
    what was relayed so far ends inside an event, which is closed first."""
    body = error_body(with_request_id(message), type="server_error", code=code)
    return (b"\n\n" if mid_event else b"") + b"data: " + json.dumps(body).encode() + b"\n\n"


class Relay:
    """Pass an upstream response's body through; close it exactly once.

    ``limit``: most bytes read; more is a :class:`BadAnswer` (handled like a break).
    ``check``: what every chunk goes through (:class:`~llmlb_core.upstream.relay_checks.SSERelayCheck` for
    server-sent events): what it returns is passed on, what it refuses is a :class:`BadAnswer`.
    ``idle_timeout_s``: the longest the relay may wait on the upstream for something to pass on
    (a trickle of bytes that never completes an event counts as nothing); then it ends as if
    the read had timed out (``httpx.ReadTimeout``). Time the client takes to accept what was
    passed does not count.
    ``on_broken(exc)``: called when the upstream breaks off or stalls (``httpx.HTTPError``), or
    sends what may not be passed on (:class:`BadAnswer`); it returns the ``(message, code)`` of
    the error event that ends a server-sent event stream. A binary answer, or a relay without
    ``on_broken``, is aborted instead (the client sees a truncated body, never a clean end).
    ``on_close(relay)`` runs once at the end, with ``completed`` / ``broken`` / ``stalled``
    telling how it ended.

    :meth:`start` reads ahead until the first bytes to pass on are in, or with ``whole`` the
    whole answer (a forwarder calls it while it may still try another node); iterating passes
    them, then the rest.
    """

    def __init__(
        self,
        response: httpx.Response,
        *,
        limit: int | None = None,
        on_broken: Callable[[Exception], tuple[str, str]] | None = None,
        on_close: Callable[[Relay], None] | None = None,
        check: RelayCheck | None = None,
        idle_timeout_s: float | None = None,
        whole: bool = False,
    ) -> None:
        self.response = response
        self.sse = response.headers.get("content-type", "").startswith("text/event-stream")
        self.bytes_read = 0
        self.bytes_sent = 0
        self.completed = False
        self.broken = False  # the upstream broke off, or sent what may not be passed on
        self.stalled = False  # it timed out (it may still be working)
        self._limit = limit
        self._check = check
        self._idle_s = idle_timeout_s
        self._watch: IdleWatch | None = None  # made at the first read (it needs the loop)
        self._chunks: AsyncGenerator[bytes, None] = response.aiter_raw()  # type: ignore[assignment]
        self._whole = whole
        self._ahead: deque[bytes | None] = deque()  # read by start(), not passed yet (None: the end)
        self._on_broken = on_broken
        self._on_close = on_close
        self._closed = False

    async def start(self) -> None:
        """Read until the first bytes to pass on are in (with ``whole``: all of them), or the
        answer ended; raises what ended the read (``httpx.HTTPError``, :class:`BadAnswer`), as
        iterating would."""
        while True:
            chunk = await self._next()
            self._ahead.append(chunk)
            if chunk is None or not self._whole:
                return

    async def _next(self) -> bytes | None:
        """The next bytes to pass on (never empty), or None at the end of the answer. The wait is
        bounded by ``idle_timeout_s``, only while the relay waits on the upstream (a slow client
        is not a stalled upstream). A failure sets ``broken`` or ``stalled`` and is raised."""
        watch = self._watch
        if watch is None and self._idle_s is not None:
            watch = self._watch = IdleWatch(self._idle_s)
        if watch is not None:
            watch.waiting()
        try:
            while True:
                chunk = await anext(self._chunks, None)
                if chunk is None:
                    if self._check is not None:
                        self._check.end()
                    return None
                self.bytes_read += len(chunk)
                if self._limit is not None and self.bytes_read > self._limit:
                    raise BadAnswer(f"streamed answer went over the limit of {self._limit} bytes")
                passed = chunk if self._check is None else self._check.feed(chunk)
                if passed:
                    return passed
        except asyncio.CancelledError:
            if watch is not None and watch.stalled():
                self.stalled = True
                raise httpx.ReadTimeout(f"nothing to relay for {self._idle_s:g} s") from None
            raise
        except httpx.HTTPError as exc:
            if is_timeout(exc):
                self.stalled = True
            else:
                self.broken = True
            raise
        except BadAnswer:
            self.broken = True
            raise
        finally:
            if watch is not None:
                watch.done()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        mid_event = False
        try:
            while True:
                chunk = self._ahead.popleft() if self._ahead else await self._next()
                if chunk is None:
                    break
                self.bytes_sent += len(chunk)
                mid_event = not chunk.endswith((b"\n\n", b"\r\n\r\n"))
                yield chunk
            self.completed = True
        except (httpx.HTTPError, BadAnswer) as exc:
            if self._on_broken is None:
                raise
            message, code = self._on_broken(exc)
            if not self.sse:
                raise  # abort the client's response: a truncated body must not look complete
            yield sse_error_event(message, code, mid_event=mid_event)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._watch is not None:
            self._watch.close()
        try:
            if self._on_close is not None:
                self._on_close(self)
        finally:
            with anyio.CancelScope(shield=True), contextlib.suppress(RuntimeError):
                await self._chunks.aclose()  # RuntimeError: closed while it is being read
            await close_response(self.response)


class Closable(Protocol):
    """What :class:`RelayStream` streams: chunks, and a cleanup that may run more than once."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


class _ClosingASGI:
    """The streaming ASGI response, then the relay's cleanup whatever happened."""

    def __init__(self, inner: ASGIResponse, relay: Closable) -> None:
        self._inner = inner
        self._relay = relay

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._inner(scope, receive, send)
        finally:
            await self._relay.aclose()


class RelayStream(Stream):
    """A Litestar ``Stream`` over a :class:`Relay` (or any :class:`Closable`) that closes it
    even when it is never iterated (client gone before the headers went out)."""

    def __init__(self, relay: Closable, **kwargs: Any) -> None:
        super().__init__(relay, **kwargs)
        self.relay = relay

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        inner = super().to_asgi_response(*args, **kwargs)
        return cast(ASGIResponse, _ClosingASGI(inner, self.relay))
