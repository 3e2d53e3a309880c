"""The router's Images API routes: validate, apply model defaults, dispatch to nodes, answer."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import msgspec
from litestar import Request, Response, get, post
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath
from litestar.response import File

from llmlb_core.auth import PUBLIC_OPT
from llmlb_core.bodies import decode_json_bytes
from llmlb_core.errors import OpenAIError
from llmlb_core.services import RouterServices, get_services
from llmlb_plugins.images.decoding import MAX_IMAGES, ImageDecoder, ImageLimits
from llmlb_plugins.images.dispatch import (
    FILES_PATH,
    FLAGS,
    Part,
    new_seed,
    plan_parts,
    run_parts,
    to_response,
)
from llmlb_plugins.images.protocol import (
    ImageEditFields,
    ImageGenerationRequest,
    ImageOptions,
    ImageVariationFields,
)
from llmlb_plugins.images.settings import ImagesSettings
from llmlb_plugins.images.uploads import convert_fields, encode_multipart, parse_multipart
from llmlb_plugins.images.url_store import MEDIA_TYPES, ImageUrlStore
from llmlb_plugins.images.validation import reject_streaming, require_prompt, resolve_size

log = logging.getLogger("llmlb.images")

S = TypeVar("S", bound=ImageOptions)

STORE_KEY = "images.url_store"
JSON_BODY_LIMIT = 1024 * 1024


def url_store(services: RouterServices) -> ImageUrlStore:
    return services.extras[STORE_KEY]  # type: ignore[no-any-return]


def resolve_model(services: RouterServices, requested: str | None, cfg: ImagesSettings) -> str:
    if requested is not None:
        if not requested.strip():
            raise OpenAIError(400, "model must not be empty", param="model", code="empty_model")
        return requested
    if cfg.default_model:
        return cfg.default_model
    online = sorted({m.id for m in services.models.list(FLAGS)})
    if len(online) == 1:
        return online[0]
    raise OpenAIError(
        400,
        "model is required" + (f"; image models online: {', '.join(online)}" if online else ""),
        param="model",
        code="missing_model",
    )


def with_model_defaults(services: RouterServices, request: S, model: FromPath[str]) -> S:
    """Fill fields the client left unset from the admin's per-model defaults."""
    defaults = services.model_defaults(model)
    if not defaults:
        return request
    fields = set(type(request).__struct_fields__)
    updates = {
        key: value for key, value in defaults.items() if key in fields and getattr(request, key) is None
    }
    if not updates:
        return request
    try:
        return msgspec.convert({**msgspec.to_builtins(request), **updates}, type(request))
    except msgspec.ValidationError as exc:
        # Defaults are checked when an admin sets them; only a row stored before that can be bad.
        raise OpenAIError(
            503, f"Model '{model}' has invalid defaults: {exc}", code="invalid_model_defaults"
        ) from None


@dataclass(frozen=True)
class JobPlan(Generic[S]):
    """A validated request with everything resolved that the nodes need."""

    request: S
    model: str
    size: str
    replaced_size: str | None
    response_format: str
    seed: int


def plan_job(services: RouterServices, req: S, cfg: ImagesSettings) -> JobPlan[S]:
    model = resolve_model(services, req.model, cfg)
    req = with_model_defaults(services, req, model)
    size, replaced = resolve_size(req.size, fallback=cfg.size_fallback)
    return JobPlan(
        request=req,
        model=model,
        size=size,
        replaced_size=replaced,
        response_format=req.response_format or cfg.default_response_format,
        seed=req.seed if req.seed is not None else new_seed(),
    )


async def dispatch(
    services: RouterServices,
    plan: JobPlan[Any],
    path: str,
    build: Callable[[Part], tuple[bytes, str]],
    cfg: ImagesSettings,
) -> Response[Any]:
    parts = plan_parts(services, plan.model, plan.request.n, fan_out=cfg.fan_out)
    replaced = plan.replaced_size
    extra_headers = {"x-llmlb-size-replaced": f"{replaced}->{plan.size}"} if replaced else {}
    results = await run_parts(
        services, model=plan.model, path=path, parts=parts, build=build, size=plan.size
    )
    return to_response(
        results,
        response_format=plan.response_format,
        store=url_store(services),
        base_url=services.settings.base_url,
        extra_headers=extra_headers,
    )


def build_routes(cfg: ImagesSettings) -> list[BaseRouteHandler]:
    # Several images (image[]) plus a mask, each up to the upload limit, plus form fields.
    max_total_bytes = cfg.max_upload_bytes * (MAX_IMAGES + 1) + 1024 * 1024
    decoder = ImageDecoder(ImageLimits.of(cfg))

    @post("/v1/images/generations", status_code=200, request_max_body_size=JSON_BODY_LIMIT)
    async def generations(request: Request[Any, Any, Any]) -> Response[Any]:
        services = get_services(request)
        req = decode_json_bytes(await request.body(), ImageGenerationRequest)
        require_prompt(req.prompt)
        reject_streaming(req.stream)
        plan = plan_job(services, req, cfg)
        base = msgspec.structs.replace(
            plan.request, model=plan.model, size=plan.size, response_format="b64_json"
        )

        def build(part: Part) -> tuple[bytes, str]:
            node_req = msgspec.structs.replace(base, n=part.count, seed=plan.seed + part.offset)
            return msgspec.json.encode(node_req), "application/json"

        return await dispatch(services, plan, "/v1/images/generations", build, cfg)

    async def multipart_job(
        request: Request[Any, Any, Any],
        fields_type: type[S],
        path: str,
        *,
        needs_prompt: bool,
        mask_allowed: bool,
    ) -> Response[Any]:
        services = get_services(request)
        form = await parse_multipart(
            request, max_file_bytes=cfg.max_upload_bytes, max_total_bytes=max_total_bytes
        )
        req = convert_fields(form.fields, fields_type)
        if needs_prompt:
            require_prompt(getattr(req, "prompt", None))
            reject_streaming(getattr(req, "stream", None))
        plan = plan_job(services, req, cfg)
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

        return await dispatch(services, plan, path, build, cfg)

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
    async def image_file(request: Request[Any, Any, Any], name: FromPath[str]) -> File:
        path: Path | None = url_store(get_services(request)).path(name)
        if path is None:
            raise OpenAIError(404, "This image does not exist or has expired", code="image_expired")
        return File(
            path=path, media_type=MEDIA_TYPES[path.suffix.lstrip(".")], content_disposition_type="inline"
        )

    return [generations, edits, variations, image_file]
