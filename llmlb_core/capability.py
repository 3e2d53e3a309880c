"""What a capability plugin registers, and the context the router gives it.

A :class:`Capability` is an object that carries its behaviour (as in simonw/llm's
``register_models``): its name and model flags, the msgspec types of its settings, schemas and
per-model defaults, and ``build_routes``, which the router calls once, when the capability is
enabled, with a :class:`CapabilityContext`. Handlers close over what they need from the
context (their settings, the forwarder, their own state); nothing is fetched from app state
and nothing is kept under string keys.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

import msgspec
from litestar import Response
from litestar.handlers import BaseRouteHandler

from llmlb_core.server.stream_body import StreamBody
from llmlb_core.upstream.answer import JSON_TYPES, STREAM_TYPES, UpstreamResult
from llmlb_core.upstream.client import check_json_object
from llmlb_core.upstream.event_stream import EventCheck, EventStream

S = TypeVar("S")
T = TypeVar("T")


# Node adverts' details of one model (one mapping per online node) -> what /v1/models shows.
ModelDescriber = Callable[[Sequence[Mapping[str, Any]]], dict[str, Any]]


class NoSettings(msgspec.Struct, forbid_unknown_fields=True):
    """The settings of a capability that has none: its ``[plugin.<name>]`` table must be empty."""


class ModelCatalog(Protocol):
    """Model resolution as a capability sees it."""

    def defaults(self, model: str) -> dict[str, Any]:
        """The admin's per-model defaults (``POST /v0/models``); empty when none."""
        ...

    def online(self, flags: frozenset[str]) -> list[str]:
        """Ids of the models that an online node serves with any of ``flags``, sorted."""
        ...

    def idle_nodes(self, model: str, flags: frozenset[str]) -> int:
        """How many online nodes serving ``model`` have a free slot now (for fan-out)."""
        ...

    def details(self, model: str, flags: frozenset[str]) -> list[Mapping[str, Any]]:
        """The ``details`` of ``model``'s advert from every online node that serves it with one of
        ``flags`` (what nodes say about it: untrusted, check every value you read)."""
        ...


class Forwarder(Protocol):
    """The one way a capability sends work to nodes (the router's
    :class:`llmlb_core.router.forwarding.Forwarder`): it resolves ``model`` among the nodes that
    serve it with one of ``flags`` (404 ``model_not_found``, 503 ``no_capable_nodes``), takes a
    slot (queueing when all are busy), sends, fails over to another node when one fails before
    answering, and checks the answer (status, content type, size, shape) before the client sees
    any of it."""

    async def call(
        self,
        model: str,
        flags: frozenset[str],
        path: str,
        *,
        content: bytes,
        content_type: str,
        extra_headers: Mapping[str, str] | None = None,
        accept: Collection[str] = JSON_TYPES,
        max_answer_bytes: int | None = None,
        check: Callable[[bytes], Any] = check_json_object,
    ) -> UpstreamResult:
        """POST ``content`` to ``path`` and read the whole answer. ``check`` judges a 2xx body
        (raise ``BadAnswer`` to refuse it; what it returns is ``UpstreamResult.parsed``)."""
        ...

    async def stream(
        self,
        model: str,
        flags: frozenset[str],
        path: str,
        *,
        content: bytes | StreamBody,
        content_type: str,
        content_length: int | None = None,
        extra_headers: Mapping[str, str] | None = None,
        accept: Collection[str] = STREAM_TYPES,
    ) -> Response[Any]:
        """POST to ``path`` and relay the answer as it arrives (``accept``: the content types,
        ``"audio/*"`` allowed, that a 2xx answer may have)."""
        ...

    async def events(
        self,
        model: str,
        flags: frozenset[str],
        path: str,
        *,
        content: bytes,
        content_type: str,
        check: Callable[[], EventCheck[T]],
        max_event_bytes: int,
        max_answer_bytes: int | None = None,
        extra_headers: Mapping[str, str] | None = None,
    ) -> EventStream[T]:
        """POST to ``path`` and read the answer as server-sent events, each checked by a fresh
        ``check()`` per attempt; returns once the first event passed its check."""
        ...

    async def json(
        self, *, model: str, flags: frozenset[str], path: str, body: bytes, stream: bool
    ) -> Response[Any]:
        """Forward a client's JSON body with the model's admin defaults filled in: relayed as it
        streams, or answered whole."""
        ...


@dataclass(frozen=True)
class UpstreamFlags:
    """How a model of an OpenAI-compatible server (an admin-registered endpoint, or a node's
    ``openai_compatible`` runtime) gets this capability's flags when nobody declared them.

    ``match(model_id, kind)`` returns the flags this capability claims for the model (empty:
    none). When no installed capability claims any, the model gets the ``fallback`` flags of every
    capability that has some (text: chat and completions)."""

    match: Callable[[str, str], frozenset[str]] = lambda model_id, kind: frozenset()
    fallback: frozenset[str] = frozenset()


@dataclass(frozen=True, kw_only=True)
class Capability(Generic[S]):
    """A capability: what admins enable in ``capabilities = [...]``."""

    # Name admins use in `capabilities = [...]` and `[plugin.<name>]`, e.g. "images".
    name: str
    # Model capability flags it serves, e.g. {"image_generation"}.
    model_flags: frozenset[str]
    # Called once when the capability is enabled: its Litestar route handlers. They are mounted
    # behind the `api` scope guard (a handler with opt={PUBLIC_OPT: True} needs no key).
    build_routes: Callable[[CapabilityContext[S]], Sequence[BaseRouteHandler]]
    # The `[plugin.<name>]` table is converted to this type once, at start-up; a bad value stops
    # `llmlb serve` with one line naming the plugin, the key and its environment variable.
    settings: type[S] = NoSettings  # type: ignore[assignment]
    description: str = ""
    # msgspec request and response types, published as JSON Schema at /v0/schemas.
    schemas: Mapping[str, type[msgspec.Struct]] = field(default_factory=dict)
    # The admin's per-model defaults must convert to this type (POST /v0/models answers a 400
    # naming the key that does not). None: not checked.
    defaults_schema: type[msgspec.Struct] | None = None
    # How OpenAI-compatible servers' models get this capability's flags (None: never).
    upstream_flags: UpstreamFlags | None = None
    # Older flag names admins may still write, e.g. {"text_generation": {"chat_completion", ...}}.
    flag_aliases: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # What /v1/models shows of a model this capability serves, in the model object's `details`:
    # called with the `details` of the model's advert from every online node serving it
    # (untrusted: check every value). None: nothing shown. See `ModelDescriber`.
    describe_model: ModelDescriber | None = None


Callback = Callable[[], Awaitable[None]]


class SharedBlobs(Protocol):
    """Short-lived values that every router of one database sees (``CapabilityContext.shared``):
    bytes under ``(namespace, key)``, each with its own lifetime. Put ``namespace`` as your
    capability's name (or start it with it). A value past its lifetime is never returned, and the
    router deletes it in the background.

    The router offers it only when its database is PostgreSQL (several routers may share it);
    with SQLite (one router) ``shared`` is None and a capability keeps such state on its own
    (memory, its data dir). While the database is down each call raises an ``OpenAIError`` 503
    ``database_unavailable`` (the router answers it as is)."""

    async def put(self, namespace: str, key: str, data: bytes, ttl_s: float) -> None:
        """Store ``data`` (replacing any value of that key), to live ``ttl_s`` seconds from now."""
        ...

    async def get(self, namespace: str, key: str) -> bytes | None:
        """The value, if present and not expired; else None."""
        ...

    async def touch(self, namespace: str, key: str, ttl_s: float) -> bool:
        """Let a live value live ``ttl_s`` seconds from now (sliding expiry); False when absent or
        expired."""
        ...

    async def delete(self, namespace: str, key: str) -> bool:
        """Delete the value; False when there was none."""
        ...


@dataclass
class CapabilityContext(Generic[S]):
    """Everything the router gives a capability: typed, built once per enabled capability."""

    name: str
    # The capability's `[plugin.<name>]` settings, converted to `Capability.settings`.
    settings: S
    # A folder of its own under the router's data dir (created, mode 0700).
    data_dir: Path
    # The URL clients reach the router at (for links such as image URLs).
    public_url: str
    # The one way to send work to nodes: pick, failover, buffered or relayed answers.
    forward: Forwarder
    # Model lookup, admin defaults, idle capacity.
    models: ModelCatalog
    # Values every router on the same database sees (image files, sessions): only when the
    # database is PostgreSQL; None with SQLite (one router: keep such state locally).
    shared: SharedBlobs | None = None
    _startup: list[Callback] = field(default_factory=list)
    _shutdown: list[Callback] = field(default_factory=list)

    def on_startup(self, callback: Callback) -> None:
        """Run ``callback`` once the router is ready (e.g. start a background task)."""
        self._startup.append(callback)

    def on_shutdown(self, callback: Callback) -> None:
        """Run ``callback`` when the router stops (in reverse order of registration)."""
        self._shutdown.append(callback)
