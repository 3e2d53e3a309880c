"""An image job from a checked request to the nodes' answer: plan it, build each part's node
request, send the parts (whole, or streamed), and answer.

:class:`ImageJobs` is the one step between the routes and ``context.forward``: a route decodes
the client's request and hands it over (:meth:`ImageJobs.generate` for JSON,
:meth:`ImageJobs.from_form` for the multipart edits and variations). The job is planned
(:mod:`.planning`: model, defaults, size, seed, LoRAs), edits are checked against what the
nodes serving the model take (reference images, a mask) before any image is decoded, and ``n``
is split over the idle nodes (``fan_out``). Each part is sent with ``context.forward.call``
(its own balancing and failover), its answer checked by :func:`.answers.read_answer` and the
parts merged (:func:`.answers.merge`); with ``stream: true`` the parts go to
:func:`.streaming.run_streamed` instead.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from litestar import Request, Response

from llmlb_core.api import (
    CapabilityContext,
    OpenAIError,
    UpstreamResult,
    encode_multipart,
    note_request,
    parse_multipart,
)
from llmlb_plugins.images.answers import answer_limit, merge, read_answer
from llmlb_plugins.images.decoding import IMAGE_FIELDS, MAX_IMAGES, ImageDecoder, ImageLimits
from llmlb_plugins.images.model_info import FLAGS, check_mask, check_references
from llmlb_plugins.images.planning import JobPlan, Part, job_parts, plan_job
from llmlb_plugins.images.protocol import ImageGenerationRequest, ImageOptions
from llmlb_plugins.images.settings import MB, ImagesSettings
from llmlb_plugins.images.streaming import run_streamed
from llmlb_plugins.images.url_store import ImageUrlStore
from llmlb_plugins.images.validation import form_request, form_value, require_prompt

S = TypeVar("S", bound=ImageOptions)

# How a part's node request is made: its body and content type.
BuildPart = Callable[[Part], tuple[bytes, str]]


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


class ImageJobs:
    """Image jobs from request to answer; one per router, closing over the images capability's
    context and its URL store."""

    def __init__(self, context: CapabilityContext[ImagesSettings], store: ImageUrlStore) -> None:
        self._context = context
        self._store = store
        cfg = context.settings
        self._decoder = ImageDecoder(ImageLimits.of(cfg))
        # Several images (image[]) plus a mask, each up to the upload limit, plus form fields.
        self.max_form_bytes = cfg.max_upload_bytes * (MAX_IMAGES + 1) + 1 * MB

    def plan(self, req: S) -> JobPlan[S]:
        return plan_job(self._context.models, req, self._context.settings)

    async def generate(self, req: ImageGenerationRequest) -> Response[Any]:
        """``POST /v1/images/generations``: each part is the request with its own ``n`` and
        ``seed``, asking the node for ``b64_json``."""
        require_prompt(req.prompt)
        stream = streamed(req)
        plan = self.plan(req)
        base = msgspec.structs.replace(
            plan.request, model=plan.model, size=plan.size, response_format="b64_json", stream=stream
        )
        if stream:
            base = msgspec.structs.replace(base, partial_images=base.partial_images or 0)

        def build(part: Part) -> tuple[bytes, str]:
            node_req = msgspec.structs.replace(base, n=part.count, seed=plan.seed + part.offset)
            return msgspec.json.encode(node_req), "application/json"

        return await self._send(plan, "/v1/images/generations", build, stream=stream, edit=False)

    async def from_form(
        self, request: Request[Any, Any, Any], fields_type: type[S], path: str, *, edit: bool
    ) -> Response[Any]:
        """``POST /v1/images/edits`` (``edit``) and ``/v1/images/variations``: the form read
        within its bounds, the images checked and decoded as far as their headers, and each part
        sent as a multipart form of the router's own making."""
        cfg = self._context.settings
        form = await parse_multipart(
            request,
            max_file_bytes=cfg.max_upload_bytes,
            max_total_bytes=self.max_form_bytes,
            file_label="Image",
        )
        req = form_request(form, fields_type)
        if edit:
            require_prompt(getattr(req, "prompt", None))
        stream = streamed(req)
        plan = self.plan(req)
        if edit:  # what the model takes, before any image is decoded
            images = len(form.uploads(*IMAGE_FIELDS))
            check_references(self._context.models, plan.model, plan.info, images)
            if form.uploads("mask"):
                check_mask(plan.model, plan.info)
        inputs = await self._decoder.read(
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

        return await self._send(plan, path, build, stream=stream, edit=edit)

    async def _send(
        self, plan: JobPlan[Any], path: str, build: BuildPart, *, stream: bool, edit: bool
    ) -> Response[Any]:
        """Send ``plan`` to ``path``, one request per part, each built by ``build``: streamed
        (:func:`.streaming.run_streamed`), or read whole and merged."""
        context = self._context
        parts = job_parts(context.models, plan, context.settings)
        if stream:
            return await run_streamed(context, plan, parts, path, build, edit=edit)

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

        results = list(await asyncio.gather(*(send(p) for p in parts)))
        note_request(images=sum(len(r.parsed.data) for r in results if r.parsed is not None))
        replaced = plan.replaced_size
        return await merge(
            results,
            response_format=plan.response_format,
            store=self._store,
            base_url=context.public_url,
            extra_headers={"x-llmlb-size-replaced": f"{replaced}->{plan.size}"} if replaced else None,
        )
