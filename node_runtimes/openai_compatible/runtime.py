"""A node runtime that fronts a local OpenAI-compatible server (llama.cpp, vLLM, Ollama, ...).

Configured by ``NodeSettings.runtime_settings["openai_compatible"]`` (the ``llmlb node`` flags
``--upstream``, ``--upstream-key``, ``--upstream-kind``, ``--upstream-model``,
``--upstream-capability``, ``--upstream-slots`` fill it):

- It polls ``GET {url}/v1/models`` every ``poll_interval_s`` and advertises those models to the
  router (capability flags chosen as in :mod:`llmlb_core.openai_upstream`); a change reaches
  the router with the next heartbeat. While the server cannot be reached, the last known list
  stays advertised (requests then fail over to other nodes).
- It proxies the text and audio routes to the server: the request body is streamed through
  (an audio upload is never held whole), the answer is streamed back chunk by chunk (server-sent
  events, audio bytes) with the server's status, and a router that disconnects closes the
  upstream request. The router's credential stays here; the server gets the upstream key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import msgspec
from litestar import Request, Response, post
from litestar.handlers import BaseRouteHandler

from llmlb_core.errors import OpenAIError
from llmlb_core.openai_upstream import (
    Kind,
    UpstreamError,
    auth_headers,
    build_adverts,
    fetch_model_ids,
    normalize_url,
)
from llmlb_core.protocol import ModelAdvert
from llmlb_core.streaming import PASSED_HEADERS, RelayStream
from llmlb_core.upstream import close_response, is_timeout, upstream_client
from llmlb_node.runtime import Runtime, RuntimeLoad
from llmlb_node.settings import NodeSettings

log = logging.getLogger("llmlb.node.openai_compatible")

TYPE_NAME = "openai_compatible"
PROXIED_PATHS: tuple[str, ...] = (
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/audio/speech",
)
# Request headers passed to the server (the router's credential is not among them).
FORWARDED_REQUEST_HEADERS = ("content-type", "content-length", "accept")
MAX_BODY_BYTES = 64 * 1024 * 1024


class OpenAICompatibleSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    url: str | None = None
    api_key: str | None = None
    kind: Kind = "generic"
    capabilities: list[str] | None = None
    model_capabilities: dict[str, list[str]] = msgspec.field(default_factory=dict)
    models: list[str] | None = None
    slots: Annotated[int, msgspec.Meta(ge=1, le=1024)] = 4
    poll_interval_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    connect_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    read_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 900.0


def load_runtime_settings(table: dict[str, Any]) -> OpenAICompatibleSettings:
    try:
        return msgspec.convert(table, OpenAICompatibleSettings, strict=False)
    except msgspec.ValidationError as exc:
        raise SystemExit(f"invalid openai_compatible runtime settings: {exc}") from exc


class _Relay:
    """The server's answer, streamed back; the response closed and the job counted down once."""

    def __init__(self, runtime: OpenAICompatibleRuntime, response: httpx.Response) -> None:
        self._runtime = runtime
        self._response = response
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.aiter_raw():
                if chunk:
                    yield chunk
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._runtime.active -= 1
        await close_response(self._response)


class OpenAICompatibleRuntime(Runtime):
    type_name = TYPE_NAME

    def __init__(self, settings: NodeSettings, cfg: OpenAICompatibleSettings) -> None:
        assert cfg.url
        self.settings = settings
        self.cfg = cfg
        self.url = normalize_url(cfg.url)
        self.slots = cfg.slots
        self.active = 0
        self._models: list[ModelAdvert] = []
        self._http: httpx.AsyncClient | None = None
        self._poller: asyncio.Task[None] | None = None
        self._last_error: str | None = None

    # --- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        self._http = upstream_client(
            connect_timeout_s=self.cfg.connect_timeout_s, read_timeout_s=self.cfg.read_timeout_s
        )
        await self.refresh()
        self._poller = asyncio.create_task(self._poll(), name="llmlb-openai-compatible-models")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self._http is not None:
            await self._http.aclose()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.poll_interval_s)
            await self.refresh()

    async def refresh(self) -> None:
        """Re-read the server's models; keep the last known ones when it cannot be read."""
        assert self._http is not None
        try:
            listed = await fetch_model_ids(
                self._http, self.url, self.cfg.api_key, timeout_s=min(10.0, self.cfg.poll_interval_s + 1)
            )
            models = build_adverts(
                listed,
                kind=self.cfg.kind,
                runtime=TYPE_NAME,
                models=self.cfg.models,
                capabilities=self.cfg.capabilities,
                model_capabilities=self.cfg.model_capabilities,
                details={"upstream_kind": self.cfg.kind},
            )
        except UpstreamError as exc:
            if str(exc) != self._last_error:
                log.warning("upstream %s: cannot list models: %s", self.url, exc)
            self._last_error = str(exc)
            return
        if self._last_error is not None or [m.id for m in models] != [m.id for m in self._models]:
            log.info("upstream %s serves %s", self.url, [m.id for m in models])
        self._last_error = None
        self._models = models

    # --- Runtime ------------------------------------------------------------------------
    def models(self) -> list[ModelAdvert]:
        return list(self._models)

    def load(self) -> RuntimeLoad:
        return RuntimeLoad(active_jobs=self.active, loaded_models=[m.id for m in self._models])

    async def proxy(self, request: Request[Any, Any, Any], path: str) -> Response[Any]:
        assert self._http is not None
        headers = {k: v for k in FORWARDED_REQUEST_HEADERS if (v := request.headers.get(k)) is not None}
        headers.update(auth_headers(self.cfg.api_key))
        url = self.url + path
        upstream = self._http.build_request("POST", url, content=request.stream(), headers=headers)
        self.active += 1
        try:
            response = await self._http.send(upstream, stream=True)
        except httpx.HTTPError as exc:
            self.active -= 1
            log.warning("upstream %s%s failed: %s", self.url, path, type(exc).__name__)
            raise OpenAIError(
                504 if is_timeout(exc) else 502,
                f"The node's upstream server did not answer: {type(exc).__name__}",
                type="server_error",
                code="upstream_unreachable",
            ) from None
        except BaseException:
            self.active -= 1
            raise
        passed = {name: response.headers[name] for name in PASSED_HEADERS if name in response.headers}
        media_type = passed.pop("content-type", "application/octet-stream")
        return RelayStream(
            _Relay(self, response), status_code=response.status_code, media_type=media_type, headers=passed
        )

    def routes(self) -> list[BaseRouteHandler]:
        runtime = self

        def make(path: str) -> BaseRouteHandler:
            @post(path, status_code=200, request_max_body_size=MAX_BODY_BYTES, name=f"proxy:{path}")
            async def handler(request: Request[Any, Any, Any]) -> Response[Any]:
                return await runtime.proxy(request, path)

            return handler

        return [make(path) for path in PROXIED_PATHS]
