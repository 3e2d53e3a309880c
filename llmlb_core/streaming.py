"""Streaming forwarding: a node's (or endpoint's) answer passed to the client as it arrives.

:func:`stream_from_node` is the streaming sibling of ``RouterServices.call_node``:

- It resolves the model (404 / 503 ``no_capable_nodes``), takes a balancer lease (queueing when
  busy) and sends the request with ``services.http.send(..., stream=True)``: it returns as soon
  as the upstream's status line and headers are in, before any body byte.
- Before the first byte reaches the client, a connection failure, a timeout or a 5xx marks the
  node suspect and the request is retried on another node, as ``call_node`` does
  (``settings.max_retries``, ``settings.suspect_cooldown_s``). A request body that is itself a
  stream (an audio upload relayed as it arrives, see :class:`StreamBody`) is retried only while
  none of it was sent.
- A 4xx is not retried: the upstream's error is read (bounded), made OpenAI-shaped if it was
  not, and answered with the upstream's status.
- A 2xx/3xx is relayed by a :class:`Relay` inside a Litestar ``Stream``: each chunk the upstream
  sends is written to the client as soon as it is read (no re-chunking, no buffering), so
  server-sent events keep their timing and ``data: [DONE]`` arrives as the upstream sent it.
- The lease is released and the upstream response closed when the stream ends, when it fails,
  and when the client disconnects: Litestar cancels the relay when the ASGI server reports the
  disconnect, the relay's ``finally`` closes the upstream connection (shielded from that
  cancellation), and the upstream sees its client go away. The closing also runs when the
  response is never iterated at all (client gone before the headers were sent).
- After the first byte nothing is retried: an upstream that breaks mid-stream ends an SSE
  stream with an OpenAI-shaped ``data: {"error": ...}`` event (the official SDKs raise it) and
  aborts a binary stream (the client sees a truncated body, not a clean end).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast

import httpx
from litestar import Response
from litestar.response import Stream
from litestar.response.base import ASGIResponse

from llmlb_core.balancer import Lease
from llmlb_core.errors import error_body
from llmlb_core.upstream import close_response, openai_error_content, read_bounded

if TYPE_CHECKING:
    from litestar.types import Receive, Scope, Send

    from llmlb_core.services import RouterServices

log = logging.getLogger("llmlb.stream")

# Upstream response headers passed on to the client (besides the router's own).
PASSED_HEADERS = ("content-type", "content-disposition", "content-language")
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class StreamBody:
    """A request body forwarded as it arrives (never held whole in memory).

    It can be sent once. ``started`` tells whether the transport pulled any of it (after that a
    failed attempt cannot be retried elsewhere); ``error`` keeps what the source raised (e.g. an
    upload over its size limit), so the caller answers that instead of "upstream unreachable".
    """

    def __init__(self, source: AsyncIterable[bytes]) -> None:
        self._source = source
        self.started = False
        self.error: BaseException | None = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self.started:
            raise RuntimeError("a streamed request body can be sent only once")
        self.started = True
        try:
            async for chunk in self._source:
                yield chunk
        except Exception as exc:
            self.error = exc
            raise


def upstream_error_response(
    status: int, content: bytes, *, node_name: str = "", headers: Mapping[str, str] | None = None
) -> Response[bytes]:
    """A 4xx (or final 5xx) from upstream, answered with its status and an OpenAI-shaped body."""
    return Response(
        content=openai_error_content(status, content, node_name=node_name),
        status_code=status,
        media_type="application/json",
        headers=dict(headers or {}),
    )


def _sse_error_event(message: str, code: str) -> bytes:
    body = error_body(message, type="server_error", code=code)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


class Relay:
    """Pass an upstream response's body through; release its lease and close it exactly once."""

    def __init__(
        self, services: RouterServices, lease: Lease, response: httpx.Response, *, started: float
    ) -> None:
        self._services = services
        self.lease = lease
        self.response = response
        self.sse = response.headers.get("content-type", "").startswith("text/event-stream")
        self.started = started  # when the request was sent (monotonic)
        self.bytes_sent = 0
        self.completed = False
        self.broken = False
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        node = self.lease.node
        try:
            async for chunk in self.response.aiter_raw():
                if chunk:
                    self.bytes_sent += len(chunk)
                    yield chunk
            self.completed = True
        except httpx.HTTPError as exc:
            self.broken = True
            node.record_failure(
                f"stream broke: {type(exc).__name__}", self._services.settings.suspect_cooldown_s
            )
            log.warning("stream from node %s broke after %d bytes: %s", node.name, self.bytes_sent, exc)
            if not self.sse:
                raise  # abort the client's response: a truncated body must not look complete
            yield _sse_error_event(
                f"Node '{node.name}' stopped streaming: {type(exc).__name__}", "upstream_stream_broken"
            )
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        elapsed = time.monotonic() - self.started
        outcome = "ok" if self.completed else "failed" if self.broken else "cancelled"
        self._services.metrics.observe_upstream(self.lease.node.id, outcome, elapsed)
        self._services.balancer.release(self.lease, duration_s=elapsed if self.completed else None)
        if not self.completed:
            log.info(
                "stream from node %s ended early after %d bytes (client gone or upstream broke)",
                self.lease.node.name,
                self.bytes_sent,
            )
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


async def stream_from_node(
    services: RouterServices,
    model: str,
    flags: frozenset[str],
    path: str,
    *,
    content: bytes | StreamBody,
    content_type: str,
    content_length: int | None = None,
    extra_headers: Mapping[str, str] | None = None,
) -> Response[Any]:
    """POST to a node serving ``model`` and stream its answer back (see the module doc)."""
    headers = {"content-type": content_type}
    if content_length is not None:
        headers["content-length"] = str(content_length)
    if extra_headers:
        headers.update(extra_headers)

    async def attempt(lease: Lease) -> Response[Any]:
        started = time.monotonic()
        try:
            response = await services.open_upstream(lease, path, content, headers)
        except BaseException:
            services.balancer.release(lease)
            raise
        client_headers = {**lease.headers(), "x-llmlb-node": lease.node.id}
        if response.status_code >= 400:
            error = await read_bounded(response)
            await close_response(response)
            services.metrics.observe_upstream(lease.node.id, "client_error", time.monotonic() - started)
            services.balancer.release(lease)
            return upstream_error_response(
                response.status_code, error, node_name=lease.node.name, headers=client_headers
            )
        relay = Relay(services, lease, response, started=started)
        for name in PASSED_HEADERS:
            if name in response.headers and name != "content-type":
                client_headers[name] = response.headers[name]
        if relay.sse:
            client_headers.update(SSE_HEADERS)
        return RelayStream(
            relay,
            status_code=response.status_code,
            media_type=response.headers.get("content-type", "application/octet-stream"),
            headers=client_headers,
        )

    def can_retry() -> bool:  # a relayed upload cannot be sent twice once it started
        return not (isinstance(content, StreamBody) and (content.started or content.error is not None))

    return await services.failover(model, flags, attempt, can_retry=can_retry)


def with_body_defaults(body: bytes, defaults: Mapping[str, Any]) -> bytes:
    """Fill top-level JSON fields the client left out from a model's admin-set defaults.

    The client's bytes are returned untouched when there is nothing to add; otherwise the body
    is re-encoded with the missing keys added (the client's own values always win).
    """
    if not defaults:
        return body
    data = json.loads(body)
    missing = {k: v for k, v in defaults.items() if k not in data}
    if not missing:
        return body
    return json.dumps({**data, **missing}, ensure_ascii=False, separators=(",", ":")).encode()


async def forward_json(
    services: RouterServices,
    *,
    model: str,
    flags: frozenset[str],
    path: str,
    body: bytes,
    stream: bool,
) -> Response[Any]:
    """Forward a JSON request body to a node: relayed as it streams, or answered whole."""
    body = with_body_defaults(body, services.model_defaults(model))
    if stream:
        return await stream_from_node(
            services, model, flags, path, content=body, content_type="application/json"
        )
    result = await services.call_node(model, flags, path, content=body, content_type="application/json")
    headers = {**result.headers, "x-llmlb-node": result.node_id}
    if result.status >= 400:
        return upstream_error_response(result.status, result.content, headers=headers)
    return Response(
        content=result.content, status_code=result.status, media_type=result.content_type, headers=headers
    )
