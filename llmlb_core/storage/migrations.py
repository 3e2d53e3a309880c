"""The PostgreSQL schema as an ordered list of versioned migrations, applied at start under an
advisory lock, so several routers starting at once on one database is safe.

``schema_version`` holds one row per applied version. :func:`migrate` takes
``pg_advisory_xact_lock`` in a transaction, reads the highest applied version, applies each later
migration and records it, then commits (which releases the lock): a second router waits on the
lock, then finds nothing left to do. A database whose version is newer than this code knows is
refused (an older router must not write to a schema it does not know).

To change the schema, append a migration; never edit one that has shipped.
"""

from __future__ import annotations

from typing import Any

# Any constant the routers agree on: the key of the advisory lock that serialises migrations.
LOCK_KEY = 0x6C6D6C62  # "lmlb"

# (version, statements). Version 1: the schema of the SQLite store (llmlb_core/storage/sqlite.py),
# its columns and meaning unchanged; times are seconds since the epoch, JSON is stored as text.
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    prefix TEXT NOT NULL,
    scopes TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION,
    node_id TEXT
);
CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    registered_at DOUBLE PRECISION NOT NULL,
    last_seen_at DOUBLE PRECISION NOT NULL,
    owner_key_id TEXT,
    deregistered_at DOUBLE PRECISION
);
CREATE TABLE models (
    id TEXT PRIMARY KEY,
    capabilities TEXT NOT NULL,
    defaults TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE endpoints (
    name TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE store_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
""",
    ),
    # Version 2: values every router of the database shares (CapabilityContext.shared: image
    # files of response_format=url, dashboard sessions), each with its own end of life, in
    # seconds since the epoch by the database's clock (so routers agree). Expired rows are
    # never read and are deleted by a periodic purge (the index).
    (
        2,
        """
CREATE TABLE shared_blobs (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value BYTEA NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (namespace, key)
);
CREATE INDEX shared_blobs_expires_at ON shared_blobs (expires_at);
""",
    ),
    # Version 3: the models a key may use (a JSON list; NULL: every model).
    (3, "ALTER TABLE api_keys ADD COLUMN models TEXT;"),
)
LATEST = MIGRATIONS[-1][0]


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer llmlb."""


def migrate(conn: Any) -> list[int]:
    """Bring the database of ``conn`` (a psycopg connection, autocommit) to :data:`LATEST`; the
    versions applied now (empty: it was up to date)."""
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_version ("
            " version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()
        current = int(row[0])
        if current > LATEST:
            raise SchemaTooNew(
                f"the database schema is version {current}, newer than this llmlb knows ({LATEST}): "
                "upgrade llmlb"
            )
        for version, statements in MIGRATIONS:
            if version > current:
                conn.execute(statements)
                conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
                applied.append(version)
    return applied


def schema_version(conn: Any) -> int:
    """The highest version applied (0: none)."""
    if conn.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
        return 0
    return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])
