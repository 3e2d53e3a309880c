"""The router's Images API routes: decode and check a request, then hand it to
``llmlb_plugins.images.dispatch`` (plan, send to nodes, merge). Also serves the stored files of
``response_format=url`` answers.

:func:`build_routes` is the capability's ``build_routes``: it makes the capability's own
objects (the URL store in its data dir, whose purge task runs between the router's start-up
and shut-down; the image decoder; the job dispatcher) and the handlers that close over them.
"""

from __future__ import annotations

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
    convert_fields,
    decode_json_bytes,
    encode_multipart,
    parse_multipart,
)
from llmlb_plugins.images.decoding import MAX_IMAGES, ImageDecoder, ImageLimits
from llmlb_plugins.images.dispatch import FILES_PATH, ImageJobs, Part
from llmlb_plugins.images.protocol import (
    ImageEditFields,
    ImageGenerationRequest,
    ImageOptions,
    ImageVariationFields,
)
from llmlb_plugins.images.settings import MB, ImagesSettings
from llmlb_plugins.images.url_store import MEDIA_TYPES, ImageUrlStore
from llmlb_plugins.images.validation import reject_streaming, require_prompt

S = TypeVar("S", bound=ImageOptions)

JSON_BODY_LIMIT = 1 * MB


def build_routes(context: CapabilityContext[ImagesSettings]) -> list[BaseRouteHandler]:
    cfg = context.settings
    store = ImageUrlStore(context.data_dir, cfg.url_ttl_minutes * 60)
    context.on_startup(store.start_purging)
    context.on_shutdown(store.stop_purging)
    jobs = ImageJobs(context, store)
    decoder = ImageDecoder(ImageLimits.of(cfg))
    # Several images (image[]) plus a mask, each up to the upload limit, plus form fields.
    max_total_bytes = cfg.max_upload_bytes * (MAX_IMAGES + 1) + 1 * MB

    @post("/v1/images/generations", status_code=200, request_max_body_size=JSON_BODY_LIMIT)
    async def generations(request: Request[Any, Any, Any]) -> Response[Any]:
        req = decode_json_bytes(await request.body(), ImageGenerationRequest)
        require_prompt(req.prompt)
        reject_streaming(req.stream)
        plan = jobs.plan(req)
        base = msgspec.structs.replace(
            plan.request, model=plan.model, size=plan.size, response_format="b64_json"
        )

        def build(part: Part) -> tuple[bytes, str]:
            node_req = msgspec.structs.replace(base, n=part.count, seed=plan.seed + part.offset)
            return msgspec.json.encode(node_req), "application/json"

        return await jobs.run(plan, "/v1/images/generations", build)

    async def multipart_job(
        request: Request[Any, Any, Any],
        fields_type: type[S],
        path: str,
        *,
        needs_prompt: bool,
        mask_allowed: bool,
    ) -> Response[Any]:
        form = await parse_multipart(
            request, max_file_bytes=cfg.max_upload_bytes, max_total_bytes=max_total_bytes, file_label="Image"
        )
        req = convert_fields(form.fields, fields_type)
        if needs_prompt:
            require_prompt(getattr(req, "prompt", None))
            reject_streaming(getattr(req, "stream", None))
        plan = jobs.plan(req)
        inputs = await decoder.read(
            form, max_images=MAX_IMAGES if mask_allowed else 1, mask_allowed=mask_allowed, keep_pixels=False
        )
        fields = {k: str(v) for k, v in msgspec.to_builtins(plan.request).items() if v is not None}
        fields.update(model=plan.model, size=plan.size, response_format="b64_json")
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

        return await jobs.run(plan, path, build)

    @post("/v1/images/edits", status_code=200, request_max_body_size=max_total_bytes)
    async def edits(request: Request[Any, Any, Any]) -> Response[Any]:
        return await multipart_job(
            request, ImageEditFields, "/v1/images/edits", needs_prompt=True, mask_allowed=True
        )

    @post("/v1/images/variations", status_code=200, request_max_body_size=max_total_bytes)
    async def variations(request: Request[Any, Any, Any]) -> Response[Any]:
        return await multipart_job(
            request, ImageVariationFields, "/v1/images/variations", needs_prompt=False, mask_allowed=False
        )

    @get(f"{FILES_PATH}/{{name:str}}", opt={PUBLIC_OPT: True}, media_type="image/png")
    async def image_file(name: FromPath[str]) -> File:
        path: Path | None = store.path(name)
        if path is None:
            raise OpenAIError(404, "This image does not exist or has expired", code="image_expired")
        return File(
            path=path, media_type=MEDIA_TYPES[path.suffix.lstrip(".")], content_disposition_type="inline"
        )

    return [generations, edits, variations, image_file]
