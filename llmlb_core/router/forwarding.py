"""Sending a request to a node: the one forwarding path of every capability.

:class:`Forwarder` resolves the model (404 ``model_not_found`` / 503 ``no_capable_nodes``),
takes a slot through the balancer (queueing when busy), sends the request with the node's
credential on the shared ``httpx.AsyncClient``, and answers in one of three ways:

- :meth:`Forwarder.call` reads the whole answer (an images job, an embedding);
- :meth:`Forwarder.stream` relays it as it arrives (:class:`llmlb_core.upstream.relay.Relay`: server-sent
  events, audio); it returns as soon as the node's status line and headers are in;
- :meth:`Forwarder.events` reads server-sent events one by one, each checked (and rewritten) by
  the route (:class:`llmlb_core.upstream.event_stream.EventStream`: streamed images, whose parts the route
  merges); it returns once the first event is in and passed its check.

When a node fails before answering (connection refused or reset, timeout, 5xx, a bad answer,
an answer that is not HTTP/1.1: the transport, :mod:`llmlb_core.upstream.transport`, reports
every failure at the HTTP layer as an ``httpx`` error), the request is tried on another node,
``settings.max_retries`` times (:meth:`failover`). A request body that is itself a stream
(:class:`~llmlb_core.server.stream_body.StreamBody`, an upload relayed as it arrives) is retried only
while none of it was sent, or all that was read of it is kept (up to 1 MiB). A 4xx is the
request's fault: it is answered with the node's status and an OpenAI-shaped body, never
retried. So is a node's 504 ``job_timeout`` (its engine stopped a job that ran past the node's
time limit: :class:`JobTimedOut`), which leaves the node's standing as it was. After the first
relayed byte nothing is retried: an upstream that breaks mid-stream ends a server-sent event
stream with an OpenAI-shaped error event and aborts a binary one.

A node's answer is untrusted: its status, content type, size (``max_upstream_answer_bytes``,
routes may set a lower bound) and shape (``check``) are checked. An answer the route cannot use
is a 502 ``bad_upstream_response`` that marks the node suspect (:meth:`reject_answer`) and is
tried elsewhere. What a node says in a 5xx is logged, never shown to the client.

Every call to a node carries the request's ``x-request-id``, so the node's log lines say the
same id as the router's. The request's log record (:mod:`llmlb_core.server.access_log`) gets the model,
the node that answered and the time spent waiting for a slot; a node's report of the work a
whole answer took (:func:`note_node_report`: generation seconds, steps) is added to it too.

The lease is released, and the node's response closed, exactly once: when the answer is done,
when it fails, and when the client disconnects (the node's job may then still be running: the
slot stays counted as ``abandoned`` until the node's heartbeat says it ended).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
from litestar import Response

from llmlb_core.config.settings import RouterSettings
from llmlb_core.protocol import note_node_report
from llmlb_core.router.auth import check_model_access
from llmlb_core.router.balancer import Balancer, Lease, job_left_running
from llmlb_core.router.metrics import Metrics
from llmlb_core.router.models import ModelRegistry
from llmlb_core.router.nodes import NodeRegistry, NodeState
from llmlb_core.server import request_id
from llmlb_core.server.access_log import current_request
from llmlb_core.server.bodies import with_body_defaults
from llmlb_core.server.errors import (
    JOB_TIMEOUT,
    BadUpstreamAnswer,
    JobTimedOut,
    ModelNotFound,
    NoCapableNodes,
    NodeFailure,
    OpenAIError,
    UpstreamStreamBroken,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from llmlb_core.server.stream_body import StreamBody
from llmlb_core.upstream.answer import (
    DOCUMENT_TYPES,
    EVENT_STREAM_TYPES,
    JSON_TYPES,
    STREAM_TYPES,
    UpstreamResult,
)
from llmlb_core.upstream.client import (
    RETRYABLE_STATUS,
    BadAnswer,
    accepts,
    check_json_object,
    close_response,
    encoding_problem,
    error_code,
    is_garbled,
    is_timeout,
    log_snippet,
    media_type,
    node_failure,
    one_line,
    openai_error_content,
    read_answer,
    read_bounded,
    upstream_client_error,
)
from llmlb_core.upstream.event_stream import EventCheck, EventStream, NodeReportedError
from llmlb_core.upstream.relay import SSE_HEADERS, Relay, RelayStream, passed_headers
from llmlb_core.upstream.relay_checks import SSERelayCheck

log = logging.getLogger("llmlb.forward")

T = TypeVar("T")


@dataclass(frozen=True)
class NodeClientError:
    """A node's 4xx to a relayed request, read whole: the request's fault, answered to the
    client OpenAI-shaped and never retried."""

    status: int
    content: bytes
    content_type: str


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


def _is_sse(response: httpx.Response) -> bool:
    return media_type(response.headers.get("content-type", "")) == "text/event-stream"


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
    encoded = encoding_problem(response)
    if encoded is not None:
        return encoded
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return f"answer of {declared} bytes is over the limit of {limit} bytes"
    return None


def _garbled_reason(exc: httpx.HTTPError) -> str:
    return f"broken HTTP: {exc}"


def _bad_answer_reason(exc: Exception) -> str | None:
    """Why ``exc`` (what ended a read) makes the answer a bad one (the node sent garbage), or
    None when the node broke off or stalled instead."""
    if isinstance(exc, BadAnswer):
        return str(exc)
    if isinstance(exc, httpx.HTTPError) and is_garbled(exc):
        return _garbled_reason(exc)
    return None


class Forwarder:
    """Pick a node, send, fail over, answer (see the module doc). One per router."""

    def __init__(
        self,
        *,
        settings: RouterSettings,
        models: ModelRegistry,
        nodes: NodeRegistry,
        balancer: Balancer,
        http: httpx.AsyncClient,
        metrics: Metrics,
    ) -> None:
        self._models = models
        self._nodes = nodes
        self._balancer = balancer
        self._http = http
        self._metrics = metrics
        self._max_retries = settings.max_retries
        self._cooldown_s = settings.suspect_cooldown_s
        self.max_answer_bytes = settings.max_upstream_answer_bytes
        self._max_stream_event_bytes = settings.max_stream_event_bytes
        self._stream_idle_s = settings.stream_idle_timeout_s

    # --- the node's side of an attempt ----------------------------------------------------
    def reject_answer(self, node: NodeState, reason: str) -> NodeFailure:
        """A node answered something the route cannot use: log it (one line), make the node
        suspect, and fail the attempt with a retryable 502 ``bad_upstream_response``."""
        reason = one_line(reason, 500)
        log.warning("node %s sent a bad answer (request %s): %s", node.name, request_id.current(), reason)
        node.record_failure(f"bad answer: {reason}", self._cooldown_s)
        return BadUpstreamAnswer(node.name)

    def answer_broke(self, node: NodeState, exc: httpx.HTTPError | BadAnswer) -> NodeFailure:
        """The node's answer broke while it was read, before any of it went to the client: garbage
        (broken HTTP/1.1 framing, what a check refused) is a bad answer (:meth:`reject_answer`);
        a stall is a timeout (the node suspect); a cut-off connection takes the node out of
        traffic until it heartbeats again. Logged in one line."""
        if isinstance(exc, BadAnswer):
            return self.reject_answer(node, str(exc))
        if is_garbled(exc):
            return self.reject_answer(node, _garbled_reason(exc))
        reason = type(exc.__cause__ or exc).__name__
        said = f"its answer broke off (request {request_id.current()}): {reason}: {one_line(str(exc), 300)}"
        if is_timeout(exc):
            log.warning("node %s: %s", node.name, said)
            node.record_failure(f"answer stalled: {reason}", self._cooldown_s)
            return UpstreamTimeout(node.name)
        node.record_failure(f"answer cut: {reason}", self._cooldown_s)
        if not self._nodes.mark_down(node, said):  # logged there, once, when it was up
            log.warning("node %s: %s", node.name, said)
        return UpstreamUnreachable(f"Node '{node.name}' broke off its answer")

    async def failover(
        self,
        model: str,
        flags: frozenset[str],
        attempt: Callable[[Lease], Awaitable[T]],
        *,
        can_retry: Callable[[], bool] = lambda: True,
    ) -> T:
        """Run ``attempt`` with a lease on a node serving ``model``; when the node fails
        (:class:`NodeFailure`), run it again on another node, ``max_retries`` times.

        ``attempt`` owns the lease: it releases it (at once on failure, or when its answer is
        done). A model the request's key may not use: 403 ``model_not_allowed``. Unknown
        model: 404; no online node: 503 ``no_capable_nodes``.
        """
        check_model_access(model)  # a key limited to other models: 403, before anything else
        record = current_request()
        # A model the router knows (served, or seen lately: a 503) labels the request's metrics;
        # a name it does not know (a 404) does not, so the label stays bounded.
        known = True
        try:
            self._models.ensure_servable(model, flags)
        except ModelNotFound:
            known = False
            raise
        finally:
            if record is not None and known:
                record.model = model
        tried: list[str] = []
        last_error: NodeFailure | None = None
        for number in range(1, self._max_retries + 2):
            try:
                lease = await self._balancer.acquire(model, flags, exclude=tried)
            except NoCapableNodes:
                if last_error is not None:
                    raise last_error from None  # every capable node failed this request
                raise
            tried.append(lease.node.id)
            if record is not None and lease.queued:
                record.waited(lease.wait_ms / 1000)
            try:
                answer = await attempt(lease)
            except JobTimedOut:  # the job's fault: another node would run it as long
                if record is not None:
                    record.add_node(lease.node.name, failed=True)
                raise
            except NodeFailure as exc:
                if record is not None:
                    record.add_node(lease.node.name, failed=True)
                if not can_retry():
                    raise
                last_error = exc
                log.warning("attempt %d on node %s failed: %s", number, lease.node.name, exc.message)
            else:
                if record is not None:
                    record.add_node(lease.node.name)
                return answer
        assert last_error is not None
        raise last_error

    async def open(self, lease: Lease, path: str, body: Any, headers: Mapping[str, str]) -> httpx.Response:
        """POST to the leased node; return its response with the body unread.

        ``body`` is bytes or a :class:`StreamBody`; one whose ``error`` is set (what went wrong
        while reading the client's upload) fails the request with that error, not the node.
        A refused or reset connection takes the node out of traffic until it heartbeats again;
        a timeout or a 5xx makes it suspect. Each raises :class:`NodeFailure`.
        """
        node = lease.node
        headers = dict(headers)
        if not node.is_endpoint:
            # Our nodes log with it and quote it. Not sent to registered OpenAI-compatible
            # servers: some refuse an id that is not theirs (llama-cpp-python's server answers
            # 400 to any x-request-id that is not a UUID).
            headers[request_id.HEADER] = request_id.current() or request_id.new_id()
        if node.token:
            headers["authorization"] = f"Bearer {node.token}"
        request = self._http.build_request("POST", node.base_url + path, content=body, headers=headers)
        started = time.monotonic()
        try:
            response = await self._http.send(request, stream=True)
        except httpx.HTTPError as exc:
            self._metrics.observe_upstream(node.id, "failed", time.monotonic() - started)
            body_error = getattr(body, "error", None)  # a relayed upload that failed on our side
            if body_error is not None:
                if isinstance(body_error, OpenAIError):
                    raise body_error from None  # e.g. the client's upload went over the limit
                raise OpenAIError(400, f"Reading the request body failed: {body_error}") from None
            if is_garbled(exc):
                raise self.reject_answer(node, _garbled_reason(exc)) from None
            reason = type(exc.__cause__ or exc).__name__
            said = f"request failed (request {request_id.current()}): {reason}: {one_line(str(exc), 300)}"
            if is_timeout(exc):
                log.warning("node %s: %s", node.name, said)
                node.record_failure(f"timeout: {type(exc).__name__}", self._cooldown_s)
                raise UpstreamTimeout(node.name) from exc
            node.record_failure(f"unreachable: {reason}", self._cooldown_s)
            if not self._nodes.mark_down(node, said):  # logged there, once, when it was up
                log.warning("node %s: %s", node.name, said)
            raise UpstreamUnreachable(f"Node '{node.name}' is unreachable") from exc
        status = response.status_code
        if status in RETRYABLE_STATUS:
            # A 504 may be the job's fault, not the node's: its body says (below).
            if status != 504:
                node.record_failure(f"HTTP {status}", self._cooldown_s)
            try:
                content = await read_bounded(response)
            finally:
                await close_response(response)
            self._metrics.observe_upstream(node.id, "failed", time.monotonic() - started)
            if status == 504:
                if error_code(content) == JOB_TIMEOUT:
                    log.warning(
                        "node %s stopped the job at its time limit (request %s)",
                        node.name,
                        request_id.current(),
                    )
                    raise JobTimedOut(node.name)
                node.record_failure(f"HTTP {status}", self._cooldown_s)
            raise node_failure(status, content, node.name)
        return response

    def _limit(self, max_answer_bytes: int | None) -> int:
        cap = self.max_answer_bytes
        return min(max_answer_bytes, cap) if max_answer_bytes else cap

    # --- buffered -----------------------------------------------------------------------
    async def call(
        self,
        model: str,
        flags: frozenset[str],
        path: str,
        *,
        content: bytes,
        content_type: str,
        extra_headers: Mapping[str, str] | None = None,
        accept: Collection[str] = JSON_TYPES,
        max_answer_bytes: int | None = None,
        check: Callable[[bytes], Any] = check_json_object,
    ) -> UpstreamResult:
        """POST ``content`` to ``path`` on a node serving ``model`` and read the whole answer.

        A 4xx is returned with an OpenAI-shaped body. A 2xx must have a content type in
        ``accept``, at most ``max_answer_bytes`` (never more than ``max_upstream_answer_bytes``),
        and pass ``check`` (by default: a JSON object), whose result is kept in
        :attr:`UpstreamResult.parsed`; ``check`` raises :class:`BadAnswer` otherwise."""
        headers = {"content-type": content_type, **(extra_headers or {})}
        limit = self._limit(max_answer_bytes)

        async def read(response: httpx.Response, node: NodeState) -> UpstreamResult:
            status = response.status_code
            media = response.headers.get("content-type", "")
            result = UpstreamResult(status, b"", "application/json", node.id)
            if 400 <= status < 500:
                error = await read_bounded(response)
                result.content = openai_error_content(status, error, node_name=node.name, content_type=media)
                return result
            if not 200 <= status < 300:
                raise BadAnswer(f"HTTP {status}")
            if not accepts(media, accept):
                raise BadAnswer(f"content type {media!r}, expected one of {sorted(accept)}")
            result.content, result.content_type = await read_answer(response, limit), media
            result.parsed = check(result.content)
            note_node_report(response.headers)
            return result

        async def attempt(lease: Lease) -> UpstreamResult:
            started = time.monotonic()
            node = lease.node
            try:
                response = await self.open(lease, path, content, headers)
            except BaseException as exc:
                self._balancer.release(lease, abandoned=job_left_running(exc))
                raise
            done = False
            left_running = False
            try:
                result = await read(response, node)
                done = True
            except asyncio.CancelledError:
                left_running = True  # client gone mid-answer: the node may still be working
                raise
            except httpx.HTTPError as exc:  # the node died, stalled or sent garbage mid-answer
                left_running = is_timeout(exc)  # a stalled node may still be working
                raise self.answer_broke(node, exc) from exc
            except BadAnswer as exc:
                raise self.reject_answer(node, str(exc)) from None
            finally:
                await close_response(response)
                elapsed = time.monotonic() - started
                outcome = "failed" if not done else "ok" if response.status_code < 400 else "client_error"
                self._metrics.observe_upstream(node.id, outcome, elapsed)
                # A rejected or cut-off answer ended the job; a cancelled or timed-out read may not
                # have (the node's next heartbeat says when it did).
                self._balancer.release(lease, duration_s=elapsed if done else None, abandoned=left_running)
            result.headers = lease.headers()
            return result

        return await self.failover(model, flags, attempt)

    # --- relayed ------------------------------------------------------------------------
    async def stream(
        self,
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
        """POST to a node serving ``model`` and relay its answer as it arrives.
        ``accept``: the content types (``"audio/*"`` allowed) a 2xx answer may have."""
        limit = self.max_answer_bytes
        headers = {"content-type": content_type}
        if content_length is not None:
            headers["content-length"] = str(content_length)
        if extra_headers:
            headers.update(extra_headers)

        async def attempt(lease: Lease) -> Response[Any]:
            started = time.monotonic()
            response = await self._open_relayed(lease, path, content, headers, accept, limit, started)
            client_headers = {**lease.headers(), "x-llmlb-node": lease.node.id}
            if isinstance(response, NodeClientError):
                return upstream_error_response(
                    response.status,
                    response.content,
                    node_name=lease.node.name,
                    content_type=response.content_type,
                    headers=client_headers,
                )
            media = response.headers.get("content-type", "")
            relay = self._relay(lease, response, started, limit)
            try:  # the first bytes are read here: until they are in, another node may be tried
                await relay.start()
            except (httpx.HTTPError, BadAnswer) as exc:
                failure = self.answer_broke(lease.node, exc)
                await relay.aclose()
                raise failure from None
            except BaseException:
                await relay.aclose()
                raise
            client_headers.update(passed_headers(response))  # the content type as sent
            if relay.sse:
                client_headers.update(SSE_HEADERS)
            return RelayStream(
                relay,
                status_code=response.status_code,
                media_type=media or "application/octet-stream",
                headers=client_headers,
            )

        def can_retry() -> bool:  # a relayed upload: only while what was read of it is kept
            return not isinstance(content, StreamBody) or content.resendable

        return await self.failover(model, flags, attempt, can_retry=can_retry)

    async def _open_relayed(
        self,
        lease: Lease,
        path: str,
        content: bytes | StreamBody,
        headers: Mapping[str, str],
        accept: Collection[str],
        limit: int,
        started: float,
    ) -> httpx.Response | NodeClientError:
        """Open an answer that is passed on as it arrives (:meth:`stream`, :meth:`events`) and
        judge its head: usable (the response, still open), a 4xx (read within bounds, the lease
        released: :class:`NodeClientError`), or unusable (the lease released, the node marked
        suspect: :meth:`reject_answer`'s failure raised, for the failover to try elsewhere)."""
        try:
            response = await self.open(lease, path, content, headers)
        except BaseException as exc:
            self._balancer.release(lease, abandoned=job_left_running(exc))
            raise
        problem = _answer_problem(response, accept, limit)
        if problem is None and response.status_code < 400:
            return response
        try:  # a client that leaves while a 4xx is read must not leak the slot
            error = await read_bounded(response) if problem is None else b""
        finally:
            await close_response(response)
            self._balancer.release(lease)
        outcome = "client_error" if problem is None else "failed"
        self._metrics.observe_upstream(lease.node.id, outcome, time.monotonic() - started)
        if problem is not None:
            raise self.reject_answer(lease.node, problem)
        media = response.headers.get("content-type", "")
        return NodeClientError(response.status_code, error, media)

    def _relay(self, lease: Lease, response: httpx.Response, started: float, limit: int) -> Relay:
        """The relay of a node's answer: server-sent events checked event by event
        (:class:`SSERelayCheck`), every answer bounded in size and in idle time. A document
        (JSON, text: e.g. a transcript) is read whole before any of it is passed on, so a break
        anywhere in it is tried on another node."""
        node = lease.node
        sse = _is_sse(response)

        def on_broken(exc: Exception) -> tuple[str, str]:
            """After the first byte went to the client: the error event's message and code."""
            bad = _bad_answer_reason(exc)
            if bad is not None:
                failure = self.reject_answer(node, bad)
                return failure.message, failure.code or "bad_upstream_response"
            reason = type(exc.__cause__ or exc).__name__
            log.warning(
                "stream from node %s broke after %d bytes (request %s): %s: %r",
                node.name,
                relay.bytes_sent,
                request_id.current(),
                reason,
                str(exc)[:300],
            )
            if isinstance(exc, httpx.HTTPError) and is_timeout(exc):
                node.record_failure(f"stream stalled: {reason}", self._cooldown_s)
                return f"Node '{node.name}' timed out", "upstream_timeout"
            node.record_failure(f"stream broke: {reason}", self._cooldown_s)
            return f"Node '{node.name}' stopped streaming", "upstream_stream_broken"

        def on_close(relay: Relay) -> None:
            elapsed = time.monotonic() - started
            failed = relay.broken or relay.stalled
            outcome = "ok" if relay.completed else "failed" if failed else "cancelled"
            self._metrics.observe_upstream(node.id, outcome, elapsed)
            self._balancer.release(
                lease,
                duration_s=elapsed if relay.completed else None,
                abandoned=not relay.completed and not relay.broken,  # the node may still be sending
            )
            if not relay.completed and not failed:  # a failure was logged where it was seen
                log.info(
                    "stream from node %s ended early after %d bytes (client gone)",
                    node.name,
                    relay.bytes_sent,
                )

        relay = Relay(
            response,
            limit=limit,
            on_broken=on_broken,
            on_close=on_close,
            check=SSERelayCheck(max_event_bytes=self._max_stream_event_bytes) if sse else None,
            idle_timeout_s=self._stream_idle_s,
            whole=not sse and accepts(response.headers.get("content-type", ""), DOCUMENT_TYPES),
        )
        return relay

    # --- event streams, checked event by event -----------------------------------------------
    async def events(
        self,
        model: str,
        flags: frozenset[str],
        path: str,
        *,
        content: bytes,
        content_type: str,
        check: Callable[[], EventCheck[T]],
        max_event_bytes: int,
        max_answer_bytes: int | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> EventStream[T]:
        """POST ``content`` to ``path`` on a node serving ``model`` and read its answer as
        server-sent events, each checked by ``check()`` (a fresh :class:`EventCheck` per attempt).

        The first event is read and checked inside the failover attempt: a node that fails, or
        answers anything but a ``text/event-stream`` whose first event passes, before it is in
        is tried elsewhere. A 4xx before any event is raised as an :class:`OpenAIError`
        (OpenAI-shaped, as :meth:`call` answers it, with ``x-llmlb-node``). The returned
        :class:`EventStream` yields the checked events; after the first one, a break, an
        invalid event (over ``max_event_bytes`` among others), an ``error`` event from the node
        or a stream over ``max_answer_bytes`` raises a :class:`NodeFailure` and marks the node
        suspect. The caller must ``aclose()`` it (which releases the lease)."""
        headers = {"content-type": content_type, "accept": "text/event-stream", **(extra_headers or {})}
        limit = self._limit(max_answer_bytes)

        async def attempt(lease: Lease) -> EventStream[T]:
            started = time.monotonic()
            node = lease.node
            response = await self._open_relayed(
                lease, path, content, headers, EVENT_STREAM_TYPES, limit, started
            )
            if isinstance(response, NodeClientError):
                raise upstream_client_error(
                    response.status,
                    response.content,
                    node_name=node.name,
                    content_type=response.content_type,
                    headers={**lease.headers(), "x-llmlb-node": node.id},
                )
            stream = EventStream(
                response,
                check(),
                node_id=node.id,
                headers=lease.headers(),
                max_event_bytes=max_event_bytes,
                max_total_bytes=limit,
                fail=lambda exc: self._stream_failure(node, exc, first=not stream.started),
                on_close=functools.partial(self._stream_closed, lease, started),
            )
            try:
                await stream.start()
            except BaseException:
                await stream.aclose()
                raise
            return stream

        return await self.failover(model, flags, attempt)

    def _stream_failure(self, node: NodeState, exc: Exception, *, first: bool) -> NodeFailure:
        """What ends a node's event stream, as the typed error the route gets (logged once,
        the node marked suspect). ``first``: its first event was not in yet (the failover
        attempt is still on): a break is then what it is for any answer (:meth:`answer_broke`)."""
        if first and isinstance(exc, httpx.HTTPError | BadAnswer):
            return self.answer_broke(node, exc)
        bad = _bad_answer_reason(exc)
        if bad is not None:
            return self.reject_answer(node, bad)
        if isinstance(exc, NodeReportedError):
            log.warning(
                "node %s reported a failure in its event stream (request %s): %s",
                node.name,
                request_id.current(),
                log_snippet(exc.data),
            )
            node.record_failure("stream error event", self._cooldown_s)
            return UpstreamStreamBroken(node.name, code=error_code(exc.data))
        reason = type(exc.__cause__ or exc).__name__
        log.warning(
            "event stream from node %s broke (request %s): %s", node.name, request_id.current(), reason
        )
        node.record_failure(f"stream broke: {reason}", self._cooldown_s)
        if isinstance(exc, httpx.HTTPError) and is_timeout(exc):
            return UpstreamTimeout(node.name)
        return UpstreamStreamBroken(node.name)

    def _stream_closed(self, lease: Lease, started: float, stream: EventStream[Any]) -> None:
        elapsed = time.monotonic() - started
        outcome = "ok" if stream.completed else "failed" if stream.node_ended else "cancelled"
        self._metrics.observe_upstream(lease.node.id, outcome, elapsed)
        # Closed before the node ended it (client gone, an event refused, a stall): the node may
        # still be working until it sees the connection close; its heartbeat says when it ended.
        self._balancer.release(
            lease, duration_s=elapsed if stream.completed else None, abandoned=not stream.node_ended
        )

    # --- JSON routes --------------------------------------------------------------------
    async def json(
        self, *, model: str, flags: frozenset[str], path: str, body: bytes, stream: bool
    ) -> Response[Any]:
        """Forward a client's JSON body (with the model's admin defaults filled in): relayed as
        it streams, or answered whole."""
        body = with_body_defaults(body, self._models.defaults(model))
        if stream:
            return await self.stream(model, flags, path, content=body, content_type="application/json")
        result = await self.call(model, flags, path, content=body, content_type="application/json")
        return result.to_response()
