"""OpenAI-compatible endpoints an admin registers with the router (``/v0/endpoints``).

An endpoint is a server the router forwards to directly, without an llmlb node in front of it:
llama.cpp's server, vLLM, Ollama, a whisper.cpp server, or any other OpenAI-compatible server
(kind ``generic``). The admin gives its URL, an optional upstream API key, its kind and,
optionally, which models to serve and their capability flags.

- The router checks each endpoint every ``endpoint_check_interval_s`` with
  ``GET {url}/v1/models`` and learns its models (see :mod:`llmlb_core.upstream.openai_servers` for how
  their capability flags are chosen).
- An endpoint is an ordinary member of the :class:`~llmlb_core.router.nodes.NodeRegistry` with id
  ``endpoint:<name>``: its first successful check registers it (its credential is the upstream
  key, possibly empty), every later success is its heartbeat. So the balancer, the wait queue,
  retries on another node, ``/v1/models`` and ``/v0/nodes`` treat it like a node. Failing
  checks stop the heartbeats: after ``node_timeout_s`` the endpoint is offline (and at once
  when a request finds it refusing connections). A check that times out while the router has
  requests in flight on the endpoint counts as alive (a busy llama-cpp-python server answers
  ``/v1/models`` only between generations).
- Endpoints are kept in SQLite with their upstream key, because the router needs it after a
  restart, encrypted with ``secret_key`` when it is set (the store seals and opens it, see
  :mod:`llmlb_core.storage.secretbox`). No API returns the key (only ``has_api_key``) and nothing logs it.
- Name, URL and key are checked before anything is saved: a control character (CR/LF) in the
  key would end up in a header. A stored record that fails these checks (written by an older
  version) is skipped at start-up with one warning that says to delete it and add it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import quote

import httpx
import msgspec
from litestar import Request, Router, delete, get, post
from litestar.params import FromPath

from llmlb_core.config.settings import RouterSettings
from llmlb_core.plugins import LoadedPlugins
from llmlb_core.protocol import (
    PLAIN_TEXT_PATTERN,
    Heartbeat,
    ModelAdvert,
    ModelId,
    NodeName,
    NodeRegistration,
    Token,
)
from llmlb_core.router.advert_limits import AdvertLimits
from llmlb_core.router.auth import KeyManager, require_scope
from llmlb_core.router.flag_rules import FlagRules
from llmlb_core.router.nodes import ENDPOINT_ID_PREFIX, NodeRegistry
from llmlb_core.server.bodies import decode_json
from llmlb_core.server.errors import OpenAIError
from llmlb_core.server.log_format import log_field, log_list
from llmlb_core.server.openapi_docs import openapi_json_body
from llmlb_core.storage.interfaces import EndpointStore
from llmlb_core.upstream.openai_servers import (
    Kind,
    ModelListTimeout,
    UpstreamError,
    build_adverts,
    fetch_model_ids,
    normalize_url,
)

log = logging.getLogger("llmlb.endpoints")

_URL_RE = re.compile(r"^https?://[^/\s@]+(/[^\s]*)?$")

EndpointName = NodeName
EndpointUrl = Annotated[str, msgspec.Meta(min_length=1, max_length=2048, pattern=PLAIN_TEXT_PATTERN)]
# Sent as `Authorization: Bearer <api_key>`: printable ASCII only.
UpstreamKey = Annotated[str, msgspec.Meta(max_length=4096, pattern=r"^[ -~]*\Z")]


class CreateEndpointRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: EndpointName
    # Base URL of the server, with or without a trailing /v1.
    url: EndpointUrl
    # Sent upstream as `Authorization: Bearer <api_key>`; never shown again.
    api_key: UpstreamKey | None = None
    kind: Kind = "generic"
    # Capability flags of every model of this endpoint (default: what the enabled capabilities
    # give a model of this kind and id, see llmlb_core.upstream.openai_servers).
    capabilities: list[Token] | None = None
    # Flags of single models; wins over `capabilities`.
    model_capabilities: dict[ModelId, list[Token]] = msgspec.field(default_factory=dict)
    # Models to serve: a filter on what GET /v1/models lists, or the list itself when the
    # server has no /v1/models (e.g. whisper.cpp's server).
    models: list[ModelId] | None = None
    # Requests the router sends to it at once (more wait in the router's queue).
    slots: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 4


class EndpointRecord(msgspec.Struct, kw_only=True):
    """What is stored (the upstream key included), checked again when read back."""

    name: EndpointName
    url: EndpointUrl
    api_key: UpstreamKey = ""
    kind: str = "generic"
    capabilities: list[str] | None = None
    model_capabilities: dict[str, list[str]] = msgspec.field(default_factory=dict)
    models: list[str] | None = None
    slots: int = 4
    created_at: float = 0.0


class EndpointView(msgspec.Struct, kw_only=True):
    """What ``/v0/endpoints`` shows (never the upstream key)."""

    name: str
    node_id: str
    url: str
    kind: str
    has_api_key: bool
    capabilities: list[str] | None
    model_capabilities: dict[str, list[str]]
    models: list[str] | None
    slots: int
    created_at: float
    status: str  # online | offline | unchecked
    served_models: list[ModelAdvert]
    inflight: int
    last_check_at: float | None
    last_ok_at: float | None
    last_error: str | None


class _Health(msgspec.Struct, kw_only=True):
    last_check_at: float | None = None
    last_ok_at: float | None = None
    last_error: str | None = None
    left_out: list[str] = msgspec.field(default_factory=list)  # models not served, and why


def node_id_of(name: str) -> str:
    return ENDPOINT_ID_PREFIX + name


class EndpointManager:
    """Registered endpoints, their health checks, and their place in the node registry."""

    def __init__(
        self,
        *,
        settings: RouterSettings,
        store: EndpointStore,
        nodes: NodeRegistry,
        http: httpx.AsyncClient,
        plugins: LoadedPlugins,
    ) -> None:
        self._store = store
        self._nodes = nodes
        self._http = http
        self._plugins = plugins
        self._flags = FlagRules(plugins)
        self._limits = AdvertLimits.of(settings)
        self._cooldown_s = settings.suspect_cooldown_s
        self.interval_s = settings.endpoint_check_interval_s
        self.timeout_s = min(10.0, max(2.0, self.interval_s))
        self._records: dict[str, EndpointRecord] = {}
        self._health: dict[str, _Health] = {}
        self._task: asyncio.Task[None] | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        # Called after every change made here (several routers: the others reload).
        self.on_change: Callable[[], None] | None = None
        self._records = self._load()

    def _load(self) -> dict[str, EndpointRecord]:
        records = {}
        for name, record, created_at in self._store.list_endpoints():
            try:
                records[name] = msgspec.convert({**record, "created_at": created_at}, EndpointRecord)
            except msgspec.ValidationError as exc:
                log.warning(
                    "skipping stored endpoint %r: %s. Delete it (DELETE /v0/endpoints/%s) and add it again.",
                    name,
                    exc,
                    quote(name, safe=""),
                )
        return records

    async def reload(self) -> None:
        """Re-read the endpoint list (another router changed it) and check the new ones."""
        records = self._load()
        for name in set(self._records) - set(records):
            self._health.pop(name, None)
            self._nodes.release(node_id_of(name))
        added = [name for name in records if records[name] != self._records.get(name)]
        self._records = records
        for name in added:
            await self.check(name)

    # --- lifecycle ----------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="llmlb-endpoint-checks")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.check_all()
            except Exception:  # a bug here must not stop the checks for good
                log.exception("endpoint checks failed")
            await asyncio.sleep(self.interval_s)

    # --- admin --------------------------------------------------------------------------
    def create(self, body: CreateEndpointRequest) -> EndpointRecord:
        if body.name in self._records:
            raise OpenAIError(409, f"An endpoint named '{body.name}' exists; delete it first", param="name")
        url = normalize_url(body.url)
        if not _URL_RE.match(url):
            raise OpenAIError(
                400,
                "url must be an http(s) URL without credentials (put the key in 'api_key')",
                param="url",
                code="invalid_url",
            )
        known = self._plugins.known_flags
        declared = [*(body.capabilities or []), *(f for fl in body.model_capabilities.values() for f in fl)]
        unknown = self._flags.unknown(declared)
        if unknown or body.capabilities == []:
            raise OpenAIError(
                400,
                f"capabilities must be non-empty lists of {sorted(known)}; unknown: {unknown}",
                param="capabilities",
            )
        record = EndpointRecord(
            name=body.name,
            url=url,
            api_key=body.api_key or "",
            kind=body.kind,
            capabilities=self._flags.expand(body.capabilities) if body.capabilities else None,
            model_capabilities={m: self._flags.expand(f) for m, f in body.model_capabilities.items()},
            models=body.models,
            slots=body.slots,
            created_at=time.time(),
        )
        stored = msgspec.to_builtins(record)
        del stored["created_at"]
        self._store.upsert_endpoint(record.name, stored, record.created_at)
        self._records[record.name] = record
        if self.on_change is not None:
            self.on_change()
        log.info("endpoint %s added: %s (kind %s)", record.name, record.url, record.kind)
        return record

    def delete(self, name: str) -> bool:
        record = self._records.pop(name, None)
        self._health.pop(name, None)
        existed = self._store.delete_endpoint(name)
        self._nodes.release(node_id_of(name))
        if self.on_change is not None:
            self.on_change()
        if record is not None:
            log.info("endpoint %s removed", name)
        return record is not None or existed

    def get(self, name: str) -> EndpointRecord:
        record = self._records.get(name)
        if record is None:
            raise OpenAIError(404, f"No endpoint named '{name}'", param="name", code="endpoint_not_found")
        return record

    def names(self) -> list[str]:
        return list(self._records)

    def view(self, name: str) -> EndpointView:
        record = self.get(name)
        health = self._health.get(name, _Health())
        node = self._nodes.get(node_id_of(name))
        status = "unchecked" if health.last_check_at is None else "offline"
        if node is not None and self._nodes.status(node) == "online":
            status = "online"
        return EndpointView(
            name=record.name,
            node_id=node_id_of(name),
            url=record.url,
            kind=record.kind,
            has_api_key=bool(record.api_key),
            capabilities=record.capabilities,
            model_capabilities=record.model_capabilities,
            models=record.models,
            slots=record.slots,
            created_at=record.created_at,
            status=status,
            served_models=list(node.models.values()) if node is not None else [],
            inflight=node.inflight if node is not None else 0,
            last_check_at=health.last_check_at,
            last_ok_at=health.last_ok_at,
            last_error=health.last_error,
        )

    # --- health checks ------------------------------------------------------------------
    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(name) for name in list(self._records)))

    async def check(self, name: str) -> None:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            record = self._records.get(name)
            if record is None:
                return
            health = self._health.setdefault(name, _Health())
            health.last_check_at = time.time()
            try:
                listed = await fetch_model_ids(
                    self._http, record.url, record.api_key, timeout_s=self.timeout_s
                )
                adverts = build_adverts(
                    listed,
                    kind=record.kind,
                    runtime=record.kind,
                    models=record.models,
                    capabilities=record.capabilities,
                    model_capabilities=record.model_capabilities,
                    details={"endpoint": record.name},
                )
            except UpstreamError as exc:
                self._failed(record, health, exc)
                return
            adverts, left_out = self._limits.within(self._flags.adverts(adverts))
            if name not in self._records:
                return  # deleted while the check ran
            if left_out != health.left_out:
                if left_out:
                    log.warning(
                        "endpoint %s: models not served: %s", name, ", ".join(map(log_field, left_out))
                    )
                health.left_out = left_out
            if health.last_error is not None or health.last_ok_at is None:
                log.info("endpoint %s is healthy: models %s", name, log_list(a.id for a in adverts))
            health.last_ok_at = time.time()
            health.last_error = None
            self._alive(record, adverts)

    def _alive(self, record: EndpointRecord, adverts: list[ModelAdvert] | None) -> None:
        """Register the endpoint in the node registry, or send its heartbeat."""
        nodes = self._nodes
        node_id = node_id_of(record.name)
        node = nodes.get(node_id)
        same = (
            node is not None
            and node.token == record.api_key
            and node.base_url == record.url
            and node.slots == record.slots
        )
        if same and node is not None:
            inflight = node.inflight
            heartbeat = Heartbeat(
                node_id=node_id,
                active_jobs=inflight,
                free_slots=max(0, record.slots - inflight),
                models=adverts,
            )
            if nodes.heartbeat(heartbeat):
                return
        if adverts is None:
            return  # nothing known to register with
        nodes.register(
            NodeRegistration(
                node_id=node_id,
                name=record.name,
                base_url=record.url,
                token=record.api_key,
                runtime_types=[record.kind],
                models=adverts,
                slots=record.slots,
                version="endpoint",
            )
        )

    def _failed(self, record: EndpointRecord, health: _Health, exc: UpstreamError) -> None:
        node = self._nodes.get(node_id_of(record.name))
        if node is not None and node.inflight > 0 and isinstance(exc, ModelListTimeout):
            # Busy answering the router's own requests (e.g. a llama-cpp-python server that
            # answers /v1/models only between generations): alive, models unchanged.
            self._alive(record, None)
            return
        reason = str(exc)
        if health.last_error != reason:
            log.warning("endpoint %s failed its health check: %s", record.name, reason)
        health.last_error = reason
        if node is not None:
            node.record_failure(f"health check: {reason}", self._cooldown_s)


def endpoints_router(manager: EndpointManager, keys: KeyManager) -> Router:
    """The admin API of registered endpoints, under ``/v0/endpoints`` (``admin`` scope)."""

    @post("/", status_code=201, operation_class=openapi_json_body(CreateEndpointRequest))
    async def create_endpoint(request: Request[Any, Any, Any]) -> EndpointView:
        body = await decode_json(request, CreateEndpointRequest)
        record = manager.create(body)
        await manager.check(record.name)  # the answer shows whether it is reachable already
        return manager.view(record.name)

    @get("/")
    async def list_endpoints() -> dict[str, Any]:
        return {"object": "list", "data": [manager.view(name) for name in manager.names()]}

    @get("/{name:str}")
    async def get_endpoint(name: FromPath[str]) -> EndpointView:
        return manager.view(name)

    @post("/{name:str}/check", status_code=200)
    async def check_endpoint(name: FromPath[str]) -> EndpointView:
        manager.get(name)
        await manager.check(name)
        return manager.view(name)

    @delete("/{name:str}", status_code=200)
    async def delete_endpoint(name: FromPath[str]) -> dict[str, Any]:
        if not manager.delete(name):
            raise OpenAIError(404, f"No endpoint named '{name}'", param="name", code="endpoint_not_found")
        return {"name": name, "deleted": True}

    return Router(
        path="/v0/endpoints",
        route_handlers=[create_endpoint, list_endpoints, get_endpoint, check_endpoint, delete_endpoint],
        guards=[require_scope("admin", keys)],
    )
