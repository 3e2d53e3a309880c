"""The images capability as a router plugin: OpenAI Images API (generations, edits, variations)
served by nodes running the ``stable_diffusion`` runtime (stable-diffusion.cpp).

This module only composes the capability. One image request passes through these files:
``routes`` (decode the request) -> ``dispatch`` (check and plan it with ``planning``, split it
over idle nodes, merge the answers with ``answers``) -> the core's forwarder (pick a node, send,
fail over) -> the node's ``llmlb_node.stable_diffusion.runtime`` ->
``llmlb_node.stable_diffusion.engine.engine``. Helpers they call: ``protocol`` (schemas, shared
with the node), ``validation`` and ``decoding`` (checks, shared with the node), ``url_store``
(``response_format=url`` files), ``settings``, ``defaults`` (the admin's per-model defaults
schema), ``model_info`` (what nodes say a model can do: ``/v1/models`` details and the checks
before an edit is sent). ``stream: true`` goes from ``dispatch`` to ``streaming`` (the nodes'
events checked and merged) instead of the forwarder's ``call``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llmlb_core.api import Capability, hookimpl
from llmlb_plugins.images.defaults import ImageModelDefaults
from llmlb_plugins.images.model_info import FLAGS, describe_model
from llmlb_plugins.images.protocol import (
    ImageEditFields,
    ImageGenerationRequest,
    ImagesResponse,
    ImageVariationFields,
)
from llmlb_plugins.images.routes import build_routes
from llmlb_plugins.images.settings import ImagesSettings

CAPABILITY = Capability(
    name="images",
    model_flags=FLAGS,
    build_routes=build_routes,
    settings=ImagesSettings,
    description="OpenAI Images API: generations, edits, variations (stable-diffusion.cpp)",
    schemas={
        "ImageGenerationRequest": ImageGenerationRequest,
        "ImageEditFields": ImageEditFields,
        "ImageVariationFields": ImageVariationFields,
        "ImagesResponse": ImagesResponse,
        "ImageModelDefaults": ImageModelDefaults,
    },
    defaults_schema=ImageModelDefaults,
    describe_model=describe_model,
)


@hookimpl
def llmlb_register_capabilities(register: Callable[[Capability[Any]], None]) -> None:
    register(CAPABILITY)
