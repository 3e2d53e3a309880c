"""The router's one shared upstream client: the httpx API over aiohttp's transport.

Measured with bench/router_overhead.py: httpx's own transport (httpcore + h11 + anyio) spent
~5 ms of router CPU reading a 1.5 MB node answer in 64 KiB pieces; aiohttp's C-accelerated
HTTP/1.1 reader through ``httpx-aiohttp`` (the transport the openai SDK ships) costs a fraction
of that, and callers keep the httpx API (timeouts, exceptions, streaming).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import anyio
import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp import transport as _aiohttp_transport

from llmlb_core.errors import NodeFailure, OpenAIError, error_body

log = logging.getLogger("llmlb.upstream")

# Node failures that make the router try another node.
RETRYABLE_STATUS = frozenset({500, 502, 503, 504})
# Most bytes of an upstream error body that are read (the rest is dropped).
MAX_ERROR_BYTES = 1024 * 1024

# Read the node's answer in up to 1 MiB pieces (what is buffered), not 16 KiB ones: each piece
# crosses several Python layers.
_aiohttp_transport.AiohttpResponseStream.CHUNK_SIZE = 1024 * 1024


def upstream_client(*, connect_timeout_s: float, read_timeout_s: float) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=60)
    return httpx.AsyncClient(
        transport=AiohttpTransport(limits=limits, trust_env=False),
        timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
        limits=limits,
        trust_env=False,
    )


def is_timeout(exc: httpx.HTTPError) -> bool:
    """Whether a request failed by timing out (not by being refused or reset).

    httpx-aiohttp reports every aiohttp connection error, a refused or reset connection
    included, as ``httpx.ConnectTimeout``; the cause tells them apart.
    """
    if not isinstance(exc, httpx.TimeoutException):
        return False
    cause = exc.__cause__
    return cause is None or isinstance(cause, TimeoutError)


def _json_or_none(content: bytes) -> Any:
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None


def openai_error_content(status: int, content: bytes, *, node_name: str = "") -> bytes:
    """An upstream error body as OpenAI's ``{"error": {...}}`` (unchanged when it already is).

    Servers differ: vLLM's older ``{"object": "error", "message": ...}``, FastAPI's
    ``{"detail": ...}``, ``{"error": "text"}`` (Ollama), plain text. Their message, type, param
    and code are kept where present.
    """
    data = _json_or_none(content)
    default_type = OpenAIError(status, "").type
    message: str | None = None
    err_type: str = default_type
    param: str | None = None
    code: str | int | None = None
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return content  # already OpenAI-shaped: passed through untouched
        source = err if isinstance(err, dict) else data
        raw = err if isinstance(err, str) else source.get("message", source.get("detail"))
        if raw is not None:
            message = raw if isinstance(raw, str) else json.dumps(raw)
        source_type = source.get("type")
        err_type = source_type if isinstance(source_type, str) else default_type
        param = source.get("param") if isinstance(source.get("param"), str) else None
        code = source.get("code") if isinstance(source.get("code"), str | int) else None
    if message is None:
        text = content.decode("utf-8", "replace").strip()
        message = text[:2000] if text else f"Upstream answered HTTP {status}"
    if node_name:
        message = f"{message} (node '{node_name}')"
    return json.dumps(
        error_body(message, type=err_type, param=param, code=None if code is None else str(code))
    ).encode()


def node_failure(status: int, content: bytes, node_name: str) -> NodeFailure:
    """A node's 5xx as a retryable error, keeping its message and code."""
    data = _json_or_none(openai_error_content(status, content)) or {}
    error = data.get("error", {}) if isinstance(data, dict) else {}
    return NodeFailure(
        status,
        f"{error.get('message') or f'HTTP {status}'} (node '{node_name}')",
        type="server_error",
        code=error.get("code") or "upstream_error",
    )


async def read_bounded(response: httpx.Response, limit: int = MAX_ERROR_BYTES) -> bytes:
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_raw():
            parts.append(chunk)
            size += len(chunk)
            if size >= limit:
                break
    except httpx.HTTPError:
        pass
    return b"".join(parts)[:limit]


async def close_response(response: httpx.Response) -> None:
    # Shielded: this runs while the task is being cancelled (client disconnect), and an await
    # inside a cancelled anyio scope would be cancelled again before the connection is closed.
    with anyio.CancelScope(shield=True):
        try:
            await response.aclose()
        except Exception as exc:  # closing must never mask what ended the stream
            log.debug("closing upstream response failed: %r", exc)
