"""The request log: one line per HTTP request (logger ``llmlb.access``), on the router and the node.

:class:`RequestLogMiddleware` wraps the whole app (:func:`install`), outside Litestar's routing,
so that a request for an unknown path or with a wrong method is logged too. For each request it
takes or makes the request id (:mod:`llmlb_core.server.request_id`), starts a :class:`RequestRecord`
kept in a context variable (:func:`current_request`) that the code handling the request fills
in (the router's forwarder: the model, the node, the time spent in the wait queue; a capability:
images generated, generation time and steps, through :func:`note_request`), counts the bytes in
and out, and at the end logs one line and hands the record to ``observe`` (the router's metrics).
It also says ``x-content-type-options: nosniff`` on every response (:data:`NOSNIFF`), so no
browser runs an answer as something other than its declared type (an image as a page).

A line, as text: ``POST /v1/images/generations 200 2.345s model=sd node=gpu-1 queue=0.120s
in=312 out=1523401 images=1 gen=2.101s steps=20 id=req_...``. With ``log_format = "json"`` the
same fields are keys of the JSON object (:mod:`llmlb_core.server.log_format`). ``route`` is the
handler's full path template (``/v0/nodes/{node_id}``), or the raw path when no route matched.

Requests that pollers and nodes send all the time (:data:`QUIET_ROUTES`, and routes whose
handler has ``opt={QUIET_LOG_OPT: True}``) are logged at DEBUG when they succeed; every other
request, and every failed one, at INFO.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from llmlb_core.server import request_id as ids
from llmlb_core.server.log_format import log_field

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send

log = logging.getLogger("llmlb.access")

# A route handler with this key set in its ``opt`` is logged at DEBUG when it succeeds.
QUIET_LOG_OPT = "llmlb_quiet_log"
# Polled all the time (health checks, scrapes, node heartbeats): DEBUG when they succeed.
QUIET_ROUTES = frozenset({"/health", "/metrics", "/v0/nodes/heartbeat"})
# A path that matched no route is logged as sent, cut to this length.
MAX_PATH_CHARS = 200
# On every response: a browser takes the declared content type as it is (never sniffs a page
# out of an image or a JSON body). Routes need not set it; set here once, it is never repeated.
NOSNIFF = (b"x-content-type-options", b"nosniff")

_record: ContextVar[RequestRecord | None] = ContextVar("llmlb_request_record", default=None)


@dataclass(eq=False, slots=True)
class RequestRecord:
    """What the request log says about one request; filled in while it is handled."""

    request_id: str
    method: str
    route: str = ""
    matched: bool = True  # a route handled it (``route`` is its template, else the raw path)
    status: int = 0
    model: str | None = None
    nodes: list[str] = field(default_factory=list)  # the nodes that answered (names)
    failed: list[str] = field(default_factory=list)  # nodes that failed it (tried elsewhere)
    queue_wait_s: float = 0.0  # the longest wait for a slot (parts of a job wait side by side)
    bytes_in: int = 0
    bytes_out: int = 0
    duration_s: float = 0.0
    images: int = 0
    generation_s: float = 0.0  # the nodes' time generating (sum over parts)
    steps: int = 0  # sampling steps run for it (sum over images and parts)
    extra: dict[str, str | int | float | bool] = field(default_factory=dict)

    def add_node(self, name: str, *, failed: bool = False) -> None:
        names = self.failed if failed else self.nodes
        if name not in names:
            names.append(name)

    def waited(self, seconds: float) -> None:
        self.queue_wait_s = max(self.queue_wait_s, seconds)

    def fields(self) -> dict[str, Any]:
        """The record as the JSON log line's keys (what is unknown or zero left out)."""
        out: dict[str, Any] = {
            "request_id": self.request_id,
            "method": self.method,
            "route": self.route,
            "status": self.status,
            "duration_s": round(self.duration_s, 6),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }
        if self.model is not None:
            out["model"] = self.model
        if self.nodes:
            out["node"] = ",".join(self.nodes)
        if self.failed:
            out["failed_nodes"] = ",".join(self.failed)
        if self.queue_wait_s:
            out["queue_wait_s"] = round(self.queue_wait_s, 6)
        if self.images:
            out["images"] = self.images
        if self.generation_s:
            out["generation_s"] = round(self.generation_s, 6)
        if self.steps:
            out["steps"] = self.steps
        out.update(self.extra)
        return out

    def line(self) -> str:
        """The record as one text line (see the module doc); every value that came from outside
        (method, path, model, node names, extras, id) passes :func:`log_field`."""
        parts = [log_field(self.method), log_field(self.route), str(self.status), f"{self.duration_s:.3f}s"]
        if self.model is not None:
            parts.append(f"model={log_field(self.model)}")
        if self.nodes:
            parts.append(f"node={log_field(','.join(self.nodes))}")
        if self.failed:
            parts.append(f"failed={log_field(','.join(self.failed))}")
        if self.queue_wait_s:
            parts.append(f"queue={self.queue_wait_s:.3f}s")
        parts.append(f"in={self.bytes_in} out={self.bytes_out}")
        if self.images:
            parts.append(f"images={self.images}")
        if self.generation_s:
            parts.append(f"gen={self.generation_s:.3f}s")
        if self.steps:
            parts.append(f"steps={self.steps}")
        parts.extend(f"{log_field(key)}={log_field(value)}" for key, value in self.extra.items())
        parts.append(f"id={log_field(self.request_id)}")
        return " ".join(parts)


def current_request() -> RequestRecord | None:
    """The record of the request being handled (None outside a request)."""
    return _record.get()


def note_request(
    *, images: int = 0, generation_s: float = 0.0, steps: int = 0, **extra: str | int | float | bool
) -> None:
    """Add to the current request's log line and metrics (nothing outside a request).

    ``images``, ``generation_s`` and ``steps`` add up over calls (a job split over nodes);
    ``extra`` fields (a short name and a plain value each) are set as given and appear in the
    log line only (metrics labels must stay bounded)."""
    record = _record.get()
    if record is None:
        return
    record.images += images
    record.generation_s += generation_s
    record.steps += steps
    record.extra.update(extra)


def route_of(scope: Scope) -> str | None:
    """The full path template of the route that handled the request (None: no route matched)."""
    template = scope.get("path_template")
    return template if isinstance(template, str) and template else None


def _quiet(scope: Scope, route: str, quiet_routes: Collection[str]) -> bool:
    if route in quiet_routes:
        return True
    handler = scope.get("route_handler")
    return bool(handler is not None and handler.opt.get(QUIET_LOG_OPT))


class RequestLogMiddleware:
    """ASGI middleware: request id, :class:`RequestRecord`, one log line (see the module doc).

    ``observe(record)`` runs once the request is done (the router's metrics)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        observe: Callable[[RequestRecord], None] | None = None,
        quiet_routes: Collection[str] = QUIET_ROUTES,
    ) -> None:
        self.app = app
        self._observe = observe
        self._quiet_routes = quiet_routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = ids.from_scope(scope)
        record = RequestRecord(request_id, cast("HTTPScope", scope)["method"])

        async def counting_receive() -> Any:
            message = await receive()
            if message["type"] == "http.request":
                record.bytes_in += len(message.get("body", b""))
            return message

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.body":
                record.bytes_out += len(message.get("body", b""))
            elif message["type"] == "http.response.start":
                record.status = message["status"]
                ids.echo(message, request_id, NOSNIFF)
            await send(message)

        id_token = ids.bind(request_id)
        record_token = _record.set(record)
        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            _record.reset(record_token)
            ids.unbind(id_token)
            self._done(scope, record, started)

    def _done(self, scope: Scope, record: RequestRecord, started: float) -> None:
        record.duration_s = time.perf_counter() - started
        if not record.status:
            record.status = 500  # the app raised before it answered (the server answers 500)
        route = route_of(scope)
        if route is None:
            raw = scope.get("raw_path") or scope["path"].encode()
            route = raw.decode("latin-1").partition("?")[0][:MAX_PATH_CHARS]
            record.matched = quiet = False
        else:
            quiet = record.status < 400 and _quiet(scope, route, self._quiet_routes)
        record.route = route
        if self._observe is not None:
            self._observe(record)
        level = logging.DEBUG if quiet else logging.INFO
        if log.isEnabledFor(level):
            # The record itself rides along: a JSON formatter takes its fields(), text needs none.
            log.log(level, record.line(), extra={"access": record, "request_id": record.request_id})


def install(app: Litestar, *, observe: Callable[[RequestRecord], None] | None = None) -> None:
    """Wrap ``app`` (router or node) in the request log, outside its routing: every request is
    logged, also one for an unknown path or with a wrong method, which no Litestar middleware
    sees (``middleware=`` runs per route). Litestar wraps ``asgi_handler`` the same way for its
    own app-wide layers (CORS, OpenTelemetry); call this after the last ``app.register``."""
    app.asgi_handler = RequestLogMiddleware(app.asgi_handler, observe=observe)
