"""Relaying an upstream answer to a client as it arrives: the one relay of the router (answers
from nodes and endpoints) and of the node's ``openai_compatible`` runtime (answers from a local
server).

:class:`Relay` writes each chunk the upstream sends as soon as it is read (no re-chunking, no
buffering), so server-sent events keep their timing. :class:`RelayStream` is the Litestar
response over it: it closes the relay whatever happens, also when the response is never
iterated (the client left before the headers went out). Closing is shielded from cancellation
(a client that disconnects cancels the relay), so the upstream always sees its client go away.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, Protocol, cast

import httpx
from litestar.response import Stream
from litestar.response.base import ASGIResponse

from llmlb_core.errors import error_body
from llmlb_core.request_id import with_request_id
from llmlb_core.upstream import BadAnswer, close_response

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

    ``limit``: most bytes relayed; more is a :class:`BadAnswer` (handled like a break).
    ``on_broken(exc)``: called when the upstream breaks off (``httpx.HTTPError``) or goes over
    ``limit``; it returns the ``(message, code)`` of the error event that ends a server-sent
    event stream. A binary answer, or a relay without ``on_broken``, is aborted instead (the
    client sees a truncated body, never a clean end). ``on_close(relay)`` runs once at the end,
    with ``completed`` / ``broken`` telling how it ended.
    """

    def __init__(
        self,
        response: httpx.Response,
        *,
        limit: int | None = None,
        on_broken: Callable[[Exception], tuple[str, str]] | None = None,
        on_close: Callable[[Relay], None] | None = None,
    ) -> None:
        self.response = response
        self.sse = response.headers.get("content-type", "").startswith("text/event-stream")
        self.bytes_sent = 0
        self.completed = False
        self.broken = False
        self._limit = limit
        self._on_broken = on_broken
        self._on_close = on_close
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        mid_event = False
        try:
            async for chunk in self.response.aiter_raw():
                if chunk:
                    self.bytes_sent += len(chunk)
                    if self._limit is not None and self.bytes_sent > self._limit:
                        raise BadAnswer(f"streamed answer went over the limit of {self._limit} bytes")
                    mid_event = not chunk.endswith((b"\n\n", b"\r\n\r\n"))
                    yield chunk
            self.completed = True
        except (httpx.HTTPError, BadAnswer) as exc:
            self.broken = True
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
        try:
            if self._on_close is not None:
                self._on_close(self)
        finally:
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
