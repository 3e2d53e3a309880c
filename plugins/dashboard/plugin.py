"""The dashboard as a router plugin: a web dashboard and an image playground at ``/dashboard``.

It is built on the public contract only: its pages call the router's own public HTTP API
(``public_api``) with the signed-in admin's key, so it sees what any admin client sees.
``routes`` (pages, sign-in, relay), ``sessions`` (server-side sessions, CSRF tokens),
``pages`` (HTML), ``assets`` (``static/``: the scripts, the style sheet), ``settings``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmlb_core.api import Capability, hookimpl
from llmlb_plugins.dashboard.routes import build_routes
from llmlb_plugins.dashboard.settings import DashboardSettings

CAPABILITY = Capability(
    name="dashboard",
    model_flags=frozenset(),
    build_routes=build_routes,
    settings=DashboardSettings,
    description="Web dashboard and image playground at /dashboard (sign in with an admin key)",
)


@hookimpl
def llmlb_register_capabilities(register: Callable[[Capability[Any]], None]) -> None:
    register(CAPABILITY)
