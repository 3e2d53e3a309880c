"""A node runtime that fronts a local OpenAI-compatible server (llama.cpp, vLLM, Ollama, ...).

Configured by its ``[runtime.openai_compatible]`` table
(:class:`~llmlb_node.openai_compatible.settings.OpenAICompatibleSettings`; the ``llmlb node``
flags ``--upstream``, ``--upstream-key``, ... fill it):

- It polls ``GET {url}/v1/models`` every ``poll_interval_s`` and advertises those models to the
  router, with the capability flags the operator declared; models without declared flags are
  advertised without any, and the router gives them flags (by its capabilities' rules for the
  model id and the server's kind, as it does for endpoints an admin registers). A change reaches
  the router with the next heartbeat. While the server cannot be reached, the last known list
  stays advertised (requests then fail over to other nodes).
- It proxies the text and audio routes to the server: the request body is streamed through
  (an audio upload is never held whole), the answer is relayed chunk by chunk (server-sent
  events, audio bytes; :class:`~llmlb_node.api.Relay`, the router's own relay) with the server's
  status, and a router that disconnects closes the upstream request. The router's credential
  stays here; the server gets the upstream key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import httpx
from litestar import Request, Response, post
from litestar.handlers import BaseRouteHandler

from llmlb_node.api import (
    ModelAdvert,
    OpenAIError,
    Relay,
    RelayStream,
    Runtime,
    RuntimeLoad,
    UpstreamError,
    auth_headers,
    build_adverts,
    fetch_model_ids,
    is_garbled,
    is_timeout,
    normalize_url,
    passed_headers,
    upstream_client,
)
from llmlb_node.openai_compatible.settings import OpenAICompatibleSettings

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


class OpenAICompatibleRuntime(Runtime):
    type_name = TYPE_NAME
    # Bodies are streamed to the server as they arrive (never read whole here), and the
    # server decides which models it serves.
    refuse_unknown_models = False

    def __init__(self, cfg: OpenAICompatibleSettings) -> None:
        assert cfg.url
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
            log.warning("upstream %s%s failed: %s: %r", self.url, path, type(exc).__name__, str(exc)[:300])
            if is_garbled(exc):  # it answered, but not in HTTP/1.1
                raise OpenAIError(
                    502,
                    "The node's upstream server sent an answer that is not HTTP/1.1",
                    type="server_error",
                    code="bad_upstream_response",
                ) from None
            raise OpenAIError(
                504 if is_timeout(exc) else 502,
                f"The node's upstream server did not answer: {type(exc).__name__}",
                type="server_error",
                code="upstream_unreachable",
            ) from None
        except BaseException:
            self.active -= 1
            raise
        passed = passed_headers(response)
        media_type = passed.get("content-type", "application/octet-stream")  # stays a header, as sent
        relay = Relay(response, on_close=self._job_done)
        return RelayStream(relay, status_code=response.status_code, media_type=media_type, headers=passed)

    def _job_done(self, relay: Relay) -> None:
        self.active -= 1

    def routes(self) -> list[BaseRouteHandler]:
        runtime = self

        def make(path: str) -> BaseRouteHandler:
            @post(path, status_code=200, request_max_body_size=MAX_BODY_BYTES, name=f"proxy:{path}")
            async def handler(request: Request[Any, Any, Any]) -> Response[Any]:
                return await runtime.proxy(request, path)

            return handler

        return [make(path) for path in PROXIED_PATHS]
