"""The router's Images API routes: validate, apply model defaults, dispatch to nodes, answer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response, get, post
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath
from litestar.response import File

from llmlb_core.auth import PUBLIC_OPT
from llmlb_core.bodies import decode_json_bytes
from llmlb_core.errors import OpenAIError
from llmlb_core.services import RouterServices, get_services
from plugins.images.dispatch import FILES_PATH, FLAGS, Part, new_seed, run_image_job, to_response
from plugins.images.protocol import ImageGenerationRequest, ImageOptions
from plugins.images.settings import ImagesSettings
from plugins.images.url_store import MEDIA_TYPES, ImageUrlStore
from plugins.images.validation import reject_streaming, require_prompt, resolve_size

log = logging.getLogger("llmlb.images")

S = TypeVar("S", bound=ImageOptions)

STORE_KEY = "images.url_store"
JSON_BODY_LIMIT = 1024 * 1024


def url_store(services: RouterServices) -> ImageUrlStore:
    return services.extras[STORE_KEY]  # type: ignore[no-any-return]


def resolve_model(services: RouterServices, requested: str | None, cfg: ImagesSettings) -> str:
    if requested:
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
        key: value for key, value in defaults.items()
        if key in fields and getattr(request, key) is None
    }
    if not updates:
        return request
    try:
        return msgspec.convert({**msgspec.to_builtins(request), **updates}, type(request))
    except msgspec.ValidationError as exc:
        raise OpenAIError(500, f"Model '{model}' has invalid defaults: {exc}",
                          code="invalid_model_defaults") from None


def build_routes(cfg: ImagesSettings) -> list[BaseRouteHandler]:
    @post("/v1/images/generations", status_code=200, request_max_body_size=JSON_BODY_LIMIT)
    async def generations(request: Request[Any, Any, Any]) -> Response[Any]:
        services = get_services(request)
        req = decode_json_bytes(await request.body(), ImageGenerationRequest)
        require_prompt(req.prompt)
        reject_streaming(req.stream)
        model = resolve_model(services, req.model, cfg)
        req = with_model_defaults(services, req, model)
        size, replaced = resolve_size(req.size, fallback=cfg.size_fallback)
        response_format = req.response_format or cfg.default_response_format
        seed = req.seed if req.seed is not None else new_seed()
        base = msgspec.structs.replace(req, model=model, size=size, response_format="b64_json")

        def build(part: Part) -> tuple[bytes, str]:
            node_req = msgspec.structs.replace(base, n=part.count, seed=seed + part.offset)
            return msgspec.json.encode(node_req), "application/json"

        results, _ = await run_image_job(
            services, model=model, path="/v1/images/generations", n=req.n, seed=seed,
            fan_out=cfg.fan_out, build=build,
        )
        return to_response(
            results,
            response_format=response_format,
            store=url_store(services),
            base_url=services.settings.base_url,
            extra_headers={"x-llmlb-size-replaced": f"{replaced}->{size}"} if replaced else None,
        )

    @get(f"{FILES_PATH}/{{name:str}}", opt={PUBLIC_OPT: True}, media_type="image/png")
    async def image_file(request: Request[Any, Any, Any], name: FromPath[str]) -> File:
        path: Path | None = url_store(get_services(request)).path(name)
        if path is None:
            raise OpenAIError(404, "This image does not exist or has expired", code="image_expired")
        return File(path=path, media_type=MEDIA_TYPES[path.suffix.lstrip(".")],
                    content_disposition_type="inline")

    return [generations, image_file]
