"""The router's own objects, for the core's handlers (admin, node and model routes).

Capability plugins never see this: they get a :class:`llmlb_core.capability.CapabilityContext`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from litestar import Request

from llmlb_core.auth import KeyManager
from llmlb_core.balancer import Balancer
from llmlb_core.forwarding import Forwarder
from llmlb_core.metrics import Metrics
from llmlb_core.models import ModelRegistry
from llmlb_core.nodes import NodeRegistry
from llmlb_core.plugins import LoadedPlugins
from llmlb_core.settings import RouterSettings
from llmlb_core.store import Store

if TYPE_CHECKING:
    from llmlb_core.endpoints import EndpointManager


@dataclass
class RouterState:
    settings: RouterSettings
    store: Store
    keys: KeyManager
    nodes: NodeRegistry
    models: ModelRegistry
    balancer: Balancer
    plugins: LoadedPlugins
    http: httpx.AsyncClient
    metrics: Metrics
    forward: Forwarder
    endpoints: EndpointManager

    @property
    def enabled_flags(self) -> frozenset[str]:
        return self.plugins.enabled_flags


def router_state(request: Request[Any, Any, Any]) -> RouterState:
    return request.app.state.llmlb  # type: ignore[no-any-return]
