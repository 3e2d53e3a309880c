"""The images capability as a router plugin: routes, schemas, runtime types, model flags."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from llmlb_core.capability import Capability
from llmlb_core.hookspecs import hookimpl
from llmlb_core.services import RouterServices
from llmlb_plugins.images.defaults import ImageModelDefaults
from llmlb_plugins.images.dispatch import FLAGS
from llmlb_plugins.images.protocol import (
    ImageEditFields,
    ImageGenerationRequest,
    ImagesResponse,
    ImageVariationFields,
)
from llmlb_plugins.images.routes import STORE_KEY, build_routes
from llmlb_plugins.images.settings import load_images_settings
from llmlb_plugins.images.url_store import ImageUrlStore

NAME = "images"
PURGE_TASK_KEY = "images.purge_task"


@hookimpl
def llmlb_register_capabilities(register: Callable[[Capability], None]) -> None:
    register(
        Capability(
            name=NAME,
            model_flags=FLAGS,
            runtime_types=frozenset({"stable_diffusion"}),
            description="OpenAI Images API: generations, edits, variations (stable-diffusion.cpp)",
            defaults_schema="ImageModelDefaults",
        )
    )


@hookimpl
def llmlb_register_routes(register: Callable[..., None], settings: dict[str, dict[str, Any]]) -> None:
    register(NAME, *build_routes(load_images_settings(settings[NAME])))


@hookimpl
def llmlb_register_schemas(register: Callable[[str, str, type], None]) -> None:
    register(NAME, "ImageGenerationRequest", ImageGenerationRequest)
    register(NAME, "ImageEditFields", ImageEditFields)
    register(NAME, "ImageVariationFields", ImageVariationFields)
    register(NAME, "ImagesResponse", ImagesResponse)
    register(NAME, "ImageModelDefaults", ImageModelDefaults)


@hookimpl
async def llmlb_startup(services: RouterServices) -> None:
    if NAME not in services.plugins.enabled:
        return
    cfg = load_images_settings(services.settings.plugin_settings(NAME))
    store = ImageUrlStore(services.settings.data_path / "images", cfg.url_ttl_minutes * 60)
    services.extras[STORE_KEY] = store
    interval = min(60.0, max(1.0, store.ttl_s / 4))
    services.extras[PURGE_TASK_KEY] = asyncio.create_task(store.purge_forever(interval))


@hookimpl
async def llmlb_shutdown(services: RouterServices) -> None:
    task = services.extras.pop(PURGE_TASK_KEY, None)
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
