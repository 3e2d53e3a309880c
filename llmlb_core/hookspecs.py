"""The router's plugin hooks (pluggy specifications). Imports nothing from llmlb at runtime.

A plugin is a module or object with ``@hookimpl`` functions, found through the ``llmlb.plugins``
entry-point group (the built-in text, audio and images capabilities, and the node commands, are
entry points of the ``llmlb`` distribution itself). Hooks that contribute things take a
``register`` callback, so the core checks each item and one plugin may add several. Hooks are
called with keyword arguments only; an implementation may accept fewer arguments than its spec.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from llmlb_core.capability import Capability

PROJECT = "llmlb"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def llmlb_register_capabilities(register: Callable[[Capability[Any]], None]) -> None:
    """Register capabilities (:class:`llmlb_core.api.Capability`): their name, model flags,
    settings type, schemas, and the routes they serve once enabled."""


@hookspec
def llmlb_register_commands(cli: click.Group) -> None:
    """Add commands to the ``llmlb`` command line (``@cli.command()``), as ``llmlb node`` is."""
