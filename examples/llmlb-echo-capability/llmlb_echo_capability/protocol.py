"""The contract between the ``reverse`` capability (router) and the runtimes that serve it (nodes).

Runtimes import this module, as the built-in stable_diffusion runtime imports
``llmlb_plugins.images.protocol``: one definition of the wire format, on both sides.
"""

from __future__ import annotations

import msgspec

# The model flag: a node advertises a model with it; the router forwards to such models only.
FLAG = "reverse"
# The route, on the router and on the node alike.
PATH = "/v1/reverse"


class ReverseRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/reverse``. Unknown fields are refused (a 400 naming the field)."""

    model: str
    text: str


class ReverseResponse(msgspec.Struct, kw_only=True):
    """What a node answers, and what the router checks before passing it on."""

    model: str
    text: str
    object: str = "reverse"
