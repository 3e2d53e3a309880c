"""The ``stable_diffusion`` node runtime: OpenAI Images routes over stable-diffusion.cpp."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import secrets
import time
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
    convert_fields,
    decode_json_bytes,
    parse_multipart,
)
from llmlb_node.stable_diffusion.engine import EngineJob, SDEngine
from llmlb_node.stable_diffusion.model_folder import ModelFolder, scan_models
from llmlb_node.stable_diffusion.params import engine_settings
from llmlb_node.stable_diffusion.settings import StableDiffusionSettings
from llmlb_plugins.images.decoding import MAX_IMAGES, ImageDecoder, ImageLimits
from llmlb_plugins.images.protocol import (
    MAX_SEED,
    SIZE_AUTO,
    ImageData,
    ImageEditFields,
    ImageGenerationRequest,
    ImagesResponse,
    ImageVariationFields,
    parse_size,
)
from llmlb_plugins.images.validation import require_prompt, resolve_size

log = logging.getLogger("llmlb.node.sd")

TYPE_NAME = "stable_diffusion"
CAPABILITIES = ["image_generation"]
EDIT_STRENGTH = 0.75
INPAINT_STRENGTH = 1.0
VARIATION_STRENGTH = 0.6
# stable-diffusion.cpp regenerates where its mask is white (255): it blends
# denoised * mask + init * (1 - mask) in latent space (tests/test_sd_engine.py proves it).
SD_MASK_REGENERATE = 255


def encode_image(image: Image.Image, output_format: str, compression: int | None) -> str:
    out = io.BytesIO()
    if output_format == "png":
        # output_compression 0-100 maps to zlib levels 0-9 for PNG.
        level = 6 if compression is None else round(compression * 9 / 100)
        image.save(out, format="PNG", compress_level=level)
    else:
        quality = 100 - compression if compression is not None else 90
        image.convert("RGB").save(out, format=output_format.upper(), quality=max(1, quality))
    return base64.b64encode(out.getvalue()).decode("ascii")


def _fit_inputs(
    init: Image.Image | None, mask: Image.Image | None, size: tuple[int, int]
) -> tuple[Image.Image | None, Image.Image | None]:
    """The init image (RGB) and mask resized to the generation size."""
    if init is not None:
        init = init.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    if mask is not None:
        mask = mask.resize(size, Image.Resampling.NEAREST)
    return init, mask


class StableDiffusionRuntime(Runtime):
    type_name = TYPE_NAME
    slots = 1  # one generation at a time per node process

    def __init__(
        self, context: RuntimeContext[StableDiffusionSettings], engine: SDEngine | None = None
    ) -> None:
        self.models_dir = context.models_dir
        self.settings = settings = context.settings
        self.engine = engine or SDEngine(
            threads=settings.threads,
            idle_unload_s=settings.idle_unload_s,
            weights_preference=settings.weights_preference,
        )
        self._folders: dict[str, ModelFolder] = {}
        self._scanned_at = 0.0
        self.rescan()

    # --- models --------------------------------------------------------------------------
    def rescan(self) -> None:
        self._folders = {f.id: f for f in scan_models(self.models_dir)}
        self._scanned_at = time.monotonic()

    def folder(self, model: str | None) -> ModelFolder:
        if time.monotonic() - self._scanned_at > 5:
            self.rescan()
        if model is None and len(self._folders) == 1:
            return next(iter(self._folders.values()))
        if model is None or model not in self._folders:
            raise OpenAIError(
                404, f"The model '{model}' does not exist on this node", param="model", code="model_not_found"
            )
        return self._folders[model]

    def models(self) -> list[ModelAdvert]:
        if time.monotonic() - self._scanned_at > 5:
            self.rescan()
        return [
            ModelAdvert(
                id=f.id,
                capabilities=CAPABILITIES,
                runtime=TYPE_NAME,
                details={
                    "native_size": f.profile.native_size,
                    "steps": f.profile.steps,
                    "cfg_scale": f.profile.cfg_scale,
                    "sampler": f.profile.sampler,
                    "weights": [p.name for p in f.weights],
                },
            )
            for f in self._folders.values()
        ]

    def load(self) -> RuntimeLoad:
        loaded = self.engine.loaded
        return RuntimeLoad(
            active_jobs=self.engine.active_jobs,
            queued_jobs=self.engine.waiting_jobs,
            loaded_models=[loaded.id] if loaded else [],
        )

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
        default_strength: float = EDIT_STRENGTH,
    ) -> Response[Any]:
        folder = self.folder(req.model)
        width, height, size = self._size(req.size, folder)
        settings = engine_settings(req, folder.profile, quality=quality, style=style)
        seed = req.seed if req.seed is not None else secrets.randbelow(MAX_SEED - 16)
        if init is not None or mask is not None:
            # Resizing a large upload takes 100+ ms: off the event loop (heartbeats, /health).
            init, mask = await asyncio.to_thread(_fit_inputs, init, mask, (width, height))
        sd_mask = None
        if mask is not None:
            sd_mask = mask if SD_MASK_REGENERATE == 255 else mask.point(lambda v: 255 - v)
        job = EngineJob(
            prompt=prompt,
            negative_prompt=settings.negative_prompt,
            width=width,
            height=height,
            steps=settings.steps,
            cfg_scale=settings.cfg_scale,
            sampler=settings.sampler,
            scheduler=settings.scheduler,
            seed=seed,
            batch_count=req.n,
            init_image=init,
            mask_image=sd_mask,
            strength=req.strength if req.strength is not None else default_strength,
        )
        images = await self.engine.generate(folder, job)
        output_format = req.output_format or "png"

        def finish() -> list[str]:
            out = []
            for image in images:
                image = image.convert("RGB")  # the binding returns RGBA
                if image.size != (width, height):
                    image = image.resize((width, height), Image.Resampling.LANCZOS)
                if init is not None and mask is not None:
                    # Keep every pixel outside the mask exactly as it was.
                    image = Image.composite(image, init, mask)
                out.append(encode_image(image, output_format, req.output_compression))
            return out

        encoded = await asyncio.to_thread(finish)
        body = ImagesResponse(
            created=int(time.time()),
            data=[ImageData(b64_json=b64, seed=seed + i) for i, b64 in enumerate(encoded)],
            size=size,
            quality=quality or "standard",
            output_format=output_format,
            background="opaque",
        )
        return Response(content=msgspec.json.encode(body), media_type="application/json")

    def routes(self) -> list[BaseRouteHandler]:
        runtime = self
        cfg = self.settings
        # Decodes uploads off the event loop, within this node's limits (>= the router's).
        decoder = ImageDecoder(
            ImageLimits(
                max_bytes=cfg.max_upload_bytes,
                max_pixels=cfg.max_pixels,
                max_request_pixels=cfg.max_request_pixels,
                decodes_at_once=cfg.max_concurrent_decodes,
            )
        )
        # Whole bodies: an edit carries up to MAX_IMAGES images and a mask, a variation one image
        # (with room for the form fields). They follow max_upload_bytes, not the node's default.
        edits_max = 8 * cfg.max_upload_bytes
        variations_max = 2 * cfg.max_upload_bytes

        @post("/v1/images/generations", status_code=200)
        async def generations(request: Request[Any, Any, Any]) -> Response[Any]:
            req = decode_json_bytes(await request.body(), ImageGenerationRequest)
            return await runtime._run(
                req, prompt=require_prompt(req.prompt), quality=req.quality, style=req.style
            )

        @post("/v1/images/edits", status_code=200, request_max_body_size=edits_max)
        async def edits(request: Request[Any, Any, Any]) -> Response[Any]:
            form = await parse_multipart(
                request, max_file_bytes=cfg.max_upload_bytes, max_total_bytes=edits_max, file_label="Image"
            )
            req = convert_fields(form.fields, ImageEditFields)
            prompt = require_prompt(req.prompt)
            inputs = await decoder.read(form, max_images=MAX_IMAGES, mask_allowed=True, keep_pixels=True)
            mask = inputs.mask_pixels
            return await runtime._run(
                req,
                prompt=prompt,
                quality=req.quality,
                style=None,
                init=inputs.init,
                mask=mask,
                default_strength=INPAINT_STRENGTH if mask is not None else EDIT_STRENGTH,
            )

        @post("/v1/images/variations", status_code=200, request_max_body_size=variations_max)
        async def variations(request: Request[Any, Any, Any]) -> Response[Any]:
            form = await parse_multipart(
                request,
                max_file_bytes=cfg.max_upload_bytes,
                max_total_bytes=variations_max,
                file_label="Image",
            )
            req = convert_fields(form.fields, ImageVariationFields)
            inputs = await decoder.read(form, max_images=1, mask_allowed=False, keep_pixels=True)
            init = inputs.init
            return await runtime._run(
                req, prompt="", quality=None, style=None, init=init, default_strength=VARIATION_STRENGTH
            )

        return [generations, edits, variations]
