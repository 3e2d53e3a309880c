"""The router's own objects, which the core's route builders close over (admin, node and model
routes: :func:`llmlb_core.router.app.core_routes`).

Capability plugins never see this: they get a :class:`llmlb_core.capability.CapabilityContext`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx

from llmlb_core.config.settings import RouterSettings
from llmlb_core.plugins import LoadedPlugins
from llmlb_core.router.auth import KeyManager
from llmlb_core.router.balancer import Balancer
from llmlb_core.router.endpoints import EndpointManager
from llmlb_core.router.forwarding import Forwarder
from llmlb_core.router.metrics import Metrics
from llmlb_core.router.models import ModelRegistry
from llmlb_core.router.nodes import NodeRegistry
from llmlb_core.router.replicas import Replicas
from llmlb_core.storage.sql import SqlStore


@dataclass
class RouterState:
    settings: RouterSettings
    store: SqlStore
    keys: KeyManager
    nodes: NodeRegistry
    models: ModelRegistry
    balancer: Balancer
    plugins: LoadedPlugins
    http: httpx.AsyncClient
    metrics: Metrics
    forward: Forwarder
    endpoints: EndpointManager
    replicas: Replicas | None = field(default=None)  # several routers: redis_url

    @property
    def enabled_flags(self) -> frozenset[str]:
        return self.plugins.enabled_flags
