"""Plan and dispatch an image job (the step between a route and ``context.forward``).

Planning (:func:`plan_job`): the model (the request's, else ``default_model``, else the only
image model online), the admin's per-model defaults for the fields the client left out, the
size (an unsupported one mapped to the nearest with ``size_fallback``), the response format and
the seed.

Dispatching (:class:`ImageJobs`): ``n`` images are split over the idle nodes serving the model
(:func:`split`), each part is sent with ``context.forward.call`` (its own balancing and
failover), and the parts' answers are merged into one OpenAI images response, their images
stored as files when the client asked for ``url``. A job of ``n`` images with seed ``s`` yields
images with seeds ``s, s+1, ..., s+n-1`` however it is split: part ``k`` covering images
``[i, i+c)`` is sent with seed ``s+i`` and ``n=c``, and stable-diffusion.cpp's batch gives image
``j`` of a part the seed ``seed + j``.

A node's answer is untrusted input. It is read up to a bound set by the size (for ``auto``, the
model's advertised native size) and the number of images asked for (:func:`answer_limit`),
then decoded strictly (:func:`read_answer`): the images schema and nothing else, exactly the
images asked for, each one valid base64 (decoded by msgspec, which refuses any other character,
bad padding or a bad length) that is one file of the announced ``output_format`` (png, jpeg or
webp, the only file extensions ever written), from its signature to its end with nothing after
it (:func:`check_image`). An answer that fails any of this is a 502 ``bad_upstream_response``,
the node is marked suspect and the part is tried on another node (the forwarder's failover). A
node's 4xx reaches the client OpenAI-shaped. A single part answered in ``b64_json`` is passed on
as the node's bytes, once every one of them has been checked.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar

import msgspec
from litestar import Response

from llmlb_core.api import (
    BadAnswer,
    CapabilityContext,
    ModelCatalog,
    OpenAIError,
    UpstreamResult,
    note_request,
)
from llmlb_plugins.images.file_layout import check_file
from llmlb_plugins.images.model_info import FLAGS, MAX_SIDE, ModelInfo, check_loras, model_info
from llmlb_plugins.images.protocol import (
    MAX_SEED,
    SIZE_AUTO,
    SIZES,
    Background,
    ImageOptions,
    OutputFormat,
    Prompt,
    Quality,
    parse_size,
)
from llmlb_plugins.images.settings import ImagesSettings
from llmlb_plugins.images.url_store import ImageUrlStore
from llmlb_plugins.images.validation import resolve_size

S = TypeVar("S", bound=ImageOptions)

FILES_PATH = "/v1/images/files"

# Room per image for what is not pixels (JSON, revised_prompt, file headers), and for the rest.
_PER_IMAGE_OVERHEAD = 256 * 1024
_ANSWER_OVERHEAD = 64 * 1024


# --- planning ---------------------------------------------------------------------------------
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


# --- splitting --------------------------------------------------------------------------------
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


# --- a node's answer --------------------------------------------------------------------------
class NodeImage(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """One image of a node's answer (``b64_json`` decoded) or of the router's (``url``)."""

    b64_json: bytes | None = None
    url: str | None = None
    revised_prompt: Prompt | None = None
    seed: Annotated[int, msgspec.Meta(ge=0)] | None = None


class NodeAnswer(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    """The images response as the router reads it from a node and writes it to the client:
    ``llmlb_plugins.images.protocol.ImagesResponse`` with the base64 decoded and every value bounded."""

    created: int
    data: list[NodeImage]
    size: Annotated[str, msgspec.Meta(pattern=r"^\d{1,5}x\d{1,5}\Z")] | None = None
    quality: Quality | None = None
    output_format: OutputFormat | None = None
    background: Background | None = None


_answer_decoder = msgspec.json.Decoder(NodeAnswer)


def answer_limit(size: str, count: int, native_size: tuple[int, int] | None = None) -> int:
    """Most bytes a node's answer of ``count`` images of ``size`` can take: every pixel as RGBA
    (more than any PNG, JPEG or WebP of it), in base64, plus room for the rest. ``auto`` counts
    as the model's advertised ``native_size`` (at most ``MAX_SIDE`` a side), or when none is
    known as the largest supported size."""
    if size != SIZE_AUTO:
        width, height = parse_size(size)
    elif native_size is not None:
        width, height = min(native_size[0], MAX_SIDE), min(native_size[1], MAX_SIDE)
    else:
        width, height = max((parse_size(s) for s in SIZES), key=lambda wh: wh[0] * wh[1])
    per_image = width * height * 4 * 4 // 3 + _PER_IMAGE_OVERHEAD
    return count * per_image + _ANSWER_OVERHEAD


def check_image(data: bytes, output_format: str) -> None:
    """``BadAnswer`` unless ``data`` is one image file of ``output_format`` (png, jpeg, webp),
    from its signature to its end marker with nothing after it (:mod:`.file_layout`)."""
    try:
        check_file(data, output_format)
    except ValueError as exc:
        raise BadAnswer(f"an image that is not one {output_format!r} file: {exc}") from None


def read_answer(content: bytes, *, count: int) -> NodeAnswer:
    """A node's answer to a part of ``count`` images, checked (see the module doc)."""
    try:
        answer = _answer_decoder.decode(content)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise BadAnswer(f"not an images response: {exc}") from None
    if len(answer.data) != count:
        raise BadAnswer(f"{len(answer.data)} image(s) where {count} were asked for")
    for image in answer.data:
        if image.b64_json is None or image.url is not None:
            raise BadAnswer("an image without b64_json")
        check_image(image.b64_json, answer.output_format or "png")
    return answer


def merge(
    results: list[UpstreamResult],
    *,
    response_format: str,
    store: ImageUrlStore,
    base_url: str,
    extra_headers: dict[str, str] | None = None,
) -> Response[Any]:
    """Merge checked part results into one OpenAI images response, or answer a node's error
    (OpenAI-shaped by the forwarder)."""
    headers: dict[str, str] = dict(extra_headers or {})
    for result in results:
        headers.update(result.headers)
        if not 200 <= result.status < 300:
            return Response(
                content=result.content,
                status_code=result.status,
                media_type="application/json",
                headers=headers,
            )
    headers["x-llmlb-node"] = ",".join(dict.fromkeys(r.node_id for r in results))
    if len(results) == 1 and response_format == "b64_json":  # every byte was checked: pass it on
        return Response(content=results[0].content, media_type="application/json", headers=headers)
    merged: list[NodeAnswer] = [r.parsed for r in results]
    first = merged[0]
    data = [d for m in merged for d in m.data]
    if response_format == "url":
        extension = first.output_format or "png"
        data = [
            NodeImage(
                url=f"{base_url}{FILES_PATH}/{store.save(d.b64_json or b'', extension)}",
                revised_prompt=d.revised_prompt,
                seed=d.seed,
            )
            for d in data
        ]
    body = msgspec.structs.replace(first, created=int(time.time()), data=data)
    return Response(content=msgspec.json.encode(body), media_type="application/json", headers=headers)


# --- dispatching ------------------------------------------------------------------------------
class ImageJobs:
    """Plans image jobs and sends them to nodes; one per router, closing over the images
    capability's context and its URL store."""

    def __init__(self, context: CapabilityContext[ImagesSettings], store: ImageUrlStore) -> None:
        self._context = context
        self._store = store

    def plan(self, req: S) -> JobPlan[S]:
        return plan_job(self._context.models, req, self._context.settings)

    def parts(self, plan: JobPlan[Any]) -> list[Part]:
        """The parts of ``plan``: one per idle node serving the model (with ``fan_out``)."""
        n = plan.request.n
        models, cfg = self._context.models, self._context.settings
        return split(n, models.idle_nodes(plan.model, FLAGS) if cfg.fan_out and n > 1 else 1)

    async def run(
        self, plan: JobPlan[Any], path: str, build: Callable[[Part], tuple[bytes, str]]
    ) -> Response[Any]:
        """Send ``plan`` to ``path``, one request per part (:meth:`parts`), each built by
        ``build`` (its body and content type), then merge the answers."""
        context = self._context

        async def send(part: Part) -> UpstreamResult:
            content, content_type = build(part)
            return await context.forward.call(
                plan.model,
                FLAGS,
                path,
                content=content,
                content_type=content_type,
                max_answer_bytes=answer_limit(plan.size, part.count, plan.info.native_size),
                check=functools.partial(read_answer, count=part.count),
            )

        results = list(await asyncio.gather(*(send(p) for p in self.parts(plan))))
        note_request(images=sum(len(r.parsed.data) for r in results if r.parsed is not None))
        replaced = plan.replaced_size
        return merge(
            results,
            response_format=plan.response_format,
            store=self._store,
            base_url=context.public_url,
            extra_headers={"x-llmlb-size-replaced": f"{replaced}->{plan.size}"} if replaced else None,
        )
