"""The router's Images API routes: decode a request and hand it to
``llmlb_plugins.images.dispatch`` (check, plan, send to nodes, answer: whole, or with
``stream: true`` as the nodes' events, checked and merged). Also serves the stored files of
``response_format=url`` answers.

Streamed images are base64 in events, as OpenAI streams them: a streamed request that asks for
``response_format=url`` itself is a 400 (an admin's default of ``url`` does not apply to it).
Before an edit is sent, the router checks it against what the nodes serving the model say
(``model_info``): the number of images (reference images), a mask, the LoRAs.

:func:`build_routes` is the capability's ``build_routes``: it makes the capability's own
objects (the URL store: in its data dir, whose purge task runs between the router's start-up
and shut-down, or in the routers' shared table on PostgreSQL; the job dispatcher) and the
handlers that close over them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Request, Response, get, post
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath
from litestar.response import File

from llmlb_core.api import (
    PUBLIC_OPT,
    CapabilityContext,
    OpenAIError,
    decode_json_bytes,
    openapi_form_body,
    openapi_json_body,
)
from llmlb_plugins.images.answers import FILES_PATH
from llmlb_plugins.images.dispatch import ImageJobs
from llmlb_plugins.images.protocol import (
    ImageEditFields,
    ImageGenerationRequest,
    ImageVariationFields,
)
from llmlb_plugins.images.settings import MB, ImagesSettings
from llmlb_plugins.images.url_store import FILE_POLICY, MEDIA_TYPES, ImageUrlStore

JSON_BODY_LIMIT = 1 * MB
# The file parts of edits and variations, as the API docs show them (/docs).
EDIT_FILES = {
    "image": "The image to edit (PNG, JPEG or WebP); or send image[] instead",
    "image[]": "Several images: the first is edited, the others are reference images (models that take them)",
    "mask": "Optional: a PNG whose transparent pixels mark where to edit (same size as the image)",
}
VARIATION_FILES = {"image": "The image to vary (PNG, JPEG or WebP)"}


def build_routes(context: CapabilityContext[ImagesSettings]) -> list[BaseRouteHandler]:
    cfg = context.settings
    store = ImageUrlStore(context.data_dir, cfg.url_ttl_minutes * 60, context.shared)
    context.on_startup(store.start_purging)
    context.on_shutdown(store.stop_purging)
    jobs = ImageJobs(context, store)

    @post(
        "/v1/images/generations",
        status_code=200,
        request_max_body_size=JSON_BODY_LIMIT,
        operation_class=openapi_json_body(ImageGenerationRequest),
    )
    async def generations(request: Request[Any, Any, Any]) -> Response[Any]:
        return await jobs.generate(decode_json_bytes(await request.body(), ImageGenerationRequest))

    @post(
        "/v1/images/edits",
        status_code=200,
        request_max_body_size=jobs.max_form_bytes,
        operation_class=openapi_form_body(ImageEditFields, EDIT_FILES),
    )
    async def edits(request: Request[Any, Any, Any]) -> Response[Any]:
        return await jobs.from_form(request, ImageEditFields, "/v1/images/edits", edit=True)

    @post(
        "/v1/images/variations",
        status_code=200,
        request_max_body_size=jobs.max_form_bytes,
        operation_class=openapi_form_body(ImageVariationFields, VARIATION_FILES, required_files=["image"]),
    )
    async def variations(request: Request[Any, Any, Any]) -> Response[Any]:
        return await jobs.from_form(request, ImageVariationFields, "/v1/images/variations", edit=False)

    @get(f"{FILES_PATH}/{{name:str}}", opt={PUBLIC_OPT: True}, media_type="image/png")
    async def image_file(name: FromPath[str]) -> File | Response[bytes]:
        found = await store.find(name)
        if found is None:
            raise OpenAIError(404, "This image does not exist or has expired", code="image_expired")
        # `name` is one of the store's: letters, digits, '-', '_' and its extension.
        media_type = MEDIA_TYPES[name.rpartition(".")[2]]
        if isinstance(found, Path):  # one router: the file on disk
            return File(
                path=found,
                media_type=media_type,
                content_disposition_type="inline",
                filename=name,
                headers={"content-security-policy": FILE_POLICY},
            )
        return Response(  # several routers: the bytes from the shared table, the same headers
            found,
            media_type=media_type,
            headers={
                "content-security-policy": FILE_POLICY,
                "content-disposition": f'inline; filename="{name}"',
            },
        )

    return [generations, edits, variations, image_file]
