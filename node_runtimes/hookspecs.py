"""The node's plugin hooks (pluggy specifications). Imports nothing from llmlb at runtime.

A runtime plugin is a module or object with ``@hookimpl`` functions, found through the
``llmlb.node_runtimes`` entry-point group (the built-in ``stable_diffusion`` and
``openai_compatible`` runtimes are entry points of the ``llmlb`` distribution itself). It calls
``register(RuntimeType(...))`` once for each runtime type it provides; see
:mod:`llmlb_node.api`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from llmlb_node.runtime import RuntimeType

PROJECT = "llmlb_node"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def llmlb_node_register_runtimes(register: Callable[[RuntimeType[Any]], None]) -> None:
    """Register runtime types (:class:`llmlb_node.api.RuntimeType`) this plugin provides."""
