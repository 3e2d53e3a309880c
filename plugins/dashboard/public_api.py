"""The dashboard's only way to the router's state: the router's own public HTTP API, called
in-process (httpx over ASGI, no socket) with the signed-in admin's key. Every call passes through
the same guards, middleware, limits and error shaping as a client's."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

# What the dashboard may call: the admin API, the OpenAI-compatible API, the metrics.
ALLOWED_PREFIXES = ("/v0/", "/v1/")
ALLOWED_PATHS = frozenset({"/metrics"})
# Answer headers passed back to the browser (the rest are the inner call's business).
PASSED_ANSWER_HEADERS = ("content-type", "x-request-id")
PASSED_ANSWER_PREFIX = "x-llmlb-"


def allowed_path(path: str) -> bool:
    """Whether ``path`` (from a dashboard URL) names a public API route the dashboard relays.
    No dot segments and no backslashes: the path reaches the router as written."""
    if "\\" in path or any(part in (".", "..") for part in path.split("/")):
        return False
    return path in ALLOWED_PATHS or path.startswith(ALLOWED_PREFIXES)


def passed_headers(answer: httpx.Response) -> dict[str, str]:
    return {
        name: value
        for name, value in answer.headers.items()
        if name in PASSED_ANSWER_HEADERS or name.startswith(PASSED_ANSWER_PREFIX)
    }


class PublicApi:
    """An httpx client bound to the router app (made on first use: the app exists only once
    the router is built), closed at shutdown."""

    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None

    def _client_for(self, app: Any) -> httpx.AsyncClient:
        if self._client is None:
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            # Long generations: no read timeout here; the router's own upstream timeouts apply.
            self._client = httpx.AsyncClient(
                transport=transport, base_url="http://llmlb-dashboard.internal", timeout=None
            )
        return self._client

    async def call(
        self,
        app: Any,
        method: str,
        path: str,
        *,
        key: str,
        query: str = "",
        body: bytes = b"",
        content_type: str | None = None,
        request_id: str | None = None,
    ) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"}
        if content_type:
            headers["content-type"] = content_type
        if request_id:
            headers["x-request-id"] = request_id
        url = f"{path}?{query}" if query else path
        request = self._client_for(app).request(method, url, content=body or None, headers=headers)
        # A task of its own: the inner request's context variables (request id, access-log
        # record) stay out of the dashboard request's context. Cancelling this call cancels it.
        return await asyncio.create_task(request)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
