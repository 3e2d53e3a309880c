"""The values routers share on PostgreSQL (``CapabilityContext.shared``: the ``shared_blobs``
table, :mod:`llmlb_core.storage.blobs`) against a real server: put, get, replace, touch,
delete, expiry by the database's clock, the purge, two stores (two routers) on one database, and
a clean 503 ``database_unavailable`` while the server is down. And that SQLite gets none."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg
import pytest

from llmlb_core.storage.backends import open_shared, open_url
from llmlb_core.storage.blobs import SharedTable
from llmlb_core.storage.postgres import DatabaseUnavailable, PostgresStore
from llmlb_core.storage.urls import parse_database_url
from tests.support.postgres import postgres_server


def rows(url: str) -> int:
    with psycopg.connect(url) as conn:
        return int((conn.execute("SELECT COUNT(*) FROM shared_blobs").fetchone() or (0,))[0])


def test_put_get_replace_touch_delete_and_two_routers_see_the_same(postgres_url: str) -> None:
    first, second = PostgresStore(postgres_url), PostgresStore(postgres_url)
    a, b = SharedTable(first), SharedTable(second)

    async def run() -> None:
        image = bytes(range(256)) * 8192  # 2 MiB, every byte value
        await a.put("images", "x.png", image, 60)
        assert await b.get("images", "x.png") == image  # another router reads it
        assert await b.get("other", "x.png") is None and await b.get("images", "y.png") is None
        await b.put("images", "x.png", b"new", 60)
        assert await a.get("images", "x.png") == b"new"
        assert await a.touch("images", "x.png", 60) and not await a.touch("images", "none", 60)
        assert await b.delete("images", "x.png") and not await b.delete("images", "x.png")
        assert await a.get("images", "x.png") is None

    try:
        asyncio.run(run())
    finally:
        first.close()
        second.close()


def test_values_expire_touch_slides_and_the_purge_deletes_them(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    table = SharedTable(store)

    async def run() -> None:
        await table.put("s", "gone", b"1", 0.3)
        await table.put("s", "kept", b"2", 0.3)
        await table.put("s", "long", b"3", 60)
        await asyncio.sleep(0.2)
        assert await table.touch("s", "kept", 60)  # slid: lives on
        await asyncio.sleep(0.2)
        assert await table.get("s", "gone") is None  # expired: never read again
        assert not await table.touch("s", "gone", 60)  # nor brought back
        assert await table.get("s", "kept") == b"2" and await table.get("s", "long") == b"3"
        assert rows(postgres_url) == 3  # the expired row is still there until the purge
        assert await table.purge_expired() == 1
        assert rows(postgres_url) == 2
        await table.put("s", "now", b"4", 0)  # a lifetime of 0: already over
        assert await table.get("s", "now") is None

    try:
        asyncio.run(run())
    finally:
        store.close()


def test_the_background_purge_runs_until_stopped(postgres_url: str) -> None:
    store = PostgresStore(postgres_url)
    table = SharedTable(store, purge_interval_s=0.1)

    async def run() -> None:
        await table.start_purging()
        await table.put("s", "k", b"v", 0.05)
        for _ in range(100):  # within 5 s
            await asyncio.sleep(0.05)
            if rows(postgres_url) == 0:
                break
        assert rows(postgres_url) == 0
        await table.stop_purging()
        await table.stop_purging()  # twice: nothing to stop

    try:
        asyncio.run(run())
    finally:
        store.close()


def test_while_postgresql_is_down_calls_are_a_503_and_work_again_after() -> None:
    with postgres_server() as pg:
        store = PostgresStore(pg.database())
        table = SharedTable(store, purge_interval_s=0.05)

        async def run() -> None:
            await table.put("s", "k", b"v", 60)
            await table.start_purging()
            pg.down()
            try:
                calls: list[Callable[[], Awaitable[object]]] = [
                    lambda: table.get("s", "k"),
                    lambda: table.put("s", "k", b"w", 60),
                    lambda: table.touch("s", "k", 60),
                    lambda: table.delete("s", "k"),
                    table.purge_expired,
                ]
                for call in calls:
                    with pytest.raises(DatabaseUnavailable) as caught:
                        await call()
                    assert caught.value.status == 503 and caught.value.code == "database_unavailable"
                await asyncio.sleep(0.2)  # the purge task survives failed rounds
            finally:
                pg.up()
            assert await table.get("s", "k") == b"v"
            await table.stop_purging()

        try:
            asyncio.run(run())
        finally:
            store.close()


def test_only_postgresql_shares(postgres_url: str, tmp_path: Path) -> None:
    sqlite_url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    sqlite = open_url(sqlite_url, tmp_path)
    try:
        assert open_shared(parse_database_url(sqlite_url, tmp_path), sqlite) is None
    finally:
        sqlite.close()
    pg = open_url(postgres_url, tmp_path)
    try:
        assert isinstance(open_shared(parse_database_url(postgres_url, tmp_path), pg), SharedTable)
    finally:
        pg.close()
