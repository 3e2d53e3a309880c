"""Everything a route handler (core or plugin) needs, in one object kept in ``app.state.llmlb``.

Plugins call :meth:`RouterServices.call_node` to send work to a node: it resolves the model
(404 / 503 ``no_capable_nodes``), takes a slot through the balancer (queueing when busy),
forwards with the node's credential on the shared ``httpx.AsyncClient``, and on a connection
failure, timeout or 5xx before an answer marks the node suspect and retries on another node
(``settings.max_retries`` times). A 4xx from a node is returned as is: the request itself is at fault.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import httpx
from litestar import Request

from llmlb_core.auth import KeyManager
from llmlb_core.balancer import Balancer, Lease
from llmlb_core.errors import OpenAIError
from llmlb_core.metrics import Metrics
from llmlb_core.models import ModelRegistry
from llmlb_core.nodes import NodeRegistry, NodeState
from llmlb_core.plugins import LoadedPlugins
from llmlb_core.settings import RouterSettings
from llmlb_core.store import Store
from llmlb_core.upstream import is_timeout

log = logging.getLogger("llmlb.forward")

# Node failures that make the router try another node.
RETRYABLE_STATUS = frozenset({500, 502, 503, 504})


@dataclass
class UpstreamResult:
    status: int
    content: bytes
    content_type: str
    node_id: str
    headers: dict[str, str] = field(default_factory=dict)  # for the client (queue info)
    attempts: int = 1


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
        """POST ``content`` to ``path`` on a node serving ``model``; retry elsewhere on failure."""
        self.models.ensure_servable(model, flags)
        tried: list[str] = []
        last_error: OpenAIError | None = None
        for attempt in range(1, self.settings.max_retries + 2):
            try:
                lease = await self.balancer.acquire(model, flags, exclude=tried)
            except OpenAIError as exc:
                if last_error is not None and exc.code == "no_capable_nodes":
                    raise last_error from None  # every capable node failed this request
                raise
            tried.append(lease.node.id)
            try:
                result = await self._post(lease, path, content, content_type, extra_headers)
            except OpenAIError as exc:
                last_error = exc
                log.warning("attempt %d on node %s failed: %s", attempt, lease.node.name, exc.message)
                continue
            result.attempts = attempt
            return result
        assert last_error is not None
        raise last_error

    def _node_gone(self, node: NodeState, exc: Exception, cooldown: float) -> NoReturn:
        """Refused or reset: the node is gone. It takes no traffic until it heartbeats again."""
        cause = exc.__cause__ or exc
        node.record_failure(f"unreachable: {type(cause).__name__}", cooldown)
        self.nodes.mark_down(node, f"{type(cause).__name__}: {cause}")
        raise OpenAIError(
            502,
            f"Node '{node.name}' is unreachable: {type(cause).__name__}",
            type="server_error",
            code="upstream_unreachable",
        ) from exc

    async def _post(
        self,
        lease: Lease,
        path: str,
        content: bytes,
        content_type: str,
        extra_headers: Mapping[str, str] | None,
    ) -> UpstreamResult:
        node = lease.node
        headers = {"content-type": content_type}
        if node.token:
            headers["authorization"] = f"Bearer {node.token}"
        if extra_headers:
            headers.update(extra_headers)
        started = time.monotonic()
        ok = False
        outcome = "failed"
        cooldown = self.settings.suspect_cooldown_s
        try:
            response = await self.http.post(node.base_url + path, content=content, headers=headers)
        except httpx.TimeoutException as exc:
            if not is_timeout(exc):
                self._node_gone(node, exc, cooldown)
            node.record_failure(f"timeout: {type(exc).__name__}", cooldown)
            raise OpenAIError(
                504, f"Node '{node.name}' timed out", type="server_error", code="upstream_timeout"
            ) from exc
        except httpx.TransportError as exc:
            self._node_gone(node, exc, cooldown)
        else:
            if response.status_code in RETRYABLE_STATUS:
                node.record_failure(f"HTTP {response.status_code}", cooldown)
                raise _upstream_error(response, node.name)
            ok = True
            outcome = "ok" if response.status_code < 400 else "client_error"
            return UpstreamResult(
                status=response.status_code,
                content=response.content,
                content_type=response.headers.get("content-type", "application/json"),
                node_id=node.id,
                headers=lease.headers(),
            )
        finally:
            elapsed = time.monotonic() - started
            self.metrics.observe_upstream(node.id, outcome, elapsed)
            self.balancer.release(lease, duration_s=elapsed if ok else None)


def _upstream_error(response: httpx.Response, node_name: str) -> OpenAIError:
    """Keep a node's own OpenAI-shaped error when it sent one."""
    message = f"Node '{node_name}' answered HTTP {response.status_code}"
    code = "upstream_error"
    try:
        error = response.json()["error"]
        message = f"{error['message']} (node '{node_name}')"
        code = error.get("code") or code
    except (ValueError, KeyError, TypeError):
        pass
    return OpenAIError(response.status_code, message, type="server_error", code=code)


def get_services(request: Request[Any, Any, Any]) -> RouterServices:
    return request.app.state.llmlb  # type: ignore[no-any-return]
