"""One router's link to Redis: the client, whether Redis answers now, and the change channel.

Every call into Redis goes through :meth:`RedisLink.run`. A failure (refused, reset, timed out)
marks the link *down* with one warning line, and until Redis answers a ping again every caller
gets :class:`SharedDown` at once, without a network wait: the router serves on its own
accounting meanwhile (docs/scaling.md, "Redis down"). The watch task pings every
``RETRY_S``; when Redis is back it logs one line and, once subscribed to the channel again,
runs the ``on_back`` callbacks, which push this router's state again and re-read everyone
else's (messages sent while it was away are lost: Redis pub/sub keeps nothing). The
subscription is a connection of our own (:mod:`llmlb_core.shared.resp`); the rest is redis-py.

Messages on :data:`CHANNEL` are small JSON objects ``{"o": origin router, "k": kind, ...}``;
each router ignores its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import hiredis
import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from llmlb_core.config.settings import SettingsError
from llmlb_core.shared.resp import Connection, ConnectionFailed, command, connect
from llmlb_core.storage.urls import redact_url

log = logging.getLogger("llmlb.shared")

T = TypeVar("T")

PREFIX = "llmlb:"
CHANNEL = PREFIX + "events"
REDIS_SCHEMES = ("redis", "rediss")
# How long a call may take before Redis counts as down (a router never waits longer on it).
CALL_TIMEOUT_S = 1.0
RETRY_S = 1.0

Handler = Callable[[dict[str, Any]], None]


class SharedDown(Exception):
    """Redis is unreachable: the caller goes on with this router's own state."""


def check_redis_url(url: str) -> str:
    """``url`` stripped, or a :class:`SettingsError` (one line, password masked)."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise SettingsError(f"redis_url {redact_url(text)}: {exc}") from None
    if parts.scheme not in REDIS_SCHEMES or not parts.hostname:
        raise SettingsError(
            f"redis_url {redact_url(text)!r}: expected redis://[:password@]host:port/db or rediss:// (TLS)"
        )
    return text


class RedisLink:
    def __init__(self, url: str, *, router_id: str | None = None) -> None:
        self.url = check_redis_url(url)
        self.shown = redact_url(self.url)
        self.router_id = router_id or secrets.token_hex(6)
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            self.url,
            socket_timeout=CALL_TIMEOUT_S,
            socket_connect_timeout=CALL_TIMEOUT_S,
            retry_on_timeout=False,
        )
        self.up = False
        self._ever_up = False
        self._reachable = asyncio.Event()
        self._stale = asyncio.Event()
        self._handlers: dict[str, Handler] = {}
        self._on_back: list[Callable[[], Awaitable[None]]] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._closers: list[Callable[[], None]] = []
        self._encode = msgspec.json.Encoder().encode
        self._decode = msgspec.json.Decoder(dict[str, Any]).decode

    # --- wiring --------------------------------------------------------------------------
    def on(self, kind: str, handler: Handler) -> None:
        """Call ``handler(message)`` for every message of ``kind`` another router sends."""
        self._handlers[kind] = handler

    def on_back(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run ``callback`` at the first contact and whenever Redis answers after being down
        (once subscribed to the channel again)."""
        self._on_back.append(callback)

    def on_stop(self, close: Callable[[], None]) -> None:
        """Call ``close`` when the link stops (other connections to the same Redis)."""
        self._closers.append(close)

    async def start(self) -> None:
        """Connect (a Redis that is down now is retried in the background: never fatal)."""
        await self._check()
        self._tasks = [
            asyncio.create_task(self._watch(), name="llmlb-redis-watch"),
            asyncio.create_task(self._listen(), name="llmlb-redis-listen"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=CALL_TIMEOUT_S)
        self._tasks = []
        self.up = False
        self._reachable.clear()
        for close in self._closers:
            close()
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()

    # --- calls ---------------------------------------------------------------------------
    async def run(self, call: Awaitable[T]) -> T:
        """Await one Redis call; :class:`SharedDown` (at once, while down) when it fails."""
        if not self.up:
            if asyncio.iscoroutine(call):
                call.close()
            raise SharedDown(self.shown)
        try:
            return await call
        except (RedisError, OSError) as exc:
            self.went_down(exc)
            raise SharedDown(self.shown) from None

    def message(self, kind: str, **fields: Any) -> bytes:
        """A message of ``kind`` from this router, as sent on :data:`CHANNEL`."""
        return self._encode({"o": self.router_id, "k": kind, **fields})

    async def publish(self, kind: str, **fields: Any) -> None:
        """Tell every other router (fire and forget; a router that misses it resyncs later)."""
        with contextlib.suppress(SharedDown):
            await self.run(self.client.publish(CHANNEL, self.message(kind, **fields)))

    def went_down(self, exc: BaseException) -> None:
        """Redis failed a call: one warning line (the first time), then SharedDown at once for
        every caller until the watch task reaches it again."""
        self._reachable.clear()
        self._stale.set()  # the subscription may have missed messages: renew it, resync
        if self.up:
            self.up = False
            log.warning(
                "redis %s unreachable (%s): this router serves on its own accounting until it "
                "returns; other routers do not see its changes meanwhile",
                self.shown,
                type(exc).__name__ if not str(exc) else str(exc).splitlines()[0],
            )

    async def _check(self) -> bool:
        try:
            await self.client.ping()
        except (RedisError, OSError) as exc:
            if not self._ever_up:
                log.warning(
                    "redis %s unreachable at start (%s); retrying every %gs", self.shown, exc, RETRY_S
                )
                self._ever_up = True  # warn once, not at every retry
            return False
        if not self.up:
            log.info("redis %s reachable: sharing live state with the other routers", self.shown)
        self.up = self._ever_up = True
        self._reachable.set()
        return True

    async def _resync(self) -> None:
        for callback in self._on_back:
            try:
                await callback()
            except SharedDown:
                return
            except Exception:  # a bug in one resync must not stop the others
                log.exception("resynchronising with redis failed")

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(RETRY_S)
            if not self.up:
                await self._check()

    async def _listen(self) -> None:
        """Receive the other routers' messages. After any failure (seen here or by a call), it
        waits for Redis, subscribes again, and only then resyncs: nothing sent from then on is
        missed, and what was sent meanwhile is re-read. (Its own connection, not redis-py's
        pub/sub: :mod:`llmlb_core.shared.resp` says why.)"""
        while True:
            await self._reachable.wait()
            try:
                conn = await connect(
                    self.url,
                    lambda: Connection(self.went_down, on_push=self._dispatch),
                    timeout_s=CALL_TIMEOUT_S,
                    setup=[command("SUBSCRIBE", CHANNEL)],
                )
            except (OSError, TimeoutError, ConnectionFailed, hiredis.ReplyError) as exc:
                self.went_down(exc)
                await asyncio.sleep(RETRY_S / 4)
                continue
            self._stale.clear()
            try:
                await self._resync()
                await self._stale.wait()  # a failure anywhere: subscribe again
            finally:
                conn.close()

    def _dispatch(self, data: Any) -> None:
        if not isinstance(data, bytes):
            return
        try:
            message = self._decode(data)
        except msgspec.DecodeError:
            log.warning("ignoring an unreadable message on %s", CHANNEL)
            return
        if message.get("o") == self.router_id:
            return
        handler = self._handlers.get(str(message.get("k")))
        if handler is None:
            return
        try:
            handler(message)
        except (msgspec.ValidationError, KeyError, TypeError, ValueError) as exc:
            # Fields missing or of the wrong type: one line, the listener goes on.
            log.warning("ignoring a malformed %s message on %s: %s", message.get("k"), CHANNEL, exc)
        except Exception:  # a bug: its traceback, but one bad message must not stop the listener
            log.exception("handling a %s message from router %s failed", message.get("k"), message.get("o"))
