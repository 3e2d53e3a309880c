"""API keys: creation, hashing, lookup, scopes and the Litestar guards that enforce them.

Keys are sent as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. Only the SHA-256 of a
key is stored. The lookup goes through an in-memory index keyed by hash and the stored hash is
compared with ``hmac.compare_digest``. Scopes: ``api`` (inference), ``node`` (registration and
heartbeats), ``admin`` (implies all). A ``node`` key may be bound to one node id (``node_id``).
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import logging
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from contextvars import ContextVar
from typing import Any, Literal

import msgspec
from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from llmlb_core.protocol import NODE_NAME_PATTERN
from llmlb_core.server.credentials import PUBLIC_OPT, check_admin_key, key_from_headers
from llmlb_core.server.errors import OpenAIError
from llmlb_core.storage.interfaces import KeyRow, KeyStore

log = logging.getLogger("llmlb.auth")

Scope = Literal["api", "node", "admin"]
SCOPES: tuple[str, ...] = ("api", "node", "admin")
KEY_PREFIX = "sk-llmlb-"
# Where the guard leaves the authenticated key's row in the ASGI scope state.
KEY_STATE = "llmlb_key"
# The key of the request being served (set by the guard): what the forwarder checks a model
# against (capabilities call it without the request). None outside a guarded request.
REQUEST_KEY: ContextVar[KeyRow | None] = ContextVar("llmlb_request_key", default=None)
MAX_KEY_MODELS = 1000


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


class ApiKeyInfo(msgspec.Struct, kw_only=True):
    """What the admin API shows of a key (never the key or its hash)."""

    id: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: float
    expires_at: float | None
    revoked: bool
    node_id: str | None  # a bound node key acts on this node id only
    models: list[str] | None  # the models it may use; None: every model


class KeyManager:
    def __init__(self, store: KeyStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._by_hash: dict[str, KeyRow] = {}
        # Called after every change made here (several routers: the others reload).
        self.on_change: Callable[[], None] | None = None
        self.reload()

    def reload(self) -> None:
        self._by_hash = {row.key_hash: row for row in self._store.list_keys()}

    def create(
        self,
        name: str,
        scopes: Iterable[str],
        *,
        expires_at: float | None = None,
        key: str | None = None,
        node_id: str | None = None,
        models: list[str] | None = None,
    ) -> tuple[str, ApiKeyInfo]:
        scope_list = sorted(set(scopes))
        bad = [s for s in scope_list if s not in SCOPES]
        if bad or not scope_list:
            raise OpenAIError(400, f"scopes must be a non-empty subset of {list(SCOPES)}", param="scopes")
        if expires_at is not None and expires_at <= self._clock():
            raise OpenAIError(400, "expires_at is in the past", param="expires_at", code="invalid_value")
        if node_id is not None and ("node" not in scope_list or "admin" in scope_list):
            raise OpenAIError(
                400, "node_id binds a 'node' scope key (not an admin key) to one node", param="node_id"
            )
        if node_id is not None and not re.match(NODE_NAME_PATTERN, node_id):
            raise OpenAIError(400, f"node_id must match {NODE_NAME_PATTERN}", param="node_id")
        models = checked_models(models)
        key = key or generate_key()
        row = KeyRow(
            id=uuid.uuid4().hex[:16],
            name=name,
            key_hash=hash_key(key),
            prefix=key[: len(KEY_PREFIX) + 4],
            scopes=scope_list,
            created_at=self._clock(),
            expires_at=expires_at,
            node_id=node_id,
            models=models,
        )
        self._store.add_key(row)
        self._by_hash[row.key_hash] = row
        if self.on_change is not None:
            self.on_change()
        return key, self.info(row)

    def info(self, row: KeyRow) -> ApiKeyInfo:
        return ApiKeyInfo(
            id=row.id,
            name=row.name,
            prefix=row.prefix,
            scopes=row.scopes,
            created_at=row.created_at,
            expires_at=row.expires_at,
            revoked=row.revoked_at is not None,
            node_id=row.node_id,
            models=row.models,
        )

    def list(self) -> list[ApiKeyInfo]:
        return [self.info(row) for row in self._store.list_keys()]

    def revoke(self, key_id: str) -> bool:
        ok = self._store.revoke_key(key_id)
        if ok:
            self.reload()
            if self.on_change is not None:
                self.on_change()
        return ok

    def set_models(self, key_id: str, models: builtins.list[str] | None) -> ApiKeyInfo:
        """Change the models a key may use (None: every model); 404 for an unknown key."""
        models = checked_models(models)
        if not self._store.set_key_models(key_id, models):
            raise OpenAIError(404, f"No API key with id '{key_id}'", param="key_id", code="key_not_found")
        self.reload()
        if self.on_change is not None:
            self.on_change()
        return next(self.info(row) for row in self._by_hash.values() if row.id == key_id)

    def has_hash(self, key: str) -> bool:
        return hash_key(key) in self._by_hash

    def ensure_admin_key(self, env_key: str | None) -> str | None:
        """First start: adopt ``LLMLB_ADMIN_KEY`` or generate an admin key.

        Returns a newly generated key (to print once), else None; :func:`check_admin_key`.
        """
        if env_key:
            check_admin_key(env_key)
            if not self.has_hash(env_key):
                self.create("admin (LLMLB_ADMIN_KEY)", ["admin"], key=env_key)
            return None
        if self._store.count_keys() == 0:
            key, _ = self.create("admin (generated at first start)", ["admin"])
            return key
        return None

    def authenticate(self, key: str | None, scope: str) -> KeyRow:
        if not key:
            raise OpenAIError(
                401,
                "Missing API key. Send it as 'Authorization: Bearer <key>' or 'X-API-Key: <key>'.",
                code="missing_api_key",
            )
        digest = hash_key(key)
        row = self._by_hash.get(digest)
        # Constant-time comparison of the stored hash with the computed one.
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            raise OpenAIError(401, "Incorrect API key provided.", code="invalid_api_key")
        if row.revoked_at is not None:
            raise OpenAIError(401, "This API key has been revoked.", code="revoked_api_key")
        if row.expires_at is not None and row.expires_at <= self._clock():
            raise OpenAIError(401, "This API key has expired.", code="expired_api_key")
        if "admin" not in row.scopes and scope not in row.scopes:
            raise OpenAIError(
                403,
                f"This API key lacks the '{scope}' scope required here.",
                code="insufficient_scope",
            )
        return row


def checked_models(models: list[str] | None) -> list[str] | None:
    """A key's model list, de-duplicated and sorted; a 400 naming ``models`` when it is not one."""
    if models is None:
        return None
    if len(models) > MAX_KEY_MODELS or not all(0 < len(m) <= 256 and m.isprintable() for m in models):
        raise OpenAIError(
            400,
            f"models must be a list of at most {MAX_KEY_MODELS} model ids (1-256 printable characters each)",
            param="models",
        )
    return sorted(set(models))


def check_model_access(model: str) -> None:
    """A 403 ``model_not_allowed`` when the request's key may not use ``model``."""
    row = REQUEST_KEY.get()
    if row is None or row.models is None or model in row.models or "admin" in row.scopes:
        return
    allowed = ", ".join(row.models) if row.models else "none"
    raise OpenAIError(
        403,
        f"This API key may not use model '{model}'. Models it may use: {allowed}.",
        type="invalid_request_error",
        param="model",
        code="model_not_allowed",
    )


def visible_models(ids: Iterable[str]) -> set[str] | None:
    """Of ``ids``, those the request's key may use; None when it may use every model."""
    row = REQUEST_KEY.get()
    if row is None or row.models is None or "admin" in row.scopes:
        return None
    return set(ids).intersection(row.models)


def require_scope(
    scope: Scope, keys: KeyManager
) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], Awaitable[None]]:
    """A Litestar guard: the request must carry a valid key of ``keys`` with ``scope`` (or
    ``admin``)."""

    async def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        # async: a sync guard would run in a worker thread on every request.
        if handler.opt.get(PUBLIC_OPT):
            return  # e.g. unguessable image URLs, which clients fetch without a key
        row = keys.authenticate(key_from_headers(connection.headers), scope)
        connection.scope.setdefault("state", {})[KEY_STATE] = row  # type: ignore[typeddict-unknown-key]
        REQUEST_KEY.set(row)

    guard.__name__ = f"require_{scope}_scope"
    return guard


def request_key(connection: ASGIConnection[Any, Any, Any, Any]) -> KeyRow:
    """The key that a :func:`require_scope` guard authenticated for this request."""
    row = connection.scope.get("state", {}).get(KEY_STATE)
    if not isinstance(row, KeyRow):
        raise OpenAIError(401, "Missing API key.", code="missing_api_key")  # a route without a guard
    return row
