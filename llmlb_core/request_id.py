"""A request id for every HTTP request: what a user quotes and what the router's log lines say.

:class:`RequestIdMiddleware` (pure ASGI) takes the client's ``x-request-id`` when it is sane
(:data:`VALID_ID`: letters, digits and ``._:-``, at most 128 characters) and generates one
(``req_`` + 24 hex digits) otherwise. The id is kept in the ASGI scope (:data:`SCOPE_KEY`) and in
a context variable for the code that runs the request (:func:`current`), and it is echoed as the
``x-request-id`` response header. Server-side errors quote it (``llmlb_core.errors``), so a user
can report it and an operator can find the one log line that explains what went wrong.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "x-request-id"
SCOPE_KEY = "llmlb.request_id"
VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

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


class RequestIdMiddleware:
    """ASGI middleware: accept or make the id, keep it in scope and context, echo it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = next((v for k, v in scope["headers"] if k == HEADER.encode()), None)
        request_id = accept(raw.decode("latin-1") if raw is not None else None)
        scope[SCOPE_KEY] = request_id  # type: ignore[literal-required]
        header = (HEADER.encode(), request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", ()) if h[0].lower() != header[0]]
                message["headers"] = [*headers, header]
            await send(message)

        token = _current.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            _current.reset(token)
