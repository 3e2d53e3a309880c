"""What the SQL stores share: the statements, rows to structs and back, and endpoint keys sealed
at rest. :class:`llmlb_core.storage.sqlite.Store` (one SQLite file) and
:class:`llmlb_core.storage.postgres.PostgresStore` (a PostgreSQL database) subclass
:class:`SqlStore` and only say how a statement runs.

Statements are written once, with ``?`` placeholders and the ``INSERT ... ON CONFLICT ... DO
UPDATE SET col = excluded.col`` form that SQLite and PostgreSQL both accept; a backend with
another placeholder style rewrites them (:meth:`SqlStore._sql`). JSON values (scopes, records,
defaults) are stored as text in both.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any, TypeVar

import msgspec

from llmlb_core.storage.interfaces import EndpointEntry, KeyRow, ModelRow, NodeRow
from llmlb_core.storage.secretbox import HOW_TO_SET, SecretBox, SecretKeyError

log = logging.getLogger("llmlb.store")

SEALED_FIELD = "api_key_sealed"

KEY_COLUMNS = "id, name, key_hash, prefix, scopes, created_at, expires_at, revoked_at, node_id, models"
NODE_COLUMNS = "id, record, registered_at, last_seen_at, owner_key_id, deregistered_at"
MODEL_COLUMNS = "id, capabilities, defaults, description, created_at"
ENDPOINT_COLUMNS = "name, record, created_at"
META_COLUMNS = "key, value"


# --- rows <-> structs (the column orders above; the JSON fields stored as text) --------------
_JSON = frozenset({"scopes", "record", "capabilities", "defaults", "models"})
S = TypeVar("S", KeyRow, NodeRow, ModelRow)


def _names(columns: str) -> list[str]:
    return [name.strip() for name in columns.split(",")]


def values_of(row: msgspec.Struct, columns: str) -> tuple[Any, ...]:
    """``row``'s values in the order of ``columns``, JSON fields as text."""
    return tuple(
        json.dumps(getattr(row, name)) if name in _JSON else getattr(row, name) for name in _names(columns)
    )


def struct_of(type_: type[S], columns: str, values: Sequence[Any]) -> S:
    """A ``type_`` from a row selected as ``columns``."""
    return type_(
        **{
            name: json.loads(v) if name in _JSON and v is not None else v
            for name, v in zip(_names(columns), values, strict=True)
        }
    )


def _marks(columns: str) -> str:
    return ", ".join("?" for _ in _names(columns))


class SqlStore:
    """The :class:`~llmlb_core.storage.interfaces.Storage` methods, the endpoint-key sealing and
    ``store_meta``, over three primitives a backend provides: :meth:`_rows`, :meth:`_run` and
    :meth:`_run_many` (one transaction).

    ``location`` names the database in messages (a file path, or a URL without its password).
    """

    location: str
    # Endpoint keys: sealed with this box when the operator set secret_key (see secretbox.py).
    endpoint_box: SecretBox | None = None
    _warned_plaintext: bool = False

    # --- what a backend provides ----------------------------------------------------------
    def _rows(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        """Run one statement; the number of rows it changed."""
        raise NotImplementedError

    def _run_many(self, sql: str, args: list[tuple[Any, ...]]) -> None:
        """Run ``sql`` once per tuple of ``args``, all in one transaction."""
        raise NotImplementedError

    def _endpoints_table(self) -> None:
        """Make sure the endpoints table exists (a backend that creates it lazily)."""

    def _meta_table(self) -> None:
        """Make sure the store_meta table exists (a backend that creates it lazily)."""

    def close(self) -> None:
        raise NotImplementedError

    # --- API keys -------------------------------------------------------------------------
    def add_key(self, row: KeyRow) -> None:
        self._run(
            f"INSERT INTO api_keys ({KEY_COLUMNS}) VALUES ({_marks(KEY_COLUMNS)})",
            values_of(row, KEY_COLUMNS),
        )

    def list_keys(self) -> list[KeyRow]:
        rows = self._rows(f"SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at")
        return [struct_of(KeyRow, KEY_COLUMNS, r) for r in rows]

    def revoke_key(self, key_id: str) -> bool:
        sql = "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL"
        return self._run(sql, (time.time(), key_id)) > 0

    def set_key_models(self, key_id: str, models: list[str] | None) -> bool:
        """The models the key may use (None: every model); False when there is no such key."""
        return self._run("UPDATE api_keys SET models = ? WHERE id = ?", (json.dumps(models), key_id)) > 0

    def count_keys(self) -> int:
        return int(self._rows("SELECT COUNT(*) FROM api_keys")[0][0])

    # --- nodes ----------------------------------------------------------------------------
    def upsert_node(
        self, node_id: str, record: dict[str, Any], now: float, owner_key_id: str | None = None
    ) -> None:
        self._run(
            "INSERT INTO nodes (id, record, registered_at, last_seen_at, owner_key_id)"
            " VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(id) DO UPDATE SET record = excluded.record,"
            " registered_at = excluded.registered_at, last_seen_at = excluded.last_seen_at,"
            " owner_key_id = excluded.owner_key_id, deregistered_at = NULL",
            (node_id, json.dumps(record), now, now, owner_key_id),
        )

    def mark_node_deregistered(self, node_id: str, now: float) -> None:
        """The node left: no longer listed, but its id stays claimed by its owner."""
        self._run("UPDATE nodes SET deregistered_at = ? WHERE id = ?", (now, node_id))

    def delete_node(self, node_id: str) -> bool:
        return self._run("DELETE FROM nodes WHERE id = ?", (node_id,)) > 0

    def list_nodes(self) -> list[NodeRow]:
        rows = self._rows(f"SELECT {NODE_COLUMNS} FROM nodes ORDER BY registered_at")
        return [struct_of(NodeRow, NODE_COLUMNS, r) for r in rows]

    # --- models ---------------------------------------------------------------------------
    def upsert_model(self, row: ModelRow) -> None:
        self._run(
            f"INSERT INTO models ({MODEL_COLUMNS}) VALUES ({_marks(MODEL_COLUMNS)}) ON CONFLICT(id) DO"
            " UPDATE SET capabilities = excluded.capabilities, defaults = excluded.defaults,"
            " description = excluded.description",
            values_of(row, MODEL_COLUMNS),
        )

    def delete_model(self, model_id: str) -> bool:
        return self._run("DELETE FROM models WHERE id = ?", (model_id,)) > 0

    def list_models(self) -> list[ModelRow]:
        rows = self._rows(f"SELECT {MODEL_COLUMNS} FROM models ORDER BY id")
        return [struct_of(ModelRow, MODEL_COLUMNS, r) for r in rows]

    # --- OpenAI-compatible endpoints (``/v0/endpoints``) -------------------------------------
    # The record holds the upstream API key: the router needs it after a restart. It is never
    # returned by an API or logged. With ``endpoint_box`` set (``secret_key``) the key is stored
    # sealed, as ``api_key_sealed`` instead of ``api_key``; without it in plain text, and the
    # router warns once (see llmlb_core/storage/secretbox.py).
    def upsert_endpoint(self, name: str, record: dict[str, Any], created_at: float) -> None:
        self._endpoints_table()
        self._run(
            "INSERT INTO endpoints (name, record, created_at) VALUES (?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET record = excluded.record",
            (name, json.dumps(self._seal(record)), created_at),
        )

    def delete_endpoint(self, name: str) -> bool:
        self._endpoints_table()
        return self._run("DELETE FROM endpoints WHERE name = ?", (name,)) > 0

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
        self._run_many("UPDATE endpoints SET record = ? WHERE name = ?", sealed)
        return len(plain)

    def warn_plaintext_endpoint_keys(self) -> None:
        if not self._warned_plaintext:
            self._warned_plaintext = True
            log.warning("endpoint API keys are stored in plain text in %s; %s", self.location, HOW_TO_SET)

    def get_meta(self, key: str) -> str | None:
        self._meta_table()
        rows = self._rows("SELECT value FROM store_meta WHERE key = ?", (key,))
        return None if not rows else str(rows[0][0])

    def set_meta(self, key: str, value: str) -> None:
        self._meta_table()
        self._run(
            "INSERT INTO store_meta (key, value) VALUES (?, ?)"
            " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def add_meta(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless one is there already; the value kept (several
        routers starting at once on one database agree on the first one written)."""
        self._meta_table()
        insert = "INSERT INTO store_meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING"
        self._run(insert, (key, value))
        kept = self.get_meta(key)
        return value if kept is None else kept

    # --- copying a whole store (``llmlb db copy``): rows as stored, endpoint keys still sealed ---
    def stored_rows(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every durable row, as stored, by table (endpoint records not opened)."""
        self._endpoints_table()
        self._meta_table()
        return {table: self._rows(f"SELECT {columns} FROM {table}") for table, columns in COPIED_TABLES}

    def load_rows(self, rows: dict[str, list[tuple[Any, ...]]]) -> None:
        """Insert rows from :meth:`stored_rows` (of another store) as they are."""
        self._endpoints_table()
        self._meta_table()
        for table, columns in COPIED_TABLES:
            if rows.get(table):
                self._run_many(f"INSERT INTO {table} ({columns}) VALUES ({_marks(columns)})", rows[table])

    def clear_rows(self) -> None:
        """Delete every durable row (``llmlb db copy --force`` on a store that is not empty)."""
        self._endpoints_table()
        self._meta_table()
        for table, _ in COPIED_TABLES:
            self._run(f"DELETE FROM {table}")

    # --- internals ------------------------------------------------------------------------
    def _endpoint_rows(self) -> list[EndpointEntry]:
        self._endpoints_table()
        rows = self._rows(f"SELECT {ENDPOINT_COLUMNS} FROM endpoints ORDER BY created_at")
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


# What ``llmlb db copy`` copies, table by table (store_meta: the sealing salt and verifier).
COPIED_TABLES: tuple[tuple[str, str], ...] = (
    ("api_keys", KEY_COLUMNS),
    ("nodes", NODE_COLUMNS),
    ("models", MODEL_COLUMNS),
    ("endpoints", ENDPOINT_COLUMNS),
    ("store_meta", META_COLUMNS),
)
