"""What the router's registries need from persistence, as small typed interfaces.

Each registry takes only the narrow store it uses: :class:`~llmlb_core.router.auth.KeyManager` a
:class:`KeyStore`, :class:`~llmlb_core.router.nodes.NodeRegistry` a :class:`NodeStore`,
:class:`~llmlb_core.router.models.ModelRegistry` a :class:`ModelStore` and
:class:`~llmlb_core.router.endpoints.EndpointManager` an :class:`EndpointStore`. :class:`Storage` is all
four plus ``close``: what the app opens at start-up and closes at shutdown.

:class:`llmlb_core.storage.sqlite.Store` (one SQLite file in ``data_dir``) and
:class:`llmlb_core.storage.postgres.PostgresStore` (a PostgreSQL database, ``database_url``)
implement :class:`Storage`, their statements shared in :mod:`llmlb_core.storage.sql`. Nothing
else changes between them (the registries keep in-memory copies for the hot paths and write
through on every change, so a store only has to persist and list).

The row types live here, with the interface, because every implementation returns them.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec


class KeyRow(msgspec.Struct, kw_only=True):
    """An API key as stored: its hash, never the key."""

    id: str
    name: str
    key_hash: str
    prefix: str
    scopes: list[str]
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    node_id: str | None = None  # bound: the key may act on this node id only
    models: list[str] | None = None  # the models the key may use; None: every model


class NodeRow(msgspec.Struct, kw_only=True):
    """A node's registration (``record``: the registration message, its credential blanked)."""

    id: str
    record: dict[str, Any]
    registered_at: float
    last_seen_at: float
    owner_key_id: str | None = None
    deregistered_at: float | None = None


class ModelRow(msgspec.Struct, kw_only=True):
    """A model an admin registered (``POST /v0/models``)."""

    id: str
    capabilities: list[str]
    defaults: dict[str, Any]
    description: str = ""
    created_at: float = 0.0


# An endpoint as stored: (name, record with its upstream key in clear, created_at).
EndpointEntry = tuple[str, dict[str, Any], float]


class KeyStore(Protocol):
    """API keys (:class:`~llmlb_core.router.auth.KeyManager`)."""

    def add_key(self, row: KeyRow) -> None: ...

    def list_keys(self) -> list[KeyRow]:
        """Every key, revoked and expired ones included, oldest first."""
        ...

    def revoke_key(self, key_id: str) -> bool:
        """Mark the key revoked; False when there is no unrevoked key with that id."""
        ...

    def set_key_models(self, key_id: str, models: list[str] | None) -> bool:
        """The models the key may use (None: every model); False when there is no such key."""
        ...

    def count_keys(self) -> int: ...


class NodeStore(Protocol):
    """Node registrations and the ids their owners keep (:class:`~llmlb_core.router.nodes.NodeRegistry`)."""

    def upsert_node(
        self, node_id: str, record: dict[str, Any], now: float, owner_key_id: str | None = None
    ) -> None:
        """Add or replace a registration; a deregistered id is listed again."""
        ...

    def mark_node_deregistered(self, node_id: str, now: float) -> None:
        """The node left: no longer listed, but its id stays claimed by its owner."""
        ...

    def delete_node(self, node_id: str) -> bool: ...

    def list_nodes(self) -> list[NodeRow]:
        """Every registration (deregistered ones included), oldest first."""
        ...


class ModelStore(Protocol):
    """Admin-registered models (:class:`~llmlb_core.router.models.ModelRegistry`)."""

    def upsert_model(self, row: ModelRow) -> None:
        """Add a model or replace its flags, defaults and description (not ``created_at``)."""
        ...

    def delete_model(self, model_id: str) -> bool: ...

    def list_models(self) -> list[ModelRow]: ...


class EndpointStore(Protocol):
    """Admin-registered OpenAI-compatible endpoints (:class:`~llmlb_core.router.endpoints.EndpointManager`).

    The record holds the upstream API key in clear for the caller; how it is kept at rest (e.g.
    sealed with ``secret_key``) is the store's business."""

    def upsert_endpoint(self, name: str, record: dict[str, Any], created_at: float) -> None: ...

    def delete_endpoint(self, name: str) -> bool: ...

    def list_endpoints(self) -> list[EndpointEntry]:
        """Every endpoint, oldest first (raises when a stored key cannot be opened)."""
        ...


class Storage(KeyStore, NodeStore, ModelStore, EndpointStore, Protocol):
    """Everything the router persists; opened at start-up, closed at shutdown."""

    def close(self) -> None: ...
