"""The :class:`~llmlb_core.capability.SharedBlobs` of a router whose database is PostgreSQL:
the ``shared_blobs`` table (migration 2), which every router on the database reads and writes.

The statements are :class:`~llmlb_core.storage.postgres.PostgresStore` methods (its one
connection and lock, reconnection, and the 503 ``database_unavailable`` while the database is
down); here they run on a worker thread (a value may be an image of several MB), and a
background task deletes expired rows. Expiry is by the database's clock, so routers whose
clocks differ still agree on when a value ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from llmlb_core.storage.postgres import DatabaseUnavailable, PostgresStore

log = logging.getLogger("llmlb.storage")

# How often expired rows are deleted (they are never read in between).
PURGE_INTERVAL_S = 60.0


class SharedTable:
    """``CapabilityContext.shared`` on PostgreSQL (the router checks it is a ``SharedBlobs``)."""

    def __init__(self, store: PostgresStore, purge_interval_s: float = PURGE_INTERVAL_S) -> None:
        self._store = store
        self._interval_s = purge_interval_s
        self._purge: asyncio.Task[None] | None = None

    async def put(self, namespace: str, key: str, data: bytes, ttl_s: float) -> None:
        await asyncio.to_thread(self._store.blob_put, namespace, key, data, ttl_s)

    async def get(self, namespace: str, key: str) -> bytes | None:
        return await asyncio.to_thread(self._store.blob_get, namespace, key)

    async def touch(self, namespace: str, key: str, ttl_s: float) -> bool:
        return await asyncio.to_thread(self._store.blob_touch, namespace, key, ttl_s)

    async def delete(self, namespace: str, key: str) -> bool:
        return await asyncio.to_thread(self._store.blob_delete, namespace, key)

    async def purge_expired(self) -> int:
        removed = await asyncio.to_thread(self._store.blob_purge)
        if removed:
            log.info("deleted %d expired shared value(s)", removed)
        return removed

    async def _purge_forever(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            with contextlib.suppress(DatabaseUnavailable):  # logged by the store; next round
                await self.purge_expired()

    async def start_purging(self) -> None:
        self._purge = asyncio.create_task(self._purge_forever(), name="llmlb-shared-purge")

    async def stop_purging(self) -> None:
        task, self._purge = self._purge, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
