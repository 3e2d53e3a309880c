"""SQLite persistence for API keys, nodes, admin-registered models and endpoints (one file in
data_dir): the :class:`~llmlb_core.storage.interfaces.Storage` the router uses today.

Writes are rare (admin actions, node registration), so a plain ``sqlite3`` connection in WAL
mode is used from the event loop; each write is one short transaction. Hot paths (auth, node
selection) read in-memory copies that the owners keep in sync with this store.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlb_core.storage.interfaces import EndpointEntry, KeyRow, ModelRow, NodeRow, Storage
from llmlb_core.storage.secretbox import HOW_TO_SET, SecretBox, SecretKeyError

log = logging.getLogger("llmlb.store")

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    node_id TEXT
);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    registered_at REAL NOT NULL,
    last_seen_at REAL NOT NULL,
    owner_key_id TEXT,
    deregistered_at REAL
);
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY,
    capabilities TEXT NOT NULL,
    defaults TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
);
"""

# Columns added after the first release: (table, column, declaration), added to older databases.
MIGRATIONS: tuple[tuple[str, str, str], ...] = (
    ("api_keys", "node_id", "TEXT"),  # a node-scope key bound to one node id
    ("nodes", "owner_key_id", "TEXT"),  # the key that first registered the node id
    ("nodes", "deregistered_at", "REAL"),  # set: not listed, but the id stays its owner's
)


class Store:
    """The router's :class:`~llmlb_core.storage.interfaces.Storage` in one SQLite file (mode 0600).

    Beyond the protocol it seals endpoint keys (``endpoint_box``, set by
    :func:`llmlb_core.storage.secretbox.protect_endpoint_keys`) and keeps small facts in ``store_meta``.
    """

    def __init__(self, path: Path) -> None:
        existed = path.exists()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not existed:  # created private: never readable by others, not even for a moment
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # Deleted and overwritten content (an endpoint key that was re-encrypted) is zeroed.
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(SCHEMA)
        secure_permissions(path, announce=existed)
        # Endpoint keys: sealed with this box when the operator set secret_key (see secretbox.py).
        self.endpoint_box: SecretBox | None = None
        self._warned_plaintext = False
        self._migrate()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def _migrate(self) -> None:
        for table, column, decl in MIGRATIONS:
            present = {row[1] for row in self._exec(f"PRAGMA table_info({table})").fetchall()}
            if column not in present:
                self._exec(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")

    # --- API keys -------------------------------------------------------------------------
    def add_key(self, row: KeyRow) -> None:
        self._exec(
            "INSERT INTO api_keys (id, name, key_hash, prefix, scopes, created_at, expires_at, node_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row.id,
                row.name,
                row.key_hash,
                row.prefix,
                json.dumps(row.scopes),
                row.created_at,
                row.expires_at,
                row.node_id,
            ),
        )

    def list_keys(self) -> list[KeyRow]:
        rows = self._exec(
            "SELECT id, name, key_hash, prefix, scopes, created_at, expires_at, revoked_at, node_id"
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
                node_id=r[8],
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
    def upsert_node(
        self, node_id: str, record: dict[str, Any], now: float, owner_key_id: str | None = None
    ) -> None:
        self._exec(
            "INSERT INTO nodes (id, record, registered_at, last_seen_at, owner_key_id)"
            " VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET record = excluded.record,"
            " registered_at = excluded.registered_at, last_seen_at = excluded.last_seen_at,"
            " owner_key_id = excluded.owner_key_id, deregistered_at = NULL",
            (node_id, json.dumps(record), now, now, owner_key_id),
        )

    def mark_node_deregistered(self, node_id: str, now: float) -> None:
        """The node left: no longer listed, but its id stays claimed by its owner."""
        self._exec("UPDATE nodes SET deregistered_at = ? WHERE id = ?", (now, node_id))

    def delete_node(self, node_id: str) -> bool:
        return self._exec("DELETE FROM nodes WHERE id = ?", (node_id,)).rowcount > 0

    def list_nodes(self) -> list[NodeRow]:
        rows = self._exec(
            "SELECT id, record, registered_at, last_seen_at, owner_key_id, deregistered_at"
            " FROM nodes ORDER BY registered_at"
        ).fetchall()
        return [
            NodeRow(
                id=r[0],
                record=json.loads(r[1]),
                registered_at=r[2],
                last_seen_at=r[3],
                owner_key_id=r[4],
                deregistered_at=r[5],
            )
            for r in rows
        ]

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
    # returned by an API or logged. With ``endpoint_box`` set (``secret_key``) the key is stored
    # sealed, as ``api_key_sealed`` instead of ``api_key``; without it in plain text, and the
    # router warns once (see llmlb_core/storage/secretbox.py).
    def _endpoints_table(self) -> None:
        self._exec(ENDPOINTS_SCHEMA)

    def upsert_endpoint(self, name: str, record: dict[str, Any], created_at: float) -> None:
        self._endpoints_table()
        self._exec(
            "INSERT INTO endpoints (name, record, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET record = excluded.record",
            (name, json.dumps(self._seal(record)), created_at),
        )

    def delete_endpoint(self, name: str) -> bool:
        self._endpoints_table()
        return self._exec("DELETE FROM endpoints WHERE name = ?", (name,)).rowcount > 0

    def list_endpoints(self) -> list[EndpointEntry]:
        """Every endpoint with its key in clear (:class:`SecretKeyError` when one cannot be opened)."""
        return [(name, self._open(name, record), created) for name, record, created in self._endpoint_rows()]

    def count_endpoint_keys(self, *, sealed: bool) -> int:
        """Endpoints whose key is stored sealed (``sealed``) or in plain text (not ``sealed``)."""
        field = SEALED_FIELD if sealed else "api_key"
        return sum(1 for _, record, _ in self._endpoint_rows() if record.get(field))

    def seal_plaintext_endpoint_keys(self) -> int:
        """Re-store every plain-text key sealed (``endpoint_box`` must be set); how many were."""
        assert self.endpoint_box is not None
        plain = [(name, record) for name, record, _ in self._endpoint_rows() if record.get("api_key")]
        sealed = [(json.dumps(self._seal(record)), name) for name, record in plain]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("UPDATE endpoints SET record = ? WHERE name = ?", sealed)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            # Move the change into the database file, and out of the write-ahead log.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return len(plain)

    def warn_plaintext_endpoint_keys(self) -> None:
        if not self._warned_plaintext:
            self._warned_plaintext = True
            log.warning("endpoint API keys are stored in plain text in %s; %s", self.path, HOW_TO_SET)

    def get_meta(self, key: str) -> str | None:
        self._exec(META_SCHEMA)
        row = self._exec("SELECT value FROM store_meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._exec(META_SCHEMA)
        self._exec(
            "INSERT INTO store_meta (key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _endpoint_rows(self) -> list[EndpointEntry]:
        self._endpoints_table()
        rows = self._exec("SELECT name, record, created_at FROM endpoints ORDER BY created_at").fetchall()
        return [(r[0], json.loads(r[1]), r[2]) for r in rows]

    def _seal(self, record: dict[str, Any]) -> dict[str, Any]:
        key = record.get("api_key")
        if not key:
            return record
        if self.endpoint_box is None:
            self.warn_plaintext_endpoint_keys()
            return record
        sealed = {k: v for k, v in record.items() if k != "api_key"}
        sealed[SEALED_FIELD] = self.endpoint_box.seal(key)
        return sealed

    def _open(self, name: str, record: dict[str, Any]) -> dict[str, Any]:
        token = record.pop(SEALED_FIELD, None)
        if token is None:
            return record
        if self.endpoint_box is None:
            raise SecretKeyError(
                f"the key of endpoint '{name}' is encrypted; set secret_key or LLMLB_SECRET_KEY to the "
                "secret it was encrypted with"
            )
        record["api_key"] = self.endpoint_box.open(token, what=f"the key of endpoint '{name}'")
        return record


if TYPE_CHECKING:
    _implements_storage: type[Storage] = Store  # mypy: Store provides every Storage method


ENDPOINTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS endpoints (
    name TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    created_at REAL NOT NULL
)
"""

META_SCHEMA = """
CREATE TABLE IF NOT EXISTS store_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
)
"""
SEALED_FIELD = "api_key_sealed"
PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


def secure_permissions(db_path: Path, *, announce: bool) -> None:
    """Data dir 0700; the database and its -wal/-shm 0600 (SQLite gives those the database's mode).

    ``announce``: log one line when an existing install was tightened. A directory not owned by
    this user, or a shared one (sticky bit, e.g. /tmp), is left alone with a warning.
    """
    changed: list[str] = []
    directory = db_path.parent
    try:
        info = directory.stat()
        if info.st_mode & 0o077:
            if info.st_uid != os.getuid() or info.st_mode & stat.S_ISVTX:
                log.warning(
                    "data dir %s is open to other users and shared or not ours: keep the database in a "
                    "directory of its own (data_dir), mode 0700",
                    directory,
                )
            else:
                directory.chmod(PRIVATE_DIR)
                changed.append(f"{directory} {stat.S_IMODE(info.st_mode):o}->700")
        for path in (db_path, *(db_path.with_name(db_path.name + suffix) for suffix in ("-wal", "-shm"))):
            if path.exists() and (mode := stat.S_IMODE(path.stat().st_mode)) & 0o077:
                path.chmod(PRIVATE_FILE)
                changed.append(f"{path.name} {mode:o}->600")
    except OSError as exc:
        log.warning("cannot make %s private (%s): make it mode 0700 yourself", directory, exc.strerror)
        return
    if changed and announce:
        log.warning("tightened permissions (secrets live here): %s", ", ".join(changed))
