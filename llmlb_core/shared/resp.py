"""Redis connections of our own, for the two uses where redis-py falls short: the slot scripts
on the hot path (:mod:`llmlb_core.shared.pipe`: redis-py costs about 100 us of CPU per command)
and the change channel (:mod:`llmlb_core.shared.link`: a redis-py subscription being read
under uvloop, the router's event loop, does not stop when cancelled, so a router would hang
at shutdown).

One :class:`Connection` is an :class:`asyncio.Protocol`: commands are written as they come and
their replies, read in order, resolve the callers' futures; ``hiredis.Reader`` (the C parser
redis-py itself uses) parses them, so the only code here is the framing. A connection in
subscribe mode hands each pushed message to ``on_push``. :func:`connect` opens one for a
``redis://`` or ``rediss://`` URL (password, database, TLS with ``ssl_ca_certs`` /
``ssl_cert_reqs`` read from the URL as redis-py reads them).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

Arg = str | int | bytes
# Called with the reply of a call whose caller stopped waiting (e.g. its client left).
Orphan = Callable[[Any], None]


class ConnectionFailed(Exception):
    """The connection broke, or a reply came too late: every call under way fails with it."""


def command(*args: Arg) -> bytes:
    """One command in RESP."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def tls_context(query: str) -> ssl.SSLContext:
    """For ``rediss://``: verified against the system's CAs, or ``ssl_ca_certs=PATH`` (a private
    CA); ``ssl_cert_reqs=none`` turns verification off."""
    options = parse_qs(query)
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs", [None])[0])
    if options.get("ssl_cert_reqs", [""])[0].lower() in ("none", "cert_none"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class Connection(asyncio.Protocol):
    def __init__(
        self,
        on_lost: Callable[[BaseException], None],
        on_push: Callable[[bytes], None] | None = None,
    ) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.pending: deque[tuple[asyncio.Future[Any], Orphan | None, float]] = deque()
        self.closed = False
        self._on_lost = on_lost
        self._on_push = on_push

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def request(self, data: bytes, orphan: Orphan | None = None) -> asyncio.Future[Any]:
        """Send ``data`` (one command); the future of its reply."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.closed or self.transport is None:
            future.set_exception(ConnectionFailed("the connection is closed"))
            return future
        self.pending.append((future, orphan, time.monotonic()))
        self.transport.write(data)
        return future

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if self._on_push is not None and isinstance(reply, list) and reply and reply[0] == b"message":
                self._on_push(reply[2])
                continue
            if not self.pending:
                continue  # nothing asked for it (cannot happen with a sane server)
            future, orphan, _ = self.pending.popleft()
            if future.cancelled():
                if orphan is not None and not isinstance(reply, hiredis.ReplyError):
                    orphan(reply)
            elif isinstance(reply, hiredis.ReplyError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def late(self, after_s: float) -> bool:
        """Whether the oldest call under way has waited longer than ``after_s``."""
        return bool(self.pending) and time.monotonic() - self.pending[0][2] > after_s

    def connection_lost(self, exc: BaseException | None) -> None:
        self.fail(exc or ConnectionResetError("redis closed the connection"))

    def fail(self, exc: BaseException) -> None:
        """Close, fail every call under way, and tell ``on_lost`` (once)."""
        if self.closed:
            return
        self.close()
        self._on_lost(exc)

    def close(self) -> None:
        """Close without telling anyone (a deliberate close)."""
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        while self.pending:
            future, _, _ = self.pending.popleft()
            if not future.done():
                future.set_exception(ConnectionFailed("the connection closed"))


async def connect(
    url: str, make: Callable[[], Connection], *, timeout_s: float, setup: list[bytes]
) -> Connection:
    """A connection to ``url``, authenticated, on its database, with ``setup`` (commands) done;
    :class:`ConnectionFailed` (or the server's error) otherwise, within ``timeout_s``."""
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    context = tls_context(parts.query) if parts.scheme == "rediss" else None
    first: list[bytes] = []
    if parts.password is not None:
        user = unquote(parts.username) if parts.username else None
        first.append(
            command("AUTH", user, unquote(parts.password))
            if user
            else command("AUTH", unquote(parts.password))
        )
    db = parts.path.strip("/")
    if db and db != "0":
        first.append(command("SELECT", db))
    conn: Connection | None = None
    try:
        async with asyncio.timeout(timeout_s):
            _, conn = await loop.create_connection(
                make, parts.hostname or "127.0.0.1", parts.port or 6379, ssl=context
            )
            futures = [conn.request(message) for message in (*first, *setup)]
            for future in futures:
                await future
    except BaseException:
        if conn is not None:
            conn.close()
        raise
    return conn
