"""Everything a route handler (core or plugin) needs, in one object kept in ``app.state.llmlb``.

Plugins call :meth:`RouterServices.call_node` to send work to a node and read its whole answer
(``llmlb_core.streaming.stream_from_node`` relays it instead). Both resolve the model (404 /
503 ``no_capable_nodes``), take a slot through the balancer (queueing when busy), forward with
the node's credential on the shared ``httpx.AsyncClient`` (:meth:`RouterServices.open_upstream`)
and, when the node fails before answering (connection refused or reset, timeout, 5xx), retry on
another node (:meth:`RouterServices.failover`, ``settings.max_retries`` times). A 4xx from a node
is returned as is: the request itself is at fault.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from litestar import Request

from llmlb_core.auth import KeyManager
from llmlb_core.balancer import Balancer, Lease
from llmlb_core.errors import NodeFailure, OpenAIError
from llmlb_core.metrics import Metrics
from llmlb_core.models import ModelRegistry
from llmlb_core.nodes import NodeRegistry
from llmlb_core.plugins import LoadedPlugins
from llmlb_core.settings import RouterSettings
from llmlb_core.store import Store
from llmlb_core.upstream import RETRYABLE_STATUS, close_response, is_timeout, node_failure, read_bounded

log = logging.getLogger("llmlb.forward")

T = TypeVar("T")


@dataclass
class UpstreamResult:
    status: int
    content: bytes
    content_type: str
    node_id: str
    headers: dict[str, str] = field(default_factory=dict)  # for the client (queue info)


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
                f"Node '{node.name}' is unreachable: {reason}",
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
    ) -> UpstreamResult:
        """POST ``content`` to ``path`` on a node serving ``model`` and read the whole answer;
        retry elsewhere when a node fails (see :meth:`failover`). A 4xx is returned as is."""
        headers = {"content-type": content_type, **(extra_headers or {})}

        async def attempt(lease: Lease) -> UpstreamResult:
            started = time.monotonic()
            node = lease.node
            try:
                response = await self.open_upstream(lease, path, content, headers)
            except BaseException:
                self.balancer.release(lease)
                raise
            done = False
            try:
                body = await response.aread()
                done = True
            except httpx.HTTPError as exc:  # the node died while sending its answer
                reason = type(exc.__cause__ or exc).__name__
                node.record_failure(f"answer cut: {reason}", self.settings.suspect_cooldown_s)
                self.nodes.mark_down(node, f"answer cut: {reason}")
                raise NodeFailure(
                    502,
                    f"Node '{node.name}' broke off its answer: {reason}",
                    type="server_error",
                    code="upstream_unreachable",
                ) from exc
            finally:
                elapsed = time.monotonic() - started
                outcome = "failed" if not done else "ok" if response.status_code < 400 else "client_error"
                self.metrics.observe_upstream(node.id, outcome, elapsed)
                self.balancer.release(lease, duration_s=elapsed if done else None)
            return UpstreamResult(
                status=response.status_code,
                content=body,
                content_type=response.headers.get("content-type", "application/json"),
                node_id=node.id,
                headers=lease.headers(),
            )

        return await self.failover(model, flags, attempt)


def get_services(request: Request[Any, Any, Any]) -> RouterServices:
    return request.app.state.llmlb  # type: ignore[no-any-return]
