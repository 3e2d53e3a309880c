"""Opening the router's store from ``database_url``: SQLite (the embedded default, a file in
``data_dir``) or PostgreSQL (:mod:`llmlb_core.storage.urls`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from llmlb_core.storage.sql import SqlStore
from llmlb_core.storage.urls import DatabaseTarget, parse_database_url

if TYPE_CHECKING:
    from llmlb_core.storage.blobs import SharedTable


def open_target(target: DatabaseTarget) -> SqlStore:
    if target.kind == "postgresql":
        from llmlb_core.storage.postgres import PostgresStore  # psycopg only when it is used

        return PostgresStore(target.url)
    from llmlb_core.storage.sqlite import Store

    assert target.path is not None
    return Store(target.path)


def open_url(url: str | None, data_path: Path, *, allow_path: bool = False) -> SqlStore:
    """The store ``url`` names (empty: SQLite in ``data_path``); SettingsError when it is bad."""
    return open_target(parse_database_url(url, data_path, allow_path=allow_path))


def open_shared(target: DatabaseTarget, store: SqlStore) -> SharedTable | None:
    """The values routers share (``CapabilityContext.shared``): the ``shared_blobs`` table when
    ``store`` (opened from ``target``) is PostgreSQL, where several routers may run; None with
    SQLite (one router)."""
    if target.kind != "postgresql":
        return None
    from llmlb_core.storage.blobs import SharedTable
    from llmlb_core.storage.postgres import PostgresStore

    assert isinstance(store, PostgresStore)
    return SharedTable(store)
