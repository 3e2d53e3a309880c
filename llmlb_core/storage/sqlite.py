"""SQLite persistence for API keys, nodes, admin-registered models and endpoints (one file in
data_dir): the :class:`~llmlb_core.storage.interfaces.Storage` the router uses today.

Writes are rare (admin actions, node registration), so a plain ``sqlite3`` connection in WAL
mode is used from the event loop; each write is one short transaction. Hot paths (auth, node
selection) read in-memory copies that the owners keep in sync with this store.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmlb_core.storage.interfaces import Storage
from llmlb_core.storage.sql import SqlStore

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
    node_id TEXT,
    models TEXT
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
    ("api_keys", "models", "TEXT"),  # JSON list of the models the key may use; NULL: all
)


class Store(SqlStore):
    """The router's :class:`~llmlb_core.storage.interfaces.Storage` in one SQLite file (mode 0600).

    Beyond the protocol it seals endpoint keys (``endpoint_box``, set by
    :func:`llmlb_core.storage.secretbox.protect_endpoint_keys`) and keeps small facts in
    ``store_meta`` (both in :class:`~llmlb_core.storage.sql.SqlStore`, shared with PostgreSQL).
    """

    def __init__(self, path: Path) -> None:
        existed = path.exists()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not existed:  # created private: never readable by others, not even for a moment
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.path = path
        self.location = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # Deleted and overwritten content (an endpoint key that was re-encrypted) is zeroed.
        self._db.execute("PRAGMA secure_delete=ON")
        self._db.executescript(SCHEMA)
        secure_permissions(path, announce=existed)
        self.endpoint_box = None
        self._warned_plaintext = False
        self._migrate()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _exec(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self._exec(sql, args).fetchall()

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        return self._exec(sql, args).rowcount

    def _run_many(self, sql: str, args: list[tuple[Any, ...]]) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(sql, args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            # Move the change into the database file, and out of the write-ahead log (a key
            # that was re-encrypted leaves no plain copy there).
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _endpoints_table(self) -> None:
        self._exec(ENDPOINTS_SCHEMA)

    def _meta_table(self) -> None:
        self._exec(META_SCHEMA)

    def _migrate(self) -> None:
        for table, column, decl in MIGRATIONS:
            present = {row[1] for row in self._exec(f"PRAGMA table_info({table})").fetchall()}
            if column not in present:
                self._exec(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")


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
