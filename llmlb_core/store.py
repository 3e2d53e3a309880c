"""SQLite persistence for API keys, nodes and admin-registered models (one file in data_dir).

Writes are rare (admin actions, node registration), so a plain ``sqlite3`` connection in WAL
mode is used from the event loop; each write is one short transaction. Hot paths (auth, node
selection) read in-memory copies that the owners keep in sync with this store.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import msgspec

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL
);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    registered_at REAL NOT NULL,
    last_seen_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY,
    capabilities TEXT NOT NULL,
    defaults TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
);
"""


class KeyRow(msgspec.Struct, kw_only=True):
    id: str
    name: str
    key_hash: str
    prefix: str
    scopes: list[str]
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None


class ModelRow(msgspec.Struct, kw_only=True):
    id: str
    capabilities: list[str]
    defaults: dict[str, Any]
    description: str = ""
    created_at: float = 0.0


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    # --- API keys -------------------------------------------------------------------------
    def add_key(self, row: KeyRow) -> None:
        self._exec(
            "INSERT INTO api_keys (id, name, key_hash, prefix, scopes, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                row.id,
                row.name,
                row.key_hash,
                row.prefix,
                json.dumps(row.scopes),
                row.created_at,
                row.expires_at,
            ),
        )

    def list_keys(self) -> list[KeyRow]:
        rows = self._exec(
            "SELECT id, name, key_hash, prefix, scopes, created_at, expires_at, revoked_at"
            " FROM api_keys ORDER BY created_at"
        ).fetchall()
        return [
            KeyRow(
                id=r[0],
                name=r[1],
                key_hash=r[2],
                prefix=r[3],
                scopes=json.loads(r[4]),
                created_at=r[5],
                expires_at=r[6],
                revoked_at=r[7],
            )
            for r in rows
        ]

    def revoke_key(self, key_id: str) -> bool:
        cur = self._exec(
            "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), key_id),
        )
        return cur.rowcount > 0

    def count_keys(self) -> int:
        return int(self._exec("SELECT COUNT(*) FROM api_keys").fetchone()[0])

    # --- nodes ----------------------------------------------------------------------------
    def upsert_node(self, node_id: str, record: dict[str, Any], now: float) -> None:
        self._exec(
            "INSERT INTO nodes (id, record, registered_at, last_seen_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET record = excluded.record,"
            " registered_at = excluded.registered_at, last_seen_at = excluded.last_seen_at",
            (node_id, json.dumps(record), now, now),
        )

    def touch_node(self, node_id: str, now: float) -> None:
        self._exec("UPDATE nodes SET last_seen_at = ? WHERE id = ?", (now, node_id))

    def delete_node(self, node_id: str) -> bool:
        return self._exec("DELETE FROM nodes WHERE id = ?", (node_id,)).rowcount > 0

    def list_nodes(self) -> list[tuple[str, dict[str, Any], float, float]]:
        rows = self._exec(
            "SELECT id, record, registered_at, last_seen_at FROM nodes ORDER BY registered_at"
        ).fetchall()
        return [(r[0], json.loads(r[1]), r[2], r[3]) for r in rows]

    # --- models ---------------------------------------------------------------------------
    def upsert_model(self, row: ModelRow) -> None:
        self._exec(
            "INSERT INTO models (id, capabilities, defaults, description, created_at)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET"
            " capabilities = excluded.capabilities, defaults = excluded.defaults,"
            " description = excluded.description",
            (row.id, json.dumps(row.capabilities), json.dumps(row.defaults), row.description, row.created_at),
        )

    def delete_model(self, model_id: str) -> bool:
        return self._exec("DELETE FROM models WHERE id = ?", (model_id,)).rowcount > 0

    def list_models(self) -> list[ModelRow]:
        rows = self._exec(
            "SELECT id, capabilities, defaults, description, created_at FROM models ORDER BY id"
        ).fetchall()
        return [
            ModelRow(
                id=r[0],
                capabilities=json.loads(r[1]),
                defaults=json.loads(r[2]),
                description=r[3],
                created_at=r[4],
            )
            for r in rows
        ]

    # --- OpenAI-compatible endpoints (``/v0/endpoints``) -------------------------------------
    # The record holds the upstream API key: the router needs it after a restart. It is never
    # returned by an API or logged; protect the database file like the config that names it.
    def _endpoints_table(self) -> None:
        self._exec(ENDPOINTS_SCHEMA)

    def upsert_endpoint(self, name: str, record: dict[str, Any], created_at: float) -> None:
        self._endpoints_table()
        self._exec(
            "INSERT INTO endpoints (name, record, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET record = excluded.record",
            (name, json.dumps(record), created_at),
        )

    def delete_endpoint(self, name: str) -> bool:
        self._endpoints_table()
        return self._exec("DELETE FROM endpoints WHERE name = ?", (name,)).rowcount > 0

    def list_endpoints(self) -> list[tuple[str, dict[str, Any], float]]:
        self._endpoints_table()
        rows = self._exec("SELECT name, record, created_at FROM endpoints ORDER BY created_at").fetchall()
        return [(r[0], json.loads(r[1]), r[2]) for r in rows]


ENDPOINTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS endpoints (
    name TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""
