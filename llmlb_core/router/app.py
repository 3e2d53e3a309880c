"""The router's Litestar app factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable
from typing import Any

import httpx
from litestar import Litestar, Router, get
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath
from litestar.types import ControllerRouterHandler

from llmlb_core.capability import Capability, CapabilityContext, SharedBlobs
from llmlb_core.config.settings import RouterSettings, load_plugin_settings
from llmlb_core.plugins import LoadedPlugins, PluginError, load_plugins
from llmlb_core.router.admin_routes import admin_router
from llmlb_core.router.auth import KeyManager, check_model_access, require_scope, visible_models
from llmlb_core.router.balancer import Balancer
from llmlb_core.router.endpoints import EndpointManager, endpoints_router
from llmlb_core.router.forwarding import Forwarder
from llmlb_core.router.metrics import Metrics
from llmlb_core.router.models import Describer, ModelObject, ModelRegistry
from llmlb_core.router.node_routes import node_router
from llmlb_core.router.nodes import NodeRegistry
from llmlb_core.router.replicas import Replicas
from llmlb_core.router.state import RouterState
from llmlb_core.server import access_log
from llmlb_core.server.credentials import check_admin_key
from llmlb_core.server.disconnect import DisconnectMiddleware
from llmlb_core.server.errors import exception_handlers
from llmlb_core.server.openapi_docs import openapi_config
from llmlb_core.server.tls import client_ssl_context
from llmlb_core.shared.link import RedisLink, check_redis_url
from llmlb_core.shared.slots import SharedSlots
from llmlb_core.storage.backends import open_shared, open_target
from llmlb_core.storage.secretbox import protect_endpoint_keys
from llmlb_core.storage.urls import parse_database_url
from llmlb_core.upstream.client import upstream_client

log = logging.getLogger("llmlb.router")

SWEEP_INTERVAL_S = 0.5


def core_routes(state: RouterState) -> list[ControllerRouterHandler]:
    """The router's own routes (health, models, metrics, admin, nodes, endpoints), each a closure
    over the objects it needs: what capabilities' ``build_routes`` are to a capability."""
    keys = state.keys

    @get("/v1/models")
    async def list_models() -> dict[str, Any]:
        models = state.models.list(state.enabled_flags)
        allowed = visible_models(m.id for m in models)  # a key limited to some models sees those
        return {
            "object": "list",
            "data": models if allowed is None else [m for m in models if m.id in allowed],
        }

    @get("/v1/models/{model_id:path}")
    async def get_model(model_id: FromPath[str]) -> ModelObject:
        check_model_access(model_id.lstrip("/"))
        return state.models.get(model_id.lstrip("/"), state.enabled_flags)

    @get("/metrics", media_type="text/plain; version=0.0.4")  # Litestar adds "; charset=utf-8"
    async def metrics() -> bytes:
        return state.metrics.exposition()

    @get("/health", exclude_from_auth=True)
    async def health() -> dict[str, Any]:
        replicas = state.replicas
        shared = {} if replicas is None else {"shared_state": "up" if replicas.link.up else "down"}
        return {
            "status": "ok",
            "nodes_online": len(state.nodes.online()),
            "nodes_total": len(state.nodes.all()),
            "capabilities": state.plugins.enabled,
            **shared,
        }

    metrics_guards = [] if state.settings.metrics_public else [require_scope("admin", keys)]
    return [
        health,
        Router(path="/", route_handlers=[metrics], guards=metrics_guards),
        Router(path="/", route_handlers=[list_models, get_model], guards=[require_scope("api", keys)]),
        admin_router(state),
        node_router(state),
        endpoints_router(state.endpoints, keys),
    ]


def _contexts(
    plugins: LoadedPlugins,
    settings: RouterSettings,
    forward: Forwarder,
    models: ModelRegistry,
    shared: SharedBlobs | None = None,
) -> list[tuple[Capability[Any], CapabilityContext[Any]]]:
    """One context per enabled capability, its ``[plugin.<name>]`` table parsed once."""
    unused = sorted(set(settings.plugin) - set(plugins.capabilities))
    for name in unused:
        log.warning("config: no installed capability reads [plugin.%s]; ignored", name)
    out = []
    for name in plugins.enabled:
        capability = plugins.capabilities[name]
        data_dir = settings.data_path / name
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        context = CapabilityContext(
            name=name,
            settings=load_plugin_settings(name, settings.plugin_settings(name), capability.settings),
            data_dir=data_dir,
            public_url=settings.base_url,
            forward=forward,
            models=models,
            shared=shared,
        )
        out.append((capability, context))
    return out


def create_app(
    settings: RouterSettings,
    *,
    extra_plugins: Iterable[object] = (),
    upstream_transport: httpx.AsyncBaseTransport | None = None,
) -> Litestar:
    """Build the router: stores, registries, plugins, routes. Nothing listens yet.

    ``upstream_transport`` is for tests only: what the router's one upstream client (to nodes
    and endpoints) sends through instead of the network, e.g. :mod:`llmlb_core.testing`'s
    in-process ASGI transport. None (production) keeps the checked aiohttp transport."""
    check_admin_key(settings.admin_key)  # before anything is written
    database = parse_database_url(settings.database_url, settings.data_path)  # a bad URL: refused now
    if settings.redis_url:
        check_redis_url(settings.redis_url)
    elif database.kind == "postgresql":
        log.warning(
            "database_url is PostgreSQL but redis_url is unset: this router shares keys, nodes and "
            "models with others on that database, not live state (nodes registered elsewhere, "
            "slots, revocations); run several routers with redis_url set too (docs/scaling.md)"
        )
    plugins = load_plugins(
        settings.capabilities, extra_plugins=extra_plugins, third_party=settings.load_entry_points
    )
    settings.data_path.mkdir(mode=0o700, parents=True, exist_ok=True)
    ssl_context = client_ssl_context(settings.node_ca_bundle)  # a bad bundle: refuse to start
    store = open_target(database)  # SQLite in data_dir (the default), or PostgreSQL
    try:
        protect_endpoint_keys(store, settings.secret_key)
    except BaseException:
        store.close()
        raise
    shared = open_shared(database, store)  # PostgreSQL: values every router sees; SQLite: None
    keys = KeyManager(store)
    generated = keys.ensure_admin_key(settings.admin_key)
    if generated:
        # Printed once, at first start; only its hash is stored.
        print(
            f"\n  llmlb: first start - admin API key (shown once, store it now):\n  {generated}\n", flush=True
        )
    nodes = NodeRegistry(store, timeout_s=settings.node_timeout_s)
    models = ModelRegistry(store, nodes)
    models.describe_with(
        [
            Describer(name, capability.model_flags, capability.describe_model)
            for name, capability in ((n, plugins.capabilities[n]) for n in plugins.enabled)
            if capability.describe_model is not None
        ]
    )
    link = RedisLink(settings.redis_url) if settings.redis_url else None
    shared_slots = SharedSlots(link) if link is not None else None
    balancer = Balancer(
        nodes, queue_max=settings.queue_max, queue_timeout_s=settings.queue_timeout_s, shared=shared_slots
    )
    http = upstream_client(
        connect_timeout_s=settings.upstream_connect_timeout_s,
        read_timeout_s=settings.upstream_timeout_s,
        ssl_context=ssl_context,
        transport=upstream_transport,
    )
    metrics_ = Metrics(nodes, balancer)
    forward = Forwarder(
        settings=settings, models=models, nodes=nodes, balancer=balancer, http=http, metrics=metrics_
    )
    state = RouterState(
        settings=settings,
        store=store,
        keys=keys,
        nodes=nodes,
        models=models,
        balancer=balancer,
        plugins=plugins,
        http=http,
        metrics=metrics_,
        forward=forward,
        endpoints=EndpointManager(settings=settings, store=store, nodes=nodes, http=http, plugins=plugins),
    )

    replicas = None
    if link is not None and shared_slots is not None:
        replicas = Replicas(
            link,
            shared_slots,
            nodes=nodes,
            keys=keys,
            models=models,
            endpoints=state.endpoints,
            balancer=balancer,
            box=store.endpoint_box,
        )
    state.replicas = replicas

    contexts = _contexts(plugins, settings, forward, models, shared)
    capability_routers = []
    for capability, context in contexts:
        handlers = list(capability.build_routes(context))
        for handler in handlers:
            if not isinstance(handler, BaseRouteHandler):
                raise PluginError(f"{capability.name}: {handler!r} is not a Litestar route handler")
        if handlers:
            capability_routers.append(
                Router(path="/", route_handlers=handlers, guards=[require_scope("api", keys)])
            )

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async def sweep() -> None:
            while True:
                await asyncio.sleep(SWEEP_INTERVAL_S)
                nodes.sweep()

        sweeper = asyncio.create_task(sweep(), name="llmlb-node-sweep")
        if replicas is not None:
            await replicas.start()
        state.endpoints.start()
        if shared is not None:
            await shared.start_purging()
        for _, context in contexts:
            for callback in context._startup:
                await callback()
        log.info("router ready on %s (capabilities: %s)", settings.base_url, plugins.enabled)
        try:
            yield
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            await state.endpoints.stop()
            for _, context in reversed(contexts):
                for callback in reversed(context._shutdown):
                    await callback()
            if replicas is not None:
                await replicas.stop()
            if shared is not None:
                await shared.stop_purging()
            await http.aclose()
            store.close()

    app = Litestar(
        route_handlers=[*core_routes(state), *capability_routers],
        # The request log (id, log line, metrics) wraps the whole app: access_log.install below.
        middleware=[DisconnectMiddleware],
        exception_handlers=exception_handlers(),
        lifespan=[lifespan],
        request_max_body_size=settings.max_body_bytes,
        openapi_config=openapi_config("llmlb router"),
        logging_config=None,
    )
    access_log.install(app, observe=metrics_.observe_request)  # outside routing: 404s logged too
    return app
