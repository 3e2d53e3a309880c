"""Planning an image job: everything resolved that the nodes need, and how it is split.

:func:`plan_job`: the model (the request's, else ``default_model``, else the only image model
online), the admin's per-model defaults for the fields the client left out, the size (an
unsupported one mapped to the nearest with ``size_fallback``), the response format, the seed,
and what the nodes serving the model say it can do (``model_info``: LoRAs checked here).

:func:`split`: ``n`` images over the idle nodes serving the model. A job of ``n`` images with
seed ``s`` yields images with seeds ``s, s+1, ..., s+n-1`` however it is split: part ``k``
covering images ``[i, i+c)`` is sent with seed ``s+i`` and ``n=c``, and stable-diffusion.cpp's
batch gives image ``j`` of a part the seed ``seed + j``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import msgspec

from llmlb_core.api import ModelCatalog, OpenAIError
from llmlb_plugins.images.model_info import FLAGS, ModelInfo, check_loras, model_info
from llmlb_plugins.images.protocol import MAX_SEED, ImageOptions
from llmlb_plugins.images.settings import ImagesSettings
from llmlb_plugins.images.validation import resolve_size

S = TypeVar("S", bound=ImageOptions)


@dataclass(frozen=True)
class JobPlan(Generic[S]):
    """A validated request with everything resolved that the nodes need."""

    request: S
    model: str
    size: str
    replaced_size: str | None
    response_format: str
    seed: int
    info: ModelInfo  # what the online nodes serving the model say it can do


def new_seed() -> int:
    return random.SystemRandom().randint(0, MAX_SEED - 16)


def resolve_model(models: ModelCatalog, requested: str | None, cfg: ImagesSettings) -> str:
    """The request's model, else ``default_model``, else the one image model online (400 if
    there are none or several)."""
    if requested is not None:
        if not requested.strip():
            raise OpenAIError(400, "model must not be empty", param="model", code="empty_model")
        return requested
    if cfg.default_model:
        return cfg.default_model
    online = models.online(FLAGS)
    if len(online) == 1:
        return online[0]
    raise OpenAIError(
        400,
        "model is required" + (f"; image models online: {', '.join(online)}" if online else ""),
        param="model",
        code="missing_model",
    )


def with_model_defaults(models: ModelCatalog, request: S, model: str) -> S:
    """Fill fields the client left unset from the admin's per-model defaults."""
    defaults = models.defaults(model)
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


def plan_job(models: ModelCatalog, req: S, cfg: ImagesSettings) -> JobPlan[S]:
    model = resolve_model(models, req.model, cfg)
    req = with_model_defaults(models, req, model)
    size, replaced = resolve_size(req.size, fallback=cfg.size_fallback)
    info = model_info(models.details(model, FLAGS))
    check_loras(model, info, req.loras)
    return JobPlan(
        request=req,
        model=model,
        size=size,
        replaced_size=replaced,
        response_format=req.response_format or cfg.default_response_format,
        seed=req.seed if req.seed is not None else new_seed(),
        info=info,
    )


@dataclass
class Part:
    offset: int
    count: int


def split(n: int, ways: int) -> list[Part]:
    """Split ``n`` images into at most ``ways`` contiguous parts of near-equal size."""
    ways = max(1, min(n, ways))
    base, extra = divmod(n, ways)
    parts, offset = [], 0
    for i in range(ways):
        count = base + (1 if i < extra else 0)
        parts.append(Part(offset, count))
        offset += count
    return parts


def job_parts(models: ModelCatalog, plan: JobPlan[Any], cfg: ImagesSettings) -> list[Part]:
    """The parts of ``plan``: one per idle node serving the model (with ``fan_out``)."""
    n = plan.request.n
    return split(n, models.idle_nodes(plan.model, FLAGS) if cfg.fan_out and n > 1 else 1)
