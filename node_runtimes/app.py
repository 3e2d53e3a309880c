"""The node's Litestar app factory: runtimes' routes behind the router's credential.

A request whose client (the router) goes away is cancelled (:mod:`llmlb_core.disconnect`): a
job that waits for its runtime leaves the queue, a running one stops where its runtime can stop
it. When it has ended, the node heartbeats at once, so the router, which keeps counting the slot
of a job it gave up on until the node reports it gone, gets it back within milliseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
from collections.abc import AsyncIterator, Iterable
from typing import Any

from litestar import Litestar, Router, get
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.middleware import DefineMiddleware

from llmlb_core.auth import key_from_headers
from llmlb_core.disconnect import DisconnectMiddleware
from llmlb_core.errors import OpenAIError, exception_handlers
from llmlb_node.agent import RouterLink
from llmlb_node.plugins import RuntimePluginError, load_runtime_types
from llmlb_node.runtime import Runtime
from llmlb_node.settings import NodeSettings

log = logging.getLogger("llmlb.node")

# Multipart uploads (image + mask, 4 MB each) plus form fields.
NODE_MAX_BODY_BYTES = 32 * 1024 * 1024


def build_runtimes(settings: NodeSettings, *, extra_plugins: Iterable[object] = ()) -> list[Runtime]:
    types = load_runtime_types(extra_plugins)
    wanted = settings.runtimes or list(types)
    unknown = [name for name in wanted if name not in types]
    if unknown:
        raise RuntimePluginError(f"unknown runtime(s) {unknown}; installed: {sorted(types)}")
    runtimes: list[Runtime] = []
    for name in wanted:
        runtime = types[name].factory(settings)
        if runtime is None:
            log.info("runtime %s has nothing to serve here; not started", name)
            continue
        runtimes.append(runtime)
    if not runtimes:
        log.warning("no runtime has anything to serve (models dir: %s)", settings.models_path)
    return runtimes


def _router_credential_guard(token: str) -> Any:
    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        presented = key_from_headers(connection.headers) or ""
        if not hmac.compare_digest(presented.encode(), token.encode()):
            raise OpenAIError(
                401,
                "This node serves only its router; send requests to the router.",
                code="invalid_node_credential",
            )

    return guard


def create_node_app(
    settings: NodeSettings,
    *,
    runtimes: list[Runtime] | None = None,
    extra_plugins: Iterable[object] = (),
    register: bool = True,
) -> Litestar:
    runtimes = runtimes if runtimes is not None else build_runtimes(settings, extra_plugins=extra_plugins)
    token = secrets.token_urlsafe(32)
    link = RouterLink(settings, runtimes, token)

    @get("/health")
    async def health() -> dict[str, Any]:
        loads = [r.load() for r in runtimes]
        return {
            "status": "draining" if link.draining else "ok",
            "node_id": settings.id,
            "registered": link.registered.is_set(),
            "runtimes": [r.type_name for r in runtimes],
            "active_jobs": sum(load.active_jobs for load in loads),
            "loaded_models": [m for load in loads for m in load.loaded_models],
        }

    handlers = [h for r in runtimes for h in r.routes()]
    guarded = Router(path="/", route_handlers=handlers, guards=[_router_credential_guard(token)])

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        for runtime in runtimes:
            await runtime.start()
        if register:
            link.start()
        try:
            yield
        finally:
            await link.stop(deregister=register)
            for runtime in runtimes:
                await runtime.stop()

    app = Litestar(
        route_handlers=[health, guarded] if handlers else [health],
        exception_handlers=exception_handlers(),
        middleware=[DefineMiddleware(DisconnectMiddleware, on_abandoned=link.beat_now)],
        lifespan=[lifespan],
        request_max_body_size=NODE_MAX_BODY_BYTES,
        openapi_config=None,
        logging_config=None,
    )

    async def drain(poll_s: float = 0.1) -> None:
        """Stop taking work (router told), then wait until every runtime is idle."""
        await link.drain()
        while any(r.load().active_jobs or r.load().queued_jobs for r in runtimes):  # noqa: ASYNC110
            await asyncio.sleep(poll_s)
        log.info("drained: no job left")

    app.state.node_drain = drain
    app.state.node_link = link
    app.state.node_runtimes = runtimes
    app.state.node_token = token
    return app
