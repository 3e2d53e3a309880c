"""A request id for every HTTP request: what a user quotes and what the log lines say.

The servers' request log (:class:`llmlb_core.server.access_log.RequestLogMiddleware`; the id alone:
:class:`RequestIdMiddleware`) takes the client's ``x-request-id`` when it is sane
(:data:`VALID_ID`: letters, digits and ``._:-``, at most 128 characters) and generates one
(``req_`` + 24 hex digits) otherwise (:func:`from_scope`). The id is kept in the ASGI scope
(:data:`SCOPE_KEY`) and in a context variable for the code that runs the request
(:func:`current`), and it is echoed as the ``x-request-id`` response header. The router sends it
to the node with every forwarded call (``llmlb_core.router.forwarding``), so the node's log lines carry
the same id. Server-side errors quote it (``llmlb_core.server.errors``), so a user can report it and an
operator can find the log lines that explain what went wrong.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from litestar.types import ASGIApp, HTTPResponseStartEvent, Message, Receive, Scope, Send

HEADER = "x-request-id"
SCOPE_KEY = "llmlb.request_id"
VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_HEADER_BYTES = HEADER.encode()

_current: ContextVar[str | None] = ContextVar("llmlb_request_id", default=None)


def new_id() -> str:
    return f"req_{secrets.token_hex(12)}"


def accept(value: str | None) -> str:
    """The client's id when it is sane, else a fresh one."""
    return value if value is not None and VALID_ID.fullmatch(value) else new_id()


def current() -> str | None:
    """The id of the request being handled (None outside a request)."""
    return _current.get()


def with_request_id(message: str) -> str:
    """``message`` with the current request id appended (unchanged outside a request)."""
    request_id = current()
    return f"{message} (request id: {request_id})" if request_id else message


def from_scope(scope: Scope) -> str:
    """The request's id: the client's ``x-request-id`` when it is sane, else a fresh one. Kept
    in the scope (:data:`SCOPE_KEY`)."""
    raw = next((v for k, v in scope["headers"] if k == _HEADER_BYTES), None)
    request_id = accept(raw.decode("latin-1") if raw is not None else None)
    scope[SCOPE_KEY] = request_id  # type: ignore[literal-required]
    return request_id


def echo(message: HTTPResponseStartEvent, request_id: str, *also: tuple[bytes, bytes]) -> None:
    """Put ``x-request-id: request_id`` on a response start message (replacing any other), and
    the headers ``also`` (one new header list for both)."""
    headers = [h for h in message.get("headers", ()) if h[0].lower() != _HEADER_BYTES]
    message["headers"] = [*headers, (_HEADER_BYTES, request_id.encode()), *also]


def bind(request_id: str) -> Token[str | None]:
    """Make ``request_id`` the current one (:func:`current`) until :func:`unbind`."""
    return _current.set(request_id)


def unbind(token: Token[str | None]) -> None:
    _current.reset(token)


class RequestIdMiddleware:
    """ASGI middleware: accept or make the id, keep it in scope and context, echo it. (The
    servers use :class:`llmlb_core.server.access_log.RequestLogMiddleware`, which does this and logs.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = from_scope(scope)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                echo(message, request_id)
            await send(message)

        token = bind(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            unbind(token)
