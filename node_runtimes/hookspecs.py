"""The node's plugin contract: runtime plugins register runtime implementations.

A runtime plugin implements ``llmlb_node_register_runtimes(register)`` and calls
``register(RuntimeType(...))`` for each runtime type it provides. Built-in runtimes
(``stable_diffusion``) are ordinary plugins; third parties use the ``llmlb.node_runtimes``
entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from llmlb_node.runtime import RuntimeType

PROJECT = "llmlb_node"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def llmlb_node_register_runtimes(register: Callable[[RuntimeType], None]) -> None:
    """Register runtime types this plugin provides."""
