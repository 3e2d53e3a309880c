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
- The answer is untrusted: a status other than 2xx/4xx, a content type the route does not
  accept, or a declared length over ``settings.max_upstream_answer_bytes`` is a bad answer (the
  node is made suspect, the request is tried elsewhere, and finally a 502
  ``bad_upstream_response``). A relayed answer that grows over that limit is cut off like one
  that breaks (below).
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
- Client request bodies that carry model defaults are re-encoded only after
  ``llmlb_core.bodies.check_json_bytes`` (:func:`with_body_defaults`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Collection, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast

import httpx
from litestar import Response
from litestar.response import Stream
from litestar.response.base import ASGIResponse

from llmlb_core.balancer import Lease, job_left_running
from llmlb_core.bodies import check_json_bytes
from llmlb_core.errors import OpenAIError, error_body
from llmlb_core.request_id import with_request_id
from llmlb_core.upstream import BadAnswer, accepts, close_response, openai_error_content, read_bounded

if TYPE_CHECKING:
    from litestar.types import Receive, Scope, Send

    from llmlb_core.services import RouterServices

log = logging.getLogger("llmlb.stream")

# Upstream response headers passed on to the client (besides the router's own).
PASSED_HEADERS = ("content-type", "content-disposition", "content-language")
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
# What a relayed answer may be by default (server-sent events, or JSON from a server that does
# not stream).
STREAM_TYPES = ("text/event-stream", "application/json")


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
    status: int,
    content: bytes,
    *,
    node_name: str = "",
    content_type: str = "",
    headers: Mapping[str, str] | None = None,
) -> Response[bytes]:
    """A 4xx from upstream, answered with its status and an OpenAI-shaped body."""
    return Response(
        content=openai_error_content(status, content, node_name=node_name, content_type=content_type),
        status_code=status,
        media_type="application/json",
        headers=dict(headers or {}),
    )


def _sse_error_event(message: str, code: str, *, mid_event: bool = False) -> bytes:
    """An OpenAI-shaped error as a server-sent event; ``mid_event``: what was relayed so far
    ends inside an event, which is closed first so that the error arrives as an event of its own."""
    body = error_body(with_request_id(message), type="server_error", code=code)
    return (b"\n\n" if mid_event else b"") + b"data: " + json.dumps(body).encode() + b"\n\n"


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
        limit = self._services.settings.max_upstream_answer_bytes
        mid_event = False
        try:
            async for chunk in self.response.aiter_raw():
                if chunk:
                    self.bytes_sent += len(chunk)
                    if self.bytes_sent > limit:
                        raise BadAnswer(f"streamed answer went over the limit of {limit} bytes")
                    mid_event = not chunk.endswith((b"\n\n", b"\r\n\r\n"))
                    yield chunk
            self.completed = True
        except (httpx.HTTPError, BadAnswer) as exc:
            self.broken = True
            if isinstance(exc, BadAnswer):
                failure = self._services.reject_answer(node, str(exc))
                message, code = failure.message, failure.code or "bad_upstream_response"
            else:
                node.record_failure(
                    f"stream broke: {type(exc).__name__}", self._services.settings.suspect_cooldown_s
                )
                log.warning("stream from node %s broke after %d bytes: %r", node.name, self.bytes_sent, exc)
                message, code = f"Node '{node.name}' stopped streaming", "upstream_stream_broken"
            if not self.sse:
                raise  # abort the client's response: a truncated body must not look complete
            yield _sse_error_event(message, code, mid_event=mid_event)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        elapsed = time.monotonic() - self.started
        outcome = "ok" if self.completed else "failed" if self.broken else "cancelled"
        self._services.metrics.observe_upstream(self.lease.node.id, outcome, elapsed)
        self._services.balancer.release(
            self.lease,
            duration_s=elapsed if self.completed else None,
            abandoned=not self.completed and not self.broken,  # the node may still be sending
        )
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
    accept: Collection[str] = STREAM_TYPES,
) -> Response[Any]:
    """POST to a node serving ``model`` and stream its answer back (see the module doc).
    ``accept``: the content types (``"audio/*"`` allowed) a 2xx answer may have."""
    limit = services.settings.max_upstream_answer_bytes
    headers = {"content-type": content_type}
    if content_length is not None:
        headers["content-length"] = str(content_length)
    if extra_headers:
        headers.update(extra_headers)

    async def attempt(lease: Lease) -> Response[Any]:
        started = time.monotonic()
        try:
            response = await services.open_upstream(lease, path, content, headers)
        except BaseException as exc:
            services.balancer.release(lease, abandoned=job_left_running(exc))
            raise
        client_headers = {**lease.headers(), "x-llmlb-node": lease.node.id}
        status, media = response.status_code, response.headers.get("content-type", "")
        problem = _answer_problem(response, accept, limit)
        if problem is not None or status >= 400:
            error = await read_bounded(response) if problem is None else b""
            await close_response(response)
            outcome = "client_error" if problem is None else "failed"
            services.metrics.observe_upstream(lease.node.id, outcome, time.monotonic() - started)
            services.balancer.release(lease)
            if problem is not None:
                raise services.reject_answer(lease.node, problem)
            return upstream_error_response(
                status, error, node_name=lease.node.name, content_type=media, headers=client_headers
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


def _answer_problem(response: httpx.Response, accept: Collection[str], limit: int) -> str | None:
    """Why a relayed answer cannot be used (its head is all there is to judge), or None."""
    status = response.status_code
    if 400 <= status < 500:
        return None  # the request's fault: answered as an OpenAI error
    if not 200 <= status < 300:
        return f"HTTP {status}"
    media = response.headers.get("content-type", "")
    if not accepts(media, accept):
        return f"content type {media!r}, expected one of {sorted(accept)}"
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return f"answer of {declared} bytes is over the limit of {limit} bytes"
    return None


def with_body_defaults(body: bytes, defaults: Mapping[str, Any]) -> bytes:
    """Fill top-level JSON fields the client left out from a model's admin-set defaults.

    The client's bytes are returned untouched when there is nothing to add; otherwise the body
    is re-encoded with the missing keys added (the client's own values always win).
    """
    if not defaults:
        return body
    check_json_bytes(body)  # json.loads below must not meet hostile bytes unchecked
    try:
        data = json.loads(body)
    except ValueError:
        raise OpenAIError(400, "Request body is not valid JSON", code="invalid_json") from None
    if not isinstance(data, dict):
        raise OpenAIError(400, "Request body must be a JSON object", code="invalid_json")
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
    return Response(
        content=result.content, status_code=result.status, media_type=result.content_type, headers=headers
    )
