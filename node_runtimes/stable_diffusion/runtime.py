"""The ``stable_diffusion`` node runtime: OpenAI Images routes over stable-diffusion.cpp.

- Generations, edits and variations answer JSON, or with ``stream: true`` (generations and
  edits) server-sent events: ``partial_images`` previews then the completed image, per image
  (:mod:`streaming`, :mod:`events`).
- Edits: for a family that takes reference images (``Family.max_ref_images``: Flux Kontext,
  Flux.2, Qwen-Image-Edit) every ``image[]`` is a reference (sd.cpp's ``-r``) and there is no
  init image unless a mask is given; for the others the one image is the init image. More images
  than a model takes, or a mask for a model without mask edits, is a 400 (the router's checks,
  ``validation.check_image_count`` and ``check_mask_supported``, against the model's family).
- Each model is advertised with an ``ImageModelDetails`` (``protocol``), which the router reads.
- LoRAs (``loras`` extra, ``<lora:name:weight>`` tags) are checked against the model's known
  LoRA files before anything runs (:mod:`.jobs.loras`).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
from litestar import Request, Response, post
from litestar.handlers import BaseRouteHandler
from PIL import Image

from llmlb_node.api import (
    ModelAdvert,
    OpenAIError,
    Runtime,
    RuntimeContext,
    RuntimeLoad,
    decode_json_bytes,
    parse_multipart,
    report_generation,
)
from llmlb_node.stable_diffusion.answers.events import StreamFormat
from llmlb_node.stable_diffusion.answers.imaging import Output, fit_inputs
from llmlb_node.stable_diffusion.answers.previews import resolve_method
from llmlb_node.stable_diffusion.answers.streaming import ImageStream
from llmlb_node.stable_diffusion.engine.engine import SDEngine
from llmlb_node.stable_diffusion.jobs.job import JobListener, SDJob, sdcpp_job
from llmlb_node.stable_diffusion.jobs.loras import OfferedLoras
from llmlb_node.stable_diffusion.models.model_folder import (
    ModelFolder,
    ScanResult,
    log_scan_changes,
    scan_models,
)
from llmlb_node.stable_diffusion.settings import StableDiffusionSettings
from llmlb_plugins.images.decoding import IMAGE_FIELDS, EditInputs, ImageDecoder, ImageLimits, decode
from llmlb_plugins.images.protocol import (
    MAX_EDIT_IMAGES,
    MAX_SEED,
    SIZE_AUTO,
    ImageData,
    ImageEditFields,
    ImageGenerationRequest,
    ImageModelDefaults,
    ImageModelDetails,
    ImageModelSupports,
    ImagesResponse,
    ImageVariationFields,
    parse_size,
)
from llmlb_plugins.images.validation import (
    check_image_count,
    check_mask_supported,
    form_request,
    require_prompt,
    resolve_size,
)

log = logging.getLogger("llmlb.node.sd")

TYPE_NAME = "stable_diffusion"
CAPABILITIES = ["image_generation"]
EDIT_STRENGTH = 0.75
INPAINT_STRENGTH = 1.0
VARIATION_STRENGTH = 0.6
# The node-wide LoRA folder when the settings name none: <models_dir>/loras.
LORA_DIR_NAME = "loras"
RESCAN_S = 5.0


def _decode_rgb(inputs: EditInputs) -> list[Image.Image]:
    """Every image of an edit, decoded, as RGB (the first one is decoded already)."""
    assert inputs.init is not None
    return [inputs.init.convert("RGB")] + [decode(c).convert("RGB") for c in inputs.images[1:]]


class StableDiffusionRuntime(Runtime):
    type_name = TYPE_NAME
    slots = 1  # one generation at a time per node process
    # Every handler looks its model up itself (folder(): the only model when none is named, a
    # 404 otherwise), after decoding the request; the core's check would build every advert
    # per request to do it again.
    refuse_unknown_models = False

    def __init__(
        self, context: RuntimeContext[StableDiffusionSettings], engine: SDEngine | None = None
    ) -> None:
        self.models_dir = context.models_dir
        self.settings = settings = context.settings
        self.lora_dir = Path(settings.lora_dir) if settings.lora_dir else self.models_dir / LORA_DIR_NAME
        self.engine = engine or SDEngine(
            threads=settings.threads,
            idle_unload_s=settings.idle_unload_s,
            weights_preference=settings.weights_preference,
            progress_log_interval_s=settings.progress_log_interval_s,
            cancel=settings.cancel,
            max_job_seconds=settings.max_job_seconds,
        )
        self._folders: dict[str, ModelFolder] = {}
        self._scan: ScanResult | None = None
        self.loras = OfferedLoras()
        self._scanned_at = 0.0
        self.rescan()

    # --- models --------------------------------------------------------------------------
    def rescan(self) -> None:
        result = scan_models(self.models_dir, lora_dir=self.lora_dir)
        log_scan_changes(self._scan, result)  # each model and each problem once, when it changes
        self._scan = result
        self._folders = {f.id: f for f in result.models}
        self._scanned_at = time.monotonic()

    def _fresh(self) -> None:
        if time.monotonic() - self._scanned_at > RESCAN_S:
            self.rescan()

    def folder(self, model: str | None) -> ModelFolder:
        self._fresh()
        if model is None and len(self._folders) == 1:
            return next(iter(self._folders.values()))
        if model is None or model not in self._folders:
            raise OpenAIError(
                404, f"The model '{model}' does not exist on this node", param="model", code="model_not_found"
            )
        return self._folders[model]

    def preview_method(self, folder: ModelFolder) -> str:
        """The node's ``preview_method`` when set (not ``auto``), else the model's."""
        return resolve_method(
            self.settings.preview_method,
            folder.profile.preview_method,
            has_taesd="taesd_path" in folder.components,
        )

    def details(self, folder: ModelFolder) -> ImageModelDetails:
        """The advert's details, read by the router (``model_info``; ``/v1/models``)."""
        profile, family = folder.profile, folder.family
        return ImageModelDetails(
            family=family.name,
            label=family.label,
            native_size=profile.native_size,
            defaults=ImageModelDefaults(
                steps=profile.steps,
                cfg_scale=profile.cfg_scale,
                guidance=profile.guidance,
                sampler=profile.sampler,
            ),
            supports=ImageModelSupports(
                mask=family.mask_edits,
                reference_images=family.max_ref_images,
                loras=sorted(self.loras.of(folder)),
                partial_images=self.preview_method(folder) != "none",
            ),
            weights=[p.name for p in folder.weights],
        )

    def models(self) -> list[ModelAdvert]:
        self._fresh()
        return [
            ModelAdvert(
                id=f.id,
                capabilities=CAPABILITIES,
                runtime=TYPE_NAME,
                details=msgspec.to_builtins(self.details(f)),
                description=f.profile.description,
            )
            for f in self._folders.values()
        ]

    def load(self) -> RuntimeLoad:
        loaded = self.engine.loaded
        return RuntimeLoad(
            active_jobs=self.engine.active_jobs,
            queued_jobs=self.engine.waiting_jobs,
            loaded_models=[loaded.id] if loaded else [],
            jobs=self.engine.jobs(),
        )

    def status(self) -> dict[str, Any]:
        return self.engine.status()

    async def start(self) -> None:
        self.engine.start()

    async def stop(self) -> None:
        await self.engine.stop()

    # --- jobs ----------------------------------------------------------------------------
    def _size(self, size: str | None, folder: ModelFolder) -> tuple[int, int, str]:
        resolved, _ = resolve_size(size, fallback=False)
        if resolved == SIZE_AUTO:
            width, height = folder.profile.native_wh
        else:
            width, height = parse_size(resolved)
        return width, height, f"{width}x{height}"

    async def _run(
        self,
        req: ImageGenerationRequest | ImageEditFields | ImageVariationFields,
        *,
        prompt: str,
        quality: str | None,
        style: str | None,
        init: Image.Image | None = None,
        mask: Image.Image | None = None,
        refs: list[Image.Image] | None = None,
        default_strength: float = EDIT_STRENGTH,
        edit: bool = False,
        stream: bool = False,
        partial_images: int = 0,
    ) -> Response[Any]:
        folder = self.folder(req.model)
        width, height, size = self._size(req.size, folder)
        seed = req.seed if req.seed is not None else secrets.randbelow(MAX_SEED - 16)
        if init is not None or mask is not None:
            # Resizing a large upload takes 100+ ms: off the event loop (heartbeats, /health).
            init, mask = await asyncio.to_thread(fit_inputs, init, mask, (width, height))
        job = sdcpp_job(
            req,
            folder,
            self.loras,
            prompt=prompt,
            quality=quality,
            style=style,
            size=(width, height),
            seed=seed,
            images=req.n,
            default_strength=default_strength,
            init=init,
            mask=mask,
            refs=refs,
            partial_images=partial_images if stream else 0,
            preview_method=self.preview_method(folder) if stream else "none",
        )
        output_format = req.output_format or "png"
        output = Output(
            (width, height),
            output_format,
            req.output_compression,
            init=init if mask is not None else None,
            mask=mask if init is not None else None,
        )
        if stream:
            fmt = StreamFormat(
                edit=edit,
                size=size,
                quality=quality or "auto",
                background="opaque",
                output_format=output_format,
                seed=seed,
            )

            async def run(listener: JobListener) -> list[Image.Image]:
                return await self.engine.generate(folder, replace(job, listener=listener))

            return await ImageStream(run, fmt, output.render).response()
        started = time.monotonic()
        images = await self.engine.generate(folder, job)
        report = self._report(started, job, len(images))
        encoded = await asyncio.to_thread(lambda: [output.render(image, False) for image in images])
        body = ImagesResponse(
            created=int(time.time()),
            data=[ImageData(b64_json=b64, seed=seed + i) for i, b64 in enumerate(encoded)],
            size=size,
            quality=quality or "standard",
            output_format=output_format,
            background="opaque",
        )
        return Response(content=msgspec.json.encode(body), media_type="application/json", headers=report)

    def _report(self, started: float, job: SDJob, images: int) -> dict[str, str]:
        """What a finished job took, for the node's request log and the router's metrics
        (:func:`report_generation`): the seconds since the job started or, when it had to load
        its model, since the model was loaded; and the sampling steps run for its images (from
        an init image, sd.cpp samples only the last ``strength`` part of the steps)."""
        loaded = self.engine.loaded
        since = max(started, loaded.loaded_at) if loaded is not None else started
        return report_generation(time.monotonic() - since, job.sampled_steps() * images, images=images)

    def routes(self) -> list[BaseRouteHandler]:
        runtime = self
        cfg = self.settings
        # Decodes uploads off the event loop, within this node's limits (>= the router's).
        decoder = ImageDecoder(ImageLimits.of(cfg))
        # Whole bodies: an edit carries up to MAX_EDIT_IMAGES images and a mask, a variation one
        # image (with room for the form fields). They follow max_upload_bytes, not the node's default.
        edits_max = (MAX_EDIT_IMAGES + 2) * cfg.max_upload_bytes
        variations_max = 2 * cfg.max_upload_bytes

        @post("/v1/images/generations", status_code=200)
        async def generations(request: Request[Any, Any, Any]) -> Response[Any]:
            req = decode_json_bytes(await request.body(), ImageGenerationRequest)
            return await runtime._run(
                req,
                prompt=require_prompt(req.prompt),
                quality=req.quality,
                style=req.style,
                stream=bool(req.stream),
                partial_images=req.partial_images or 0,
            )

        @post("/v1/images/edits", status_code=200, request_max_body_size=edits_max)
        async def edits(request: Request[Any, Any, Any]) -> Response[Any]:
            form = await parse_multipart(
                request, max_file_bytes=cfg.max_upload_bytes, max_total_bytes=edits_max, file_label="Image"
            )
            req = form_request(form, ImageEditFields)
            prompt = require_prompt(req.prompt)
            folder = runtime.folder(req.model)
            family = folder.family  # what it takes, before any image is decoded (as the router)
            if form.uploads("mask"):
                check_mask_supported(folder.id, family.mask_edits, label=family.label)
            check_image_count(
                folder.id, len(form.uploads(*IMAGE_FIELDS)), family.max_ref_images, label=family.label
            )
            inputs = await decoder.read(form, max_images=MAX_EDIT_IMAGES, mask_allowed=True, keep_pixels=True)
            mask = inputs.mask_pixels
            init, refs = inputs.init, None
            if folder.family.max_ref_images:
                # Every image is a reference; the first is also the init image of a masked edit.
                refs = await asyncio.to_thread(_decode_rgb, inputs)
                init = inputs.init if mask is not None else None
            return await runtime._run(
                req,
                prompt=prompt,
                quality=req.quality,
                style=None,
                init=init,
                mask=mask,
                refs=refs,
                default_strength=INPAINT_STRENGTH if mask is not None else EDIT_STRENGTH,
                edit=True,
                stream=bool(req.stream),
                partial_images=req.partial_images or 0,
            )

        @post("/v1/images/variations", status_code=200, request_max_body_size=variations_max)
        async def variations(request: Request[Any, Any, Any]) -> Response[Any]:
            form = await parse_multipart(
                request,
                max_file_bytes=cfg.max_upload_bytes,
                max_total_bytes=variations_max,
                file_label="Image",
            )
            req = form_request(form, ImageVariationFields)
            inputs = await decoder.read(form, max_images=1, mask_allowed=False, keep_pixels=True)
            init = inputs.init
            return await runtime._run(
                req, prompt="", quality=None, style=None, init=init, default_strength=VARIATION_STRENGTH
            )

        return [generations, edits, variations]
