"""The router's one shared upstream client: the httpx API over aiohttp's transport.

Measured with bench/router_overhead.py: httpx's own transport (httpcore + h11 + anyio) spent
~5 ms of router CPU reading a 1.5 MB node answer in 64 KiB pieces; aiohttp's C-accelerated
HTTP/1.1 reader through ``httpx-aiohttp`` (the transport the openai SDK ships) costs a fraction
of that, and callers keep the httpx API (timeouts, exceptions, streaming).
"""

from __future__ import annotations

import httpx
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp import transport as _aiohttp_transport

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
