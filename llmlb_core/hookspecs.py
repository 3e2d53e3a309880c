"""The router's plugin contract (pluggy hook specifications).

A capability plugin (text, audio, images, or a third party's) implements some of these hooks.
Hooks that contribute things take a ``register`` callback, so the core validates each item and
one plugin may add several. Hooks are called with keyword arguments only; an implementation may
accept fewer arguments than its spec. Built-in capabilities are ordinary plugins using these
same hooks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from llmlb_core.capability import Capability
    from llmlb_core.services import RouterServices

PROJECT = "llmlb"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def llmlb_register_capabilities(register: Callable[[Capability], None]) -> None:
    """Register capabilities: a name admins enable in config, the model capability flags it
    serves (e.g. ``image_generation``) and the node runtime types that can serve it."""


@hookspec
def llmlb_register_routes(register: Callable[..., None], settings: dict[str, dict[str, Any]]) -> None:
    """Register Litestar route handlers: ``register(capability_name, *handlers)``.

    Handlers are mounted only when the capability is enabled, behind the ``api`` scope guard.
    ``settings[name]`` is the ``[plugin.<name>]`` table from config (empty when absent).
    """


@hookspec
def llmlb_register_schemas(register: Callable[[str, str, type], None]) -> None:
    """Register msgspec request schemas: ``register(capability_name, name, struct_type)``.

    They are published as JSON Schema at ``/v0/schemas`` for enabled capabilities.
    """


@hookspec
def llmlb_startup(services: RouterServices) -> Awaitable[None] | None:
    """Called once the router is ready (HTTP client, stores, nodes). May return an awaitable."""


@hookspec
def llmlb_shutdown(services: RouterServices) -> Awaitable[None] | None:
    """Called when the router stops. May return an awaitable."""
