"""Opening the router's store from ``database_url``: SQLite (the embedded default, a file in
``data_dir``) or PostgreSQL (:mod:`llmlb_core.storage.urls`)."""

from __future__ import annotations

from pathlib import Path

from llmlb_core.storage.sql import SqlStore
from llmlb_core.storage.urls import DatabaseTarget, parse_database_url


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
