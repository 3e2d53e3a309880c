"""The router's one shared upstream client: the httpx API over aiohttp's transport.

Measured with bench/router_overhead.py: httpx's own transport (httpcore + h11 + anyio) spent
~5 ms of router CPU reading a 1.5 MB node answer in 64 KiB pieces; aiohttp's C-accelerated
HTTP/1.1 reader through ``httpx-aiohttp`` (the transport the openai SDK ships) costs a fraction
of that, and callers keep the httpx API (timeouts, exceptions, streaming).
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Callable, Collection
from typing import Any, TypeVar

import anyio
import httpx
import msgspec

from llmlb_core.server import request_id
from llmlb_core.server.bodies import MAX_JSON_DEPTH, check_json_bytes
from llmlb_core.server.errors import NodeFailure, OpenAIError, error_body
from llmlb_core.server.tls import client_ssl_context
from llmlb_core.upstream.transport import CheckedTransport

log = logging.getLogger("llmlb.upstream")
T = TypeVar("T")

# Node failures that make the router try another node: every 5xx. The client sees these
# statuses as they were; any other 5xx becomes a 502.
RETRYABLE_STATUS = frozenset(range(500, 600))
SHOWN_5XX = frozenset({500, 502, 503, 504})
# An upstream error code passed on from a 5xx (the message never is).
_CODE_TOKEN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
IDENTITY = "identity"
# Most bytes of an upstream error body that are read (the rest is dropped).
MAX_ERROR_BYTES = 1024 * 1024


def upstream_client(
    *,
    connect_timeout_s: float,
    read_timeout_s: float,
    ssl_context: ssl.SSLContext | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """The shared client. HTTPS peers are verified with ``ssl_context`` (aiohttp's connector uses
    it as is: certificate chain and host name), by default the system trust store
    (:func:`llmlb_core.server.tls.client_ssl_context`).

    ``transport`` is for tests only (:mod:`llmlb_core.testing` passes one that hands requests to
    in-process ASGI apps); None, always in production, is the checked aiohttp transport. It is
    chosen once, here: nothing on a request's path looks at it."""
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200, keepalive_expiry=60)
    if transport is None:
        verify = ssl_context if ssl_context is not None else client_ssl_context(None)
        transport = CheckedTransport(verify=verify, limits=limits, trust_env=False)
    return httpx.AsyncClient(
        transport=transport,
        timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
        limits=limits,
        trust_env=False,
        headers={"accept-encoding": IDENTITY},  # see encoding_problem
    )


def encoding_problem(response: httpx.Response) -> str | None:
    """Why an answer's ``content-encoding`` makes it unusable, or None.

    The client asks for answers as they are (``accept-encoding: identity``, not httpx's default
    ``gzip, deflate``): relayed bytes are passed on without their encoding header, and a
    compressed answer that is decoded here could inflate a thousandfold past every size bound
    (a 1 MiB piece of gzip can hold 1 GiB) before it is counted."""
    encoding = response.headers.get("content-encoding", IDENTITY).strip().lower()
    return None if encoding in ("", IDENTITY) else f"content encoding {encoding[:40]!r} (none was accepted)"


def is_timeout(exc: httpx.HTTPError) -> bool:
    """Whether a request failed by timing out (not by being refused, reset or answered with
    garbage: :mod:`llmlb_core.upstream.transport` tells them apart)."""
    return isinstance(exc, httpx.TimeoutException)


def is_garbled(exc: httpx.HTTPError) -> bool:
    """Whether the peer answered, but not in HTTP/1.1 (a status line, header or body framing that
    does not parse: :class:`~llmlb_core.upstream.transport.UpstreamProtocolError`)."""
    return isinstance(exc, httpx.RemoteProtocolError)


def media_type(content_type: str) -> str:
    """``"Application/JSON; charset=utf-8"`` -> ``"application/json"``."""
    return content_type.partition(";")[0].strip().lower()


def accepts(content_type: str, accepted: Collection[str]) -> bool:
    """Whether ``content_type`` is one of ``accepted`` (which may hold ``"audio/*"``)."""
    kind = media_type(content_type)
    return kind in accepted or f"{kind.partition('/')[0]}/*" in accepted


def log_snippet(content: bytes, limit: int = 300) -> str:
    """The start of an upstream body for one log line: newlines and control bytes escaped."""
    text = content[:limit].decode("utf-8", "replace")
    return repr(text) + ("..." if len(content) > limit else "")


def _json_or_none(content: bytes) -> Any:
    try:
        check_json_bytes(content)
        return msgspec.json.decode(content)
    except (OpenAIError, msgspec.DecodeError):
        return None


def _short(value: Any, *, numbers: bool = False, limit: int = 64) -> str | None:
    """A type/param/code value from upstream: a short printable string (or, with ``numbers``, an
    integer as one), else None."""
    if not isinstance(value, str) and (not numbers or isinstance(value, bool) or not isinstance(value, int)):
        return None
    text = str(value)
    return text if len(text) <= limit and text.isprintable() else None


def one_line(text: str, limit: int = 2000) -> str:
    """Upstream text as a client or a log line may show it: printable, one line, bounded."""
    text = "".join(c if c.isprintable() else " " for c in text[: limit * 2])
    return " ".join(text.split())[:limit]


def _error_fields(
    status: int, content: bytes, *, node_name: str, content_type: str
) -> tuple[str, str, str | None, str | None]:
    """(message, type, param, code) of an upstream error body (see :func:`openai_error_content`)."""
    default_type = OpenAIError(status, "").type
    message: str | None = None
    err_type = default_type
    param: str | None = None
    code: str | None = None
    if status < 500:
        data = _json_or_none(content)
        if isinstance(data, dict):
            err = data.get("error")
            source = err if isinstance(err, dict) else data
            raw = err if isinstance(err, str) else source.get("message", source.get("detail"))
            if isinstance(raw, str):
                message = one_line(raw)
            elif raw is not None:
                message = one_line(msgspec.json.encode(raw).decode())
            err_type = _short(source.get("type")) or default_type
            param = _short(source.get("param"))
            code = _short(source.get("code"), numbers=True)
        elif data is None and media_type(content_type) in ("", "text/plain"):
            text = one_line(content.decode("utf-8", "replace"))
            message = text if text and not text.startswith("<") else None
    if not message:
        message = f"The upstream server answered HTTP {status}"
    if node_name:
        message = f"{message} (node '{node_name}')"
    return message, err_type, param, code


def openai_error_content(
    status: int, content: bytes, *, node_name: str = "", content_type: str = ""
) -> bytes:
    """An upstream 4xx body as OpenAI's ``{"error": {...}}``, rebuilt field by field.

    Servers differ: OpenAI's shape, vLLM's older ``{"object": "error", "message": ...}``,
    FastAPI's ``{"detail": ...}``, ``{"error": "text"}`` (Ollama), plain text. Their message,
    type, param and code are kept where present, as short printable strings. Markup (an HTML
    error page) and anything else unreadable becomes a message that only states the status. The
    body of a 5xx is never shown (it is the node's business: ``node_failure`` logs it).
    """
    message, err_type, param, code = _error_fields(
        status, content, node_name=node_name, content_type=content_type
    )
    return msgspec.json.encode(error_body(message, type=err_type, param=param, code=code))


def upstream_client_error(
    status: int,
    content: bytes,
    *,
    node_name: str = "",
    content_type: str = "",
    headers: dict[str, str] | None = None,
) -> OpenAIError:
    """An upstream 4xx as an :class:`OpenAIError` whose body is what
    :func:`openai_error_content` makes of it (for a route that raises it)."""
    message, err_type, param, code = _error_fields(
        status, content, node_name=node_name, content_type=content_type
    )
    error = OpenAIError(status, message, type=err_type, param=param, headers=headers)
    error.code = code  # the node's, or none (not the status's default)
    return error


def error_code(content: bytes) -> str:
    """The error code of an upstream error body (``{"error": {"code": ...}}``) when it is a plain
    token (e.g. ``model_load_failed``), else ``upstream_error``."""
    data = _json_or_none(content)
    error = data.get("error") if isinstance(data, dict) else None
    code = _short(error.get("code"), numbers=True) if isinstance(error, dict) else None
    return code if code is not None and _CODE_TOKEN.fullmatch(code) else "upstream_error"


def node_failure(status: int, content: bytes, node_name: str) -> NodeFailure:
    """A node's 5xx as a retryable error: its body is logged (one line), never shown; only an
    error code that is a plain token is kept (:func:`error_code`)."""
    log.warning(
        "node %s answered HTTP %d (request %s): %s",
        node_name,
        status,
        request_id.current(),
        log_snippet(content),
    )
    return NodeFailure(
        status if status in SHOWN_5XX else 502,
        f"Node '{node_name}' failed (HTTP {status})",
        type="server_error",
        code=error_code(content),
    )


class BadAnswer(Exception):
    """A node answered something the route cannot use: a wrong status, content type, size or
    shape (``RouterServices.reject_answer`` makes it a 502 ``bad_upstream_response``)."""


class _JsonObject(msgspec.Struct):
    """Any JSON object: every member is skipped, the syntax is still checked."""


_json_object = msgspec.json.Decoder(_JsonObject)


def check_json_object(content: bytes) -> None:
    """:class:`BadAnswer` unless ``content`` is one JSON object (UTF-8, sanely nested: an
    answer may echo a request nested as deep as allowed, and wrap it)."""
    try:
        check_json_bytes(content, max_depth=2 * MAX_JSON_DEPTH)
        _json_object.decode(content)
    except (OpenAIError, msgspec.DecodeError, RecursionError):
        raise BadAnswer("the answer is not a JSON object") from None


def answer_type(type_: type[T]) -> Callable[[bytes], T]:
    """A ``check`` for ``Forwarder.call`` that accepts a node's answer only as ``type_``:
    UTF-8, sanely nested, decoded **strictly** by msgspec (``"2"`` is not an int); anything
    else is a :class:`BadAnswer` naming what was wrong (a 502 for the client, the node marked
    suspect, the request tried elsewhere). What it returns is ``UpstreamResult.parsed``::

        result = await context.forward.call(..., check=answer_type(ReverseResponse))
        answer: ReverseResponse = result.parsed
    """
    decoder = msgspec.json.Decoder(type_)
    name = getattr(type_, "__name__", str(type_))

    def check(content: bytes) -> T:
        try:
            check_json_bytes(content, max_depth=2 * MAX_JSON_DEPTH)
            return decoder.decode(content)
        except OpenAIError:
            raise BadAnswer(f"the answer is no {name}: not UTF-8, or nested too deep") from None
        except (msgspec.DecodeError, RecursionError) as exc:
            raise BadAnswer(f"the answer is no {name}: {exc}") from None

    return check


async def read_bounded(response: httpx.Response, limit: int = MAX_ERROR_BYTES) -> bytes:
    """At most ``limit`` bytes of an (error) body; the rest is dropped, a broken read ends it."""
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


async def read_answer(response: httpx.Response, limit: int) -> bytes:
    """The whole answer, or :class:`BadAnswer` as soon as it is over ``limit`` bytes (a
    declared length over it is refused before reading) or when it is encoded
    (:func:`encoding_problem`). A broken read raises ``httpx.HTTPError``."""
    problem = encoding_problem(response)
    if problem is not None:
        raise BadAnswer(problem)
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadAnswer(f"answer of {declared} bytes is over the limit of {limit} bytes")
    parts: list[bytes] = []
    size = 0
    async for chunk in response.aiter_raw():
        size += len(chunk)
        if size > limit:
            raise BadAnswer(f"answer is over the limit of {limit} bytes")
        parts.append(chunk)
    return b"".join(parts)


async def close_response(response: httpx.Response) -> None:
    # Shielded: this runs while the task is being cancelled (client disconnect), and an await
    # inside a cancelled anyio scope would be cancelled again before the connection is closed.
    with anyio.CancelScope(shield=True):
        try:
            await response.aclose()
        except Exception as exc:  # closing must never mask what ended the stream
            log.debug("closing upstream response failed: %r", exc)
