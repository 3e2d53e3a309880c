"""The hot path's Redis connection: Lua scripts by ``EVALSHA``, pipelined on one connection.

redis-py costs about 100 us of router CPU per command here (connection pool, retry wrapper,
encoder, response callbacks: ``bench.replicas``), two thirds of what sharing the slots may cost
a chat request in all. A slot claim needs none of that: it is one ``EVALSHA`` of a script loaded
once per connection. This is an :class:`asyncio.Protocol` that writes commands as they come
(concurrent claims share one connection, their replies read in order) and parses replies with
``hiredis.Reader`` (the C parser redis-py itself uses), so the only code here is the framing.
Everything else (pub/sub, hashes, liveness) goes through redis-py (:mod:`llmlb_core.shared.link`).

Failures are the link's: a refused or broken connection, or a reply later than
``CALL_TIMEOUT_S``, fails every call under way with :class:`SharedDown` and marks the link down
(one warning line); the next call after the link is up again opens a new connection and loads
the scripts again (a restarted Redis has lost them).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

from llmlb_core.shared.link import CALL_TIMEOUT_S, RedisLink, SharedDown

Arg = str | int | bytes
# Called with the reply of a call whose caller stopped waiting (e.g. its client left).
Orphan = Callable[[Any], None]


def command(*args: Arg) -> bytes:
    """One command in RESP."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def tls_context(query: str) -> ssl.SSLContext:
    """For ``rediss://``: verified against the system's CAs, or ``ssl_ca_certs=PATH`` (a private
    CA, as redis-py reads it from the same URL); ``ssl_cert_reqs=none`` turns verification off."""
    options = parse_qs(query)
    context = ssl.create_default_context(cafile=options.get("ssl_ca_certs", [None])[0])
    if options.get("ssl_cert_reqs", [""])[0].lower() in ("none", "cert_none"):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class _Connection(asyncio.Protocol):
    def __init__(self, on_lost: Callable[[BaseException], None]) -> None:
        self.transport: asyncio.Transport | None = None
        self.reader = hiredis.Reader()
        self.pending: deque[tuple[asyncio.Future[Any], Orphan | None, float]] = deque()
        self.closed = False
        self._on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            future, orphan, _ = self.pending.popleft()
            if future.cancelled():
                if orphan is not None and not isinstance(reply, hiredis.ReplyError):
                    orphan(reply)
            elif isinstance(reply, hiredis.ReplyError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.fail(exc or ConnectionResetError("redis closed the connection"))

    def fail(self, exc: BaseException) -> None:
        if self.closed:
            return
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        while self.pending:
            future, _, _ = self.pending.popleft()
            if not future.done():
                future.set_exception(SharedDown(str(exc)))
        self._on_lost(exc)


class ScriptPipe:
    """Run the given Lua scripts on one pipelined connection (see the module docstring)."""

    def __init__(self, link: RedisLink, scripts: Sequence[str]) -> None:
        self._link = link
        self._scripts = [s.encode() for s in scripts]
        self.shas = [hashlib.sha1(s).hexdigest() for s in self._scripts]
        self._conn: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._watch: asyncio.TimerHandle | None = None
        link.on_stop(self.close)

    async def evalsha(
        self, sha: str, keys: Sequence[str], args: Sequence[Arg], orphan: Orphan | None = None
    ) -> Any:
        """The script's reply; :class:`SharedDown` when Redis is unreachable (at once while the
        link is down). ``orphan``: called with the reply if the caller is cancelled first."""
        if not self._link.up:
            raise SharedDown(self._link.shown)
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connect()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        conn.pending.append((future, orphan, time.monotonic()))
        assert conn.transport is not None
        conn.transport.write(command("EVALSHA", sha, len(keys), *keys, *args))
        try:
            return await future
        except hiredis.ReplyError as exc:
            if "NOSCRIPT" not in str(exc):
                raise  # a bug in a script
            conn.fail(exc)  # the scripts were flushed: a new connection loads them again
            raise SharedDown(self._link.shown) from None

    async def _connect(self) -> _Connection:
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_future()
            try:
                conn = await self._open()
            except BaseException as exc:
                self._connecting.set_exception(SharedDown(str(exc)))
                self._connecting.exception()  # retrieved: no "never retrieved" warning
                self._connecting = None
                if not isinstance(exc, asyncio.CancelledError):
                    self._link.went_down(exc)
                raise SharedDown(self._link.shown) from None
            self._conn = conn
            self._connecting.set_result(conn)
            self._connecting = None
            return conn
        return await asyncio.shield(self._connecting)

    async def _open(self) -> _Connection:
        parts = urlsplit(self._link.url)
        loop = asyncio.get_running_loop()
        context = tls_context(parts.query) if parts.scheme == "rediss" else None
        async with asyncio.timeout(CALL_TIMEOUT_S):
            _, conn = await loop.create_connection(
                lambda: _Connection(self._lost),
                parts.hostname or "127.0.0.1",
                parts.port or 6379,
                ssl=context,
            )
            setup: list[bytes] = []
            if parts.password is not None:
                user = unquote(parts.username) if parts.username else None
                auth = ("AUTH", user, unquote(parts.password)) if user else ("AUTH", unquote(parts.password))
                setup.append(command(*auth))
            db = parts.path.strip("/")
            if db and db != "0":
                setup.append(command("SELECT", db))
            setup += [command("SCRIPT", "LOAD", script) for script in self._scripts]
            futures = []
            for message in setup:
                future: asyncio.Future[Any] = loop.create_future()
                conn.pending.append((future, None, time.monotonic()))
                futures.append(future)
                assert conn.transport is not None
                conn.transport.write(message)
            try:
                for future in futures:
                    await future
            except BaseException:
                conn.fail(ConnectionAbortedError("redis refused the connection's set-up"))
                raise
        if self._watch is None:
            self._watch_replies()
        return conn

    def _watch_replies(self) -> None:
        """A reply later than CALL_TIMEOUT_S: the connection counts as broken (checked twice a
        timeout, not per call)."""
        conn = self._conn
        late = conn is not None and conn.pending and time.monotonic() - conn.pending[0][2] > CALL_TIMEOUT_S
        if conn is not None and not conn.closed and late:
            conn.fail(TimeoutError(f"no answer from redis within {CALL_TIMEOUT_S:g}s"))
        self._watch = asyncio.get_running_loop().call_later(CALL_TIMEOUT_S / 2, self._watch_replies)

    def _lost(self, exc: BaseException) -> None:
        self._link.went_down(exc)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.closed = True
                if self._conn.transport is not None:
                    self._conn.transport.close()
            self._conn = None
