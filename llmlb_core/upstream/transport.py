"""The upstream client's transport: aiohttp's HTTP/1.1 client under the httpx API, where every way
a peer can fail at the HTTP layer is an ``httpx`` error.

httpx-aiohttp's transport maps some aiohttp exceptions to httpx ones and lets the others escape
as they are: ``aiohttp.ClientResponseError`` for a status line or header that does not parse
(``HTTP/9.9 abc def``, two different ``content-length`` headers, a header over aiohttp's size
bounds), the pure-Python parser's ``http_exceptions.*`` for a broken chunked body, a
``UnicodeEncodeError`` for a reason phrase that is not UTF-8. A caller that catches
``httpx.HTTPError`` (every caller does) then answers 500. :class:`CheckedTransport` maps them all
in one place, for the head and for every read of the body, into three kinds:

- the peer broke HTTP/1.1 (it answered, but garbage): :class:`UpstreamProtocolError`, an
  ``httpx.RemoteProtocolError``;
- the peer could not be reached, or the connection broke (refused, reset, closed before the
  answer ended): ``httpx.ConnectError`` before the head, ``httpx.ReadError`` after it;
- it took too long: ``httpx.ConnectTimeout`` / ``httpx.ReadTimeout``.

The original exception is the mapped one's ``__cause__`` (log lines name its class).

The head is bounded by aiohttp's parser (:data:`MAX_HEADER_LINE_BYTES` per line and per field,
:data:`MAX_HEADERS` fields): a 5 MB header is refused after its first 8 KiB.

It also works around an aiohttp bug: when the body turns to garbage after the head (a bad chunk
size), aiohttp's C parser drops the body's reader without an error and cancels its read timeout,
so the reader waits forever. The connections here (:class:`_ResponseHandler`) hand that error
to the body's reader.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import httpx
from aiohttp.client_proto import ResponseHandler
from aiohttp.helpers import set_exception
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import EMPTY_PAYLOAD
from httpx_aiohttp import AiohttpTransport

# aiohttp's bounds on a response head (its defaults, stated here): bytes of the status line and
# of each header line, and the number of headers.
MAX_HEADER_LINE_BYTES = 8190
MAX_HEADERS = 128
# Read the body in pieces of up to 1 MiB (what aiohttp has buffered), not 16 KiB ones: each piece
# crosses several Python layers.
READ_CHUNK_BYTES = 1024 * 1024


class UpstreamProtocolError(httpx.RemoteProtocolError):
    """The peer's answer is not HTTP/1.1: its status line, its headers or its body framing."""


class _GarbledBody(aiohttp.ClientPayloadError):
    """The body turned to garbage after the head (raised by :class:`_ResponseHandler`)."""


class _ResponseHandler(ResponseHandler):
    """aiohttp's connection protocol, which also fails the body's reader when the parser gives
    up on the body (aiohttp's C parser forgets it: see the module doc)."""

    def set_exception(self, exc: BaseException, exc_cause: BaseException = ...) -> None:  # type: ignore[assignment]
        payload = self._payload
        if exc_cause is ...:
            super().set_exception(exc)
        else:
            super().set_exception(exc, exc_cause)
        if (
            isinstance(exc, HttpProcessingError)
            and payload is not None
            and payload is not EMPTY_PAYLOAD
            and not payload.is_eof()
            and payload.exception() is None
        ):
            set_exception(payload, _GarbledBody(f"the body is not valid HTTP/1.1: {exc.message}"), exc)


def transport_error(exc: BaseException, *, answered: bool) -> httpx.TransportError | None:
    """What an exception raised while talking to a peer is as an httpx error (module doc), or
    None when it is not the peer's doing (it is raised as it is). ``answered``: the head was in."""
    if isinstance(exc, httpx.TransportError):
        return exc
    if isinstance(exc, (aiohttp.ClientResponseError, HttpProcessingError, _GarbledBody)):
        return UpstreamProtocolError(_describe(exc))
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(str(exc) or "connecting timed out")
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError and SocketTimeoutError too
        return httpx.ReadTimeout(str(exc) or "reading timed out")
    if isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)):
        return httpx.ConnectError(str(exc))
    if isinstance(exc, (aiohttp.ClientError, OSError)):  # reset, closed before the answer ended
        error = httpx.ReadError if answered else httpx.ConnectError
        return error(str(exc) or type(exc).__name__)
    return None


def _describe(exc: BaseException) -> str:
    """The parser's complaint, on one line (a ``ClientResponseError`` wraps it)."""
    inner = exc.__cause__ if isinstance(exc, aiohttp.ClientResponseError) and exc.__cause__ else exc
    text = inner.message if isinstance(inner, HttpProcessingError) else str(inner)
    return " ".join(str(text).split())[:300] or type(inner).__name__


class _CheckedStream(httpx.AsyncByteStream):
    """An aiohttp response's body as httpx reads it, every failure mapped."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(READ_CHUNK_BYTES):
                yield chunk
        except Exception as exc:
            mapped = transport_error(exc, answered=True)
            if mapped is None:
                raise
            raise mapped from exc

    async def aclose(self) -> None:
        try:
            await self._response.__aexit__(None, None, None)
        except Exception as exc:
            mapped = transport_error(exc, answered=True)
            if mapped is None:
                raise
            raise mapped from exc


class CheckedTransport(AiohttpTransport):
    """httpx-aiohttp's transport with every failure mapped (module doc)."""

    def get_client(self) -> aiohttp.ClientSession:
        session = super().get_client()
        connector = session.connector
        assert connector is not None and hasattr(connector, "_factory"), "aiohttp changed its connector"
        make: Callable[..., ResponseHandler] = _ResponseHandler
        connector._factory = functools.partial(make, loop=connector._loop)
        return session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(self.client, aiohttp.ClientSession):
            self.client = self.get_client()
        timeout = request.extensions.get("timeout", {})
        data: Any
        try:
            data = request.content or None
        except httpx.RequestNotRead:
            data = request.stream  # a body sent as it is read
            request.headers.pop("transfer-encoding", None)  # aiohttp frames it
        try:
            response = await self.client.request(
                method=request.method,
                url=str(request.url),
                headers=request.headers,
                data=data,
                allow_redirects=False,
                auto_decompress=False,
                compress=False,
                timeout=aiohttp.ClientTimeout(
                    sock_connect=timeout.get("connect"),
                    sock_read=timeout.get("read"),
                    connect=timeout.get("pool"),
                ),
                server_hostname=request.extensions.get("sni_hostname"),
                max_line_size=MAX_HEADER_LINE_BYTES,
                max_field_size=MAX_HEADER_LINE_BYTES,
                max_headers=MAX_HEADERS,
            )
        except Exception as exc:
            mapped = transport_error(exc, answered=False)
            if mapped is None:
                raise
            raise mapped from exc
        extensions: dict[str, Any] = {"http_version": b"HTTP/1.1"}
        if response.reason:  # aiohttp decodes it with surrogateescape: these are its bytes
            extensions["reason_phrase"] = response.reason.encode("utf-8", "surrogateescape")
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_CheckedStream(response),
            request=request,
            extensions=extensions,
        )
