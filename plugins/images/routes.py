"""The router's Images API routes: decode and check a request, then hand it to
``llmlb_plugins.images.dispatch`` (plan, send to nodes, merge), or with ``stream: true`` to
``llmlb_plugins.images.streaming`` (the nodes' events, checked and merged). Also serves the
stored files of ``response_format=url`` answers.

Streamed images are base64 in events, as OpenAI streams them: a streamed request that asks for
``response_format=url`` itself is a 400 (an admin's default of ``url`` does not apply to it).
Before an edit is sent, the router checks it against what the nodes serving the model say
(``model_info``): the number of images (reference images), a mask, the LoRAs.

:func:`build_routes` is the capability's ``build_routes``: it makes the capability's own
objects (the URL store in its data dir, whose purge task runs between the router's start-up
and shut-down; the image decoder; the job dispatcher) and the handlers that close over them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response, get, post
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath
from litestar.response import File

from llmlb_core.api import (
    PUBLIC_OPT,
    CapabilityContext,
    OpenAIError,
    decode_json_bytes,
    encode_multipart,
    openapi_form_body,
    openapi_json_body,
    parse_multipart,
)
from llmlb_plugins.images.decoding import IMAGE_FIELDS, MAX_IMAGES, ImageDecoder, ImageLimits
from llmlb_plugins.images.dispatch import FILES_PATH, ImageJobs, JobPlan, Part
from llmlb_plugins.images.model_info import check_mask, check_references
from llmlb_plugins.images.protocol import (
    ImageEditFields,
    ImageGenerationRequest,
    ImageOptions,
    ImageVariationFields,
)
from llmlb_plugins.images.settings import MB, ImagesSettings
from llmlb_plugins.images.streaming import run_streamed
from llmlb_plugins.images.url_store import FILE_POLICY, MEDIA_TYPES, ImageUrlStore
from llmlb_plugins.images.validation import form_request, form_value, require_prompt

S = TypeVar("S", bound=ImageOptions)

JSON_BODY_LIMIT = 1 * MB
# The file parts of edits and variations, as the API docs show them (/docs).
EDIT_FILES = {
    "image": "The image to edit (PNG, JPEG or WebP); or send image[] instead",
    "image[]": "Several images: the first is edited, the others are reference images (models that take them)",
    "mask": "Optional: a PNG whose transparent pixels mark where to edit (same size as the image)",
}
VARIATION_FILES = {"image": "The image to vary (PNG, JPEG or WebP)"}


def streamed(req: ImageOptions) -> bool:
    """Whether ``req`` asks for a streamed answer (400 when it also asks for ``url``)."""
    if not getattr(req, "stream", None):
        return False
    if req.response_format == "url":
        raise OpenAIError(
            400,
            "Streamed images come as b64_json in the events; response_format=url cannot be streamed",
            param="response_format",
            code="unsupported_parameter",
        )
    return True


def build_routes(context: CapabilityContext[ImagesSettings]) -> list[BaseRouteHandler]:
    cfg = context.settings
    store = ImageUrlStore(context.data_dir, cfg.url_ttl_minutes * 60)
    context.on_startup(store.start_purging)
    context.on_shutdown(store.stop_purging)
    jobs = ImageJobs(context, store)
    decoder = ImageDecoder(ImageLimits.of(cfg))
    # Several images (image[]) plus a mask, each up to the upload limit, plus form fields.
    max_total_bytes = cfg.max_upload_bytes * (MAX_IMAGES + 1) + 1 * MB

    async def run(
        plan: JobPlan[Any], path: str, build: Callable[[Part], tuple[bytes, str]], *, stream: bool, edit: bool
    ) -> Response[Any]:
        if stream:
            return await run_streamed(context, plan, jobs.parts(plan), path, build, edit=edit)
        return await jobs.run(plan, path, build)

    @post(
        "/v1/images/generations",
        status_code=200,
        request_max_body_size=JSON_BODY_LIMIT,
        operation_class=openapi_json_body(ImageGenerationRequest),
    )
    async def generations(request: Request[Any, Any, Any]) -> Response[Any]:
        req = decode_json_bytes(await request.body(), ImageGenerationRequest)
        require_prompt(req.prompt)
        stream = streamed(req)
        plan = jobs.plan(req)
        base = msgspec.structs.replace(
            plan.request, model=plan.model, size=plan.size, response_format="b64_json", stream=stream
        )
        if stream:
            base = msgspec.structs.replace(base, partial_images=base.partial_images or 0)

        def build(part: Part) -> tuple[bytes, str]:
            node_req = msgspec.structs.replace(base, n=part.count, seed=plan.seed + part.offset)
            return msgspec.json.encode(node_req), "application/json"

        return await run(plan, "/v1/images/generations", build, stream=stream, edit=False)

    async def multipart_job(
        request: Request[Any, Any, Any],
        fields_type: type[S],
        path: str,
        *,
        edit: bool,
    ) -> Response[Any]:
        form = await parse_multipart(
            request, max_file_bytes=cfg.max_upload_bytes, max_total_bytes=max_total_bytes, file_label="Image"
        )
        req = form_request(form, fields_type)
        if edit:
            require_prompt(getattr(req, "prompt", None))
        stream = streamed(req)
        plan = jobs.plan(req)
        if edit:  # what the model takes, before any image is decoded
            check_references(context.models, plan.model, plan.info, len(form.uploads(*IMAGE_FIELDS)))
            if form.uploads("mask"):
                check_mask(plan.model, plan.info)
        inputs = await decoder.read(
            form, max_images=MAX_IMAGES if edit else 1, mask_allowed=edit, keep_pixels=False
        )
        fields = {k: form_value(v) for k, v in msgspec.to_builtins(plan.request).items() if v is not None}
        fields.update(model=plan.model, size=plan.size, response_format="b64_json")
        if stream:
            fields.update(
                stream="true", partial_images=str(getattr(plan.request, "partial_images", None) or 0)
            )
        # Part names and file names are the router's own: nothing the client named reaches a header.
        files = [
            (c.upload.field, f"image-{i}.{c.format}", c.upload.data, c.media_type)
            for i, c in enumerate(inputs.images)
        ]
        if inputs.mask is not None:
            mask = inputs.mask
            files.append(("mask", f"mask.{mask.format}", mask.upload.data, mask.media_type))

        def build(part: Part) -> tuple[bytes, str]:
            overrides = {"n": str(part.count), "seed": str(plan.seed + part.offset)}
            return encode_multipart({**fields, **overrides}, files)

        return await run(plan, path, build, stream=stream, edit=edit)

    @post(
        "/v1/images/edits",
        status_code=200,
        request_max_body_size=max_total_bytes,
        operation_class=openapi_form_body(ImageEditFields, EDIT_FILES),
    )
    async def edits(request: Request[Any, Any, Any]) -> Response[Any]:
        return await multipart_job(request, ImageEditFields, "/v1/images/edits", edit=True)

    @post(
        "/v1/images/variations",
        status_code=200,
        request_max_body_size=max_total_bytes,
        operation_class=openapi_form_body(ImageVariationFields, VARIATION_FILES, required_files=["image"]),
    )
    async def variations(request: Request[Any, Any, Any]) -> Response[Any]:
        return await multipart_job(request, ImageVariationFields, "/v1/images/variations", edit=False)

    @get(f"{FILES_PATH}/{{name:str}}", opt={PUBLIC_OPT: True}, media_type="image/png")
    async def image_file(name: FromPath[str]) -> File:
        path: Path | None = store.path(name)
        if path is None:
            raise OpenAIError(404, "This image does not exist or has expired", code="image_expired")
        return File(
            path=path,
            media_type=MEDIA_TYPES[path.suffix.lstrip(".")],
            content_disposition_type="inline",
            filename=path.name,  # a name of the store: letters, digits, '-', '_' and its extension
            headers={"content-security-policy": FILE_POLICY},
        )

    return [generations, edits, variations, image_file]
