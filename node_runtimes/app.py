"""The node's Litestar app factory: runtimes' routes behind the router's credential.

A request whose client (the router) goes away is cancelled (:mod:`llmlb_core.server.disconnect`): a
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
from pathlib import Path
from typing import Any

import httpx
import msgspec
from litestar import Litestar, Request, Router, get
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler
from litestar.middleware import DefineMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from llmlb_core.server import access_log
from llmlb_core.server.bodies import check_json_bytes
from llmlb_core.server.credentials import key_from_headers
from llmlb_core.server.disconnect import DisconnectMiddleware
from llmlb_core.server.errors import OpenAIError, exception_handlers
from llmlb_core.server.serving import STOP_WHEN
from llmlb_node.agent import RouterLink
from llmlb_node.plugins import RuntimePluginError, load_runtime_types
from llmlb_node.runtime import Runtime, RuntimeConfigError, RuntimeContext
from llmlb_node.settings import NodeSettings, load_runtime_settings

log = logging.getLogger("llmlb.node")

# Multipart uploads (image + mask, 4 MB each) plus form fields. A runtime's route may set its own
# limit (`request_max_body_size=`), as the stable_diffusion runtime does from its upload settings.
NODE_MAX_BODY_BYTES = 32 * 1024 * 1024


def build_runtimes(settings: NodeSettings, *, extra_plugins: Iterable[object] = ()) -> list[Runtime]:
    """The runtimes to serve: those named with ``--runtime`` (each must have something to
    serve), else every installed one that has something to serve here. Each runtime's settings
    table is converted to its settings type here, once."""
    types = load_runtime_types(extra_plugins)
    requested = settings.runtimes
    unknown = [name for name in requested if name not in types]
    if unknown:
        raise RuntimePluginError(f"unknown runtime(s) {unknown}; installed: {sorted(types)}")
    unused = sorted(set(settings.runtime_settings) - set(types))
    for name in unused:
        log.warning("config: no installed runtime reads [runtime.%s]; ignored", name)
    runtimes: list[Runtime] = []
    for name in requested or list(types):
        runtime_type = types[name]
        table = settings.runtime_settings.get(name, {})
        context = RuntimeContext(
            name=name,
            settings=load_runtime_settings(name, table, runtime_type.settings),
            node_id=settings.id,
            node_name=settings.display_name,
            models_dir=settings.models_path,
            requested=name in requested,
        )
        runtime = runtime_type.factory(context)
        if runtime is not None:
            runtimes.append(runtime)
        elif context.requested:
            raise RuntimeConfigError(
                f"runtime {name} was asked for (--runtime {name}) but has nothing to serve "
                f"(models dir: {settings.models_path})"
            )
        else:
            log.debug("runtime %s has nothing to serve here; not started", name)
    if not runtimes:
        raise RuntimeConfigError(nothing_to_serve(settings.models_path, sorted(types)))
    if not settings.models_path.is_dir() and settings.models_dir != DEFAULT_MODELS_DIR:
        log.warning(
            "models dir %s does not exist (--models-dir); serving %s only",
            settings.models_path,
            ", ".join(r.type_name for r in runtimes),
        )
    return runtimes


DEFAULT_MODELS_DIR = NodeSettings().models_dir


def nothing_to_serve(models_path: Path, installed: list[str]) -> str:
    """Why a node has nothing to serve, and what to do (one line): model folders for the
    built-in runtimes, a server to front, or a runtime named with ``--runtime NAME``, such as
    one that needs no files (``installed``: the runtime types the node tried)."""
    demo = f"`llmlb demo-model {models_path / 'demo'}` writes a small one"
    if not models_path.is_dir():
        where = f"the models dir {models_path} does not exist (--models-dir: one folder per model; {demo})"
    else:
        where = f"no model folder in {models_path} (--models-dir: one folder per model; {demo})"
    return (
        f"this node has nothing to serve: {where}, no server to front (--upstream URL), "
        f"and no runtime asked for (--runtime NAME; installed: {', '.join(installed)})"
    )


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


# The scope key of a request's :class:`_Job` (Litestar hands a handler a copy of the scope:
# the object is shared, a key set on the copy would not be).
_JOB = "llmlb_node.job"


class _Job:
    """One request on a runtime's routes: counted once it passed the guards, until it ends."""

    runtime: Runtime | None = None

    def start(self, runtime: Runtime) -> None:
        self.runtime = runtime
        runtime.active_jobs += 1

    def end(self) -> None:
        if self.runtime is not None:
            self.runtime.active_jobs -= 1
            self.runtime = None


class _Model(msgspec.Struct):
    """The ``model`` of a JSON body; every other member is skipped."""

    model: Any = None


_model_decoder = msgspec.json.Decoder(_Model)


def requested_model(body: bytes) -> str | None:
    """The ``"model"`` string of a JSON object body; None when there is none (or the body is
    not such an object: the handler's own decoding says what is wrong with it)."""
    try:
        check_json_bytes(body)
        model = _model_decoder.decode(body).model
    except (OpenAIError, msgspec.DecodeError, RecursionError):
        return None
    return model if isinstance(model, str) else None


def _job_guard(runtime: Runtime) -> Any:
    """After the router's credential: refuse a JSON request for a model ``runtime`` does not
    advertise (when it asks for that), then count the request as one of its jobs (the
    :class:`_Job` that :class:`_JobCount` put in its scope, and ends)."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        if (
            runtime.refuse_unknown_models
            and isinstance(connection, Request)
            and connection.content_type[0] == "application/json"
        ):
            model = requested_model(await connection.body())  # kept for the handler
            if model is not None and model not in {m.id for m in runtime.models()}:
                raise OpenAIError(
                    404,
                    f"The model '{model}' does not exist on this node",
                    param="model",
                    code="model_not_found",
                )
        job = connection.scope.get(_JOB)  # type: ignore[misc]
        if isinstance(job, _Job):
            job.start(runtime)

    return guard


class _JobCount:
    """ASGI middleware around a runtime's routes: a request that :func:`_job_guard` counted is
    uncounted when its answer is over (sent in full, streams included, or abandoned). It holds
    no runtime (Litestar copies a middleware's arguments): the guard tells the request's job."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        job = _Job()
        scope[_JOB] = job  # type: ignore[literal-required]
        try:
            await self.app(scope, receive, send)
        finally:
            job.end()


def create_node_app(
    settings: NodeSettings,
    *,
    runtimes: list[Runtime] | None = None,
    extra_plugins: Iterable[object] = (),
    register: bool = True,
    router_transport: httpx.AsyncBaseTransport | None = None,
) -> Litestar:
    """The node's app: its runtimes' routes behind the router's credential, ``/health``, and the
    link that registers with the router and heartbeats while the app runs (``register``).
    ``router_transport`` is for tests only: what the link sends through instead of the network
    (:mod:`llmlb_core.testing`: the router's ASGI app)."""
    runtimes = runtimes if runtimes is not None else build_runtimes(settings, extra_plugins=extra_plugins)
    token = secrets.token_urlsafe(32)
    link = RouterLink(settings, runtimes, token, transport=router_transport)

    @get("/health")
    async def health() -> dict[str, Any]:
        loads = [r.load() for r in runtimes]
        return {
            "status": "draining" if link.draining else "ok",
            "node_id": settings.id,
            "registered": link.registered.is_set(),
            # The router the node is registered with (or trying, while "registered" is false).
            "router": link.router_url,
            "runtimes": [r.type_name for r in runtimes],
            "active_jobs": sum(load.active_jobs for load in loads),
            "loaded_models": [m for load in loads for m in load.loaded_models],
            "runtime_status": {r.type_name: status for r in runtimes if (status := r.status())},
        }

    # One router per runtime: the router's credential, then the core's model check and job count.
    credential = _router_credential_guard(token)
    guarded = [
        Router(
            path="/",
            route_handlers=handlers,
            guards=[credential, _job_guard(runtime)],
            middleware=[_JobCount],
        )
        for runtime in runtimes
        if (handlers := runtime.routes())
    ]

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
        route_handlers=[health, *guarded],
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

    access_log.install(app)  # the request log, with the router's request id (outside routing)
    app.state.node_drain = drain
    # Why the node must stop (the router refused its key), polled by llmlb_core.server.serving.run.
    app.state[STOP_WHEN] = lambda: link.fatal
    app.state.node_link = link
    app.state.node_runtimes = runtimes
    app.state.node_token = token
    return app
