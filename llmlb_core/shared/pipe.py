"""The hot path's Redis connection: Lua scripts by ``EVALSHA``, pipelined on one connection
(:class:`llmlb_core.shared.resp.Connection`).

A slot claim is one ``EVALSHA`` of a script loaded once per connection; redis-py's machinery
around a command (connection pool, retry wrapper, encoder, response callbacks) cost about
100 us of router CPU each, two thirds of what sharing the slots may cost a chat request in all
(``bench.replicas``). Concurrent claims share the connection; their replies come in order.

Failures are the link's: a refused or broken connection, or a reply later than
``CALL_TIMEOUT_S``, fails every call under way with :class:`SharedDown` and marks the link down
(one warning line); the next call after the link is up again opens a new connection and loads
the scripts again (a restarted Redis has lost them).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

import hiredis

from llmlb_core.shared.link import CALL_TIMEOUT_S, RedisLink, SharedDown
from llmlb_core.shared.resp import Arg, Connection, ConnectionFailed, Orphan, command, connect


class ScriptPipe:
    """Run the given Lua scripts on one pipelined connection (see the module docstring)."""

    def __init__(self, link: RedisLink, scripts: Sequence[str]) -> None:
        self._link = link
        self._scripts = [s.encode() for s in scripts]
        self.shas = [hashlib.sha1(s).hexdigest() for s in self._scripts]
        self._conn: Connection | None = None
        self._connecting: asyncio.Future[Connection] | None = None
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
        try:
            return await conn.request(command("EVALSHA", sha, len(keys), *keys, *args), orphan)
        except ConnectionFailed:
            raise SharedDown(self._link.shown) from None
        except hiredis.ReplyError as exc:
            if "NOSCRIPT" not in str(exc):
                raise  # a bug in a script
            conn.fail(exc)  # the scripts were flushed: a new connection loads them again
            raise SharedDown(self._link.shown) from None

    async def _connect(self) -> Connection:
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        self._connecting = connecting = asyncio.get_running_loop().create_future()
        try:
            conn = await connect(
                self._link.url,
                lambda: Connection(self._link.went_down),
                timeout_s=CALL_TIMEOUT_S,
                setup=[command("SCRIPT", "LOAD", script) for script in self._scripts],
            )
        except BaseException as exc:
            connecting.set_exception(SharedDown(self._link.shown))
            connecting.exception()  # retrieved: no "never retrieved" warning
            self._connecting = None
            if not isinstance(exc, asyncio.CancelledError):
                self._link.went_down(exc)
            raise SharedDown(self._link.shown) from None
        self._conn = conn
        self._connecting = None
        connecting.set_result(conn)
        if self._watch is None:
            self._watch_replies()
        return conn

    def _watch_replies(self) -> None:
        """A reply later than CALL_TIMEOUT_S: the connection counts as broken (checked twice a
        timeout, not per call)."""
        conn = self._conn
        if conn is not None and not conn.closed and conn.late(CALL_TIMEOUT_S):
            conn.fail(TimeoutError(f"no answer from redis within {CALL_TIMEOUT_S:g}s"))
        self._watch = asyncio.get_running_loop().call_later(CALL_TIMEOUT_S / 2, self._watch_replies)

    def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
