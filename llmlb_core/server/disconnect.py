"""Stop working for a client that went away.

An ASGI server reports a client that closed its connection only through ``receive()`` (an
``http.disconnect`` message), and Litestar calls ``receive()`` only while it reads the request
body and while it streams a response. A handler that awaits something long in between (a slot
in the wait queue, a node's answer, the image engine) never hears of it: the work goes on for
nobody and keeps its place in every queue.

:class:`DisconnectMiddleware` runs the rest of the app in a child task. Once the request body
has been fully received (never earlier: an upload still arriving is the app's to read), a
watcher task becomes the only caller of the server's ``receive()``; a later ``receive()`` by
the app waits for what the watcher sees and gets the same ``http.disconnect``. When the client
leaves:

- before the response started: the handler task is cancelled, so its ``finally`` blocks and
  cancellation handlers run now (the balancer forgets a queued waiter, an upstream connection is
  closed, the engine drops a job that waits for it). The request is then answered with status
  499 (nginx's "client closed request"), which reaches nobody (the server drops it) but tells
  logs and metrics that this was not a failure;
- after the response started: nothing is cancelled; the app hears the disconnect itself
  (Litestar's ``Stream`` stops its iterator, which releases what it holds).

``on_abandoned`` is called once the request's task has ended when its client left before the
whole response was sent (a node uses it to report at once that the job is gone). Lifespan and
websocket scopes pass through untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

log = logging.getLogger("llmlb.disconnect")

CLIENT_CLOSED_REQUEST = 499


# Set in the request's ASGI state when its client left while the body was still arriving.
_GONE_STATE_KEY = "llmlb_client_gone"


def client_left(scope: Scope) -> bool:
    """Whether the client of this request left while its body was arriving (an error raised by
    reading the body then is the client's doing, not the server's)."""
    return bool(scope.get("state", {}).get(_GONE_STATE_KEY))


class _Exchange:
    """One HTTP request's ``receive``/``send`` as the app sees them, and what happened to them."""

    def __init__(self, scope: Scope, receive: Receive, send: Send, on_gone: Callable[[], None]) -> None:
        self._scope = scope
        self._receive = receive
        self._send = send
        self._on_gone = on_gone
        self.gone = asyncio.Event()  # the client left (or the server reported the exchange over)
        self.started = False  # the app sent its response's status line
        self.completed = False  # the app sent its response's last byte
        self._body_done = False
        self.watcher: asyncio.Task[None] | None = None

    async def receive(self) -> ReceiveMessage:
        if self._body_done:
            await self.gone.wait()
            return {"type": "http.disconnect"}
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self.gone.set()  # gone while the body arrived: the app reads that itself
            self._scope.setdefault("state", {})[_GONE_STATE_KEY] = True  # type: ignore[typeddict-unknown-key]
        elif message["type"] == "http.request" and not message.get("more_body", False):
            self._body_done = True
            self.watcher = asyncio.create_task(self._watch(), name="llmlb-disconnect-watch")
        return message

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self.gone.set()
        self._on_gone()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.completed = True
        await self._send(message)

    @property
    def abandoned(self) -> bool:
        """The client left before it had the whole response."""
        return self.gone.is_set() and not self.completed

    async def close(self) -> None:
        if self.watcher is not None and not self.watcher.done():
            self.watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.watcher


class DisconnectMiddleware:
    """Cancel a request's handler when its client disconnects before the response started."""

    def __init__(self, app: ASGIApp, on_abandoned: Callable[[], None] | None = None) -> None:
        self.app = app
        self.on_abandoned = on_abandoned

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cancelled_by_us = False

        def on_gone() -> None:
            nonlocal cancelled_by_us
            if not exchange.started and not task.done():
                cancelled_by_us = True
                task.cancel()

        async def run_app() -> None:
            await self.app(scope, exchange.receive, exchange.send)

        exchange = _Exchange(scope, receive, send, on_gone)
        task = asyncio.create_task(run_app())
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if not cancelled_by_us or (current is not None and current.cancelling()):
                raise  # the server itself is cancelling this request
            log.info(
                "client left %s %r before the answer: handler cancelled", scope.get("method"), scope["path"]
            )
            with contextlib.suppress(Exception):  # the server drops it: nobody is listening
                await send({"type": "http.response.start", "status": CLIENT_CLOSED_REQUEST, "headers": []})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await exchange.close()
            if exchange.abandoned and self.on_abandoned is not None:
                self.on_abandoned()
