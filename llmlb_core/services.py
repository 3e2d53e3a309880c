"""Everything a route handler (core or plugin) needs, in one object kept in ``app.state.llmlb``.

Plugins call :meth:`RouterServices.call_node` to send work to a node and read its whole answer
(``llmlb_core.streaming.stream_from_node`` relays it instead). Both resolve the model (404 /
503 ``no_capable_nodes``), take a slot through the balancer (queueing when busy), forward with
the node's credential on the shared ``httpx.AsyncClient`` (:meth:`RouterServices.open_upstream`)
and, when the node fails before answering (connection refused or reset, timeout, 5xx), retry on
another node (:meth:`RouterServices.failover`, ``settings.max_retries`` times). A 4xx from a node
is returned with an OpenAI-shaped body: the request itself is at fault.

A node's answer is untrusted input: its status, content type, size
(``settings.max_upstream_answer_bytes``) and shape are checked, and an answer the route cannot
use is a 502 ``bad_upstream_response`` that marks the node suspect (:meth:`reject_answer`) and is
tried on another node. What a node says in a 5xx is logged, never shown to the client.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from litestar import Request

from llmlb_core import request_id
from llmlb_core.auth import KeyManager
from llmlb_core.balancer import Balancer, Lease, job_left_running
from llmlb_core.errors import NodeFailure, OpenAIError
from llmlb_core.metrics import Metrics
from llmlb_core.models import ModelRegistry
from llmlb_core.nodes import NodeRegistry, NodeState
from llmlb_core.plugins import LoadedPlugins
from llmlb_core.settings import RouterSettings
from llmlb_core.store import Store
from llmlb_core.upstream import (
    RETRYABLE_STATUS,
    BadAnswer,
    accepts,
    check_json_object,
    close_response,
    is_timeout,
    node_failure,
    one_line,
    openai_error_content,
    read_answer,
    read_bounded,
)

log = logging.getLogger("llmlb.forward")

T = TypeVar("T")

JSON_TYPES = ("application/json",)


@dataclass
class UpstreamResult:
    status: int
    content: bytes
    content_type: str
    node_id: str
    headers: dict[str, str] = field(default_factory=dict)  # for the client (queue info)
    parsed: Any = None  # what call_node's ``check`` made of a 2xx answer


@dataclass
class RouterServices:
    settings: RouterSettings
    store: Store
    keys: KeyManager
    nodes: NodeRegistry
    models: ModelRegistry
    balancer: Balancer
    plugins: LoadedPlugins
    http: httpx.AsyncClient
    metrics: Metrics
    extras: dict[str, Any] = field(default_factory=dict)  # per-plugin state

    @property
    def enabled_flags(self) -> frozenset[str]:
        return self.plugins.enabled_flags

    def model_defaults(self, model: str) -> dict[str, Any]:
        return self.models.defaults(model)

    def reject_answer(self, node: NodeState, reason: str) -> NodeFailure:
        """A node answered something the route cannot use: log it (one line), make the node
        suspect, and fail the attempt with a retryable 502 ``bad_upstream_response``."""
        reason = one_line(reason, 500)
        log.warning("node %s sent a bad answer (request %s): %s", node.name, request_id.current(), reason)
        node.record_failure(f"bad answer: {reason}", self.settings.suspect_cooldown_s)
        return NodeFailure(
            502,
            f"Node '{node.name}' sent an answer the router cannot use",
            type="server_error",
            code="bad_upstream_response",
        )

    async def failover(
        self,
        model: str,
        flags: frozenset[str],
        attempt: Callable[[Lease], Awaitable[T]],
        *,
        can_retry: Callable[[], bool] = lambda: True,
    ) -> T:
        """Run ``attempt`` with a lease on a node serving ``model``; when the node fails
        (:class:`NodeFailure`), run it again on another node, ``settings.max_retries`` times.

        ``attempt`` owns the lease: it releases it (at once on failure, or when its answer is
        done). Unknown model: 404; no online node: 503 ``no_capable_nodes``.
        """
        self.models.ensure_servable(model, flags)
        tried: list[str] = []
        last_error: NodeFailure | None = None
        for number in range(1, self.settings.max_retries + 2):
            try:
                lease = await self.balancer.acquire(model, flags, exclude=tried)
            except OpenAIError as exc:
                if last_error is not None and exc.code == "no_capable_nodes":
                    raise last_error from None  # every capable node failed this request
                raise
            tried.append(lease.node.id)
            try:
                return await attempt(lease)
            except NodeFailure as exc:
                if not can_retry():
                    raise
                last_error = exc
                log.warning("attempt %d on node %s failed: %s", number, lease.node.name, exc.message)
        assert last_error is not None
        raise last_error

    async def open_upstream(
        self, lease: Lease, path: str, body: Any, headers: Mapping[str, str]
    ) -> httpx.Response:
        """POST to the leased node; return its response with the body unread.

        ``body`` is bytes or a relayed stream; a stream exposing ``error`` (what went wrong while
        reading the client's upload) fails the request with that error, not the node.
        A refused or reset connection takes the node out of traffic until it heartbeats again;
        a timeout or a 5xx makes it suspect. Each raises :class:`NodeFailure`.
        """
        node = lease.node
        cooldown = self.settings.suspect_cooldown_s
        if node.token:
            headers = {**headers, "authorization": f"Bearer {node.token}"}
        request = self.http.build_request("POST", node.base_url + path, content=body, headers=headers)
        started = time.monotonic()
        try:
            response = await self.http.send(request, stream=True)
        except httpx.HTTPError as exc:
            self.metrics.observe_upstream(node.id, "failed", time.monotonic() - started)
            body_error = getattr(body, "error", None)  # a relayed upload that failed on our side
            if body_error is not None:
                if isinstance(body_error, OpenAIError):
                    raise body_error from None  # e.g. the client's upload went over the limit
                raise OpenAIError(400, f"Reading the request body failed: {body_error}") from None
            log.warning(
                "node %s: request failed (request %s): %s: %s",
                node.name,
                request_id.current(),
                type(exc.__cause__ or exc).__name__,
                exc,
            )
            if is_timeout(exc):
                node.record_failure(f"timeout: {type(exc).__name__}", cooldown)
                raise NodeFailure(
                    504, f"Node '{node.name}' timed out", type="server_error", code="upstream_timeout"
                ) from exc
            reason = type(exc.__cause__ or exc).__name__
            node.record_failure(f"unreachable: {reason}", cooldown)
            self.nodes.mark_down(node, f"{reason}: {exc}")
            raise NodeFailure(
                502,
                f"Node '{node.name}' is unreachable",
                type="server_error",
                code="upstream_unreachable",
            ) from exc
        if response.status_code in RETRYABLE_STATUS:
            node.record_failure(f"HTTP {response.status_code}", cooldown)
            content = await read_bounded(response)
            await close_response(response)
            self.metrics.observe_upstream(node.id, "failed", time.monotonic() - started)
            raise node_failure(response.status_code, content, node.name)
        return response

    async def call_node(
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
        """POST ``content`` to ``path`` on a node serving ``model`` and read the whole answer;
        retry elsewhere when a node fails (see :meth:`failover`).

        A 4xx is returned with an OpenAI-shaped body. A 2xx must have a content type in
        ``accept``, at most ``max_answer_bytes`` (never more than
        ``settings.max_upstream_answer_bytes``), and pass ``check`` (by default: a JSON object),
        whose result is kept in ``UpstreamResult.parsed``; ``check`` raises :class:`BadAnswer`
        otherwise. Any other answer is rejected (:meth:`reject_answer`) and tried elsewhere."""
        headers = {"content-type": content_type, **(extra_headers or {})}
        cap = self.settings.max_upstream_answer_bytes
        limit = min(max_answer_bytes, cap) if max_answer_bytes else cap

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
            return result

        async def attempt(lease: Lease) -> UpstreamResult:
            started = time.monotonic()
            node = lease.node
            try:
                response = await self.open_upstream(lease, path, content, headers)
            except BaseException as exc:
                self.balancer.release(lease, abandoned=job_left_running(exc))
                raise
            done = False
            left_running = False
            try:
                result = await read(response, node)
                done = True
            except asyncio.CancelledError:
                left_running = True  # client gone mid-answer: the node may still be working
                raise
            except httpx.HTTPError as exc:  # the node died (or stalled) while sending its answer
                left_running = is_timeout(exc)  # a stalled node may still be working
                reason = type(exc.__cause__ or exc).__name__
                log.warning(
                    "node %s broke off its answer (request %s): %s", node.name, request_id.current(), reason
                )
                node.record_failure(f"answer cut: {reason}", self.settings.suspect_cooldown_s)
                self.nodes.mark_down(node, f"answer cut: {reason}")
                raise NodeFailure(
                    502,
                    f"Node '{node.name}' broke off its answer",
                    type="server_error",
                    code="upstream_unreachable",
                ) from exc
            except BadAnswer as exc:
                raise self.reject_answer(node, str(exc)) from None
            finally:
                await close_response(response)
                elapsed = time.monotonic() - started
                outcome = "failed" if not done else "ok" if response.status_code < 400 else "client_error"
                self.metrics.observe_upstream(node.id, outcome, elapsed)
                # A rejected or cut-off answer ended the job; a cancelled or timed-out read may not
                # have (the node's next heartbeat says when it did).
                self.balancer.release(lease, duration_s=elapsed if done else None, abandoned=left_running)
            result.headers = lease.headers()
            return result

        return await self.failover(model, flags, attempt)


def get_services(request: Request[Any, Any, Any]) -> RouterServices:
    return request.app.state.llmlb  # type: ignore[no-any-return]
